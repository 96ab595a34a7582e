"""`images/` of the crop job: exactly one row per input image, whatever happened to it."""

import pyarrow as pa

from schemas import IMAGE_ROW, versioned

VERSION = 2

SCHEMA = versioned(
    "crop_images",
    VERSION,
    [
        *IMAGE_ROW,
        pa.field("num_faces", pa.int32(), nullable=False),
        pa.field("code_version", pa.string(), nullable=False),
    ],
)
