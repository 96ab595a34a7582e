"""`images/` of the pairs job: exactly one row per input image (per segment of a video), whatever happened to it."""

import pyarrow as pa

from schemas import IMAGE_ROW, VIDEO_ROW, versioned

VERSION = 3

SCHEMA = versioned(
    "pair_images",
    VERSION,
    [
        *IMAGE_ROW,
        pa.field("num_faces", pa.int32()),
        pa.field("num_pairs", pa.int32()),
        pa.field("preset", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("code_version", pa.string(), nullable=False),
        *VIDEO_ROW,
    ],
)
