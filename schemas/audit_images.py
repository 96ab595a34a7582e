"""`images/` of the audit job: exactly one row per input image, whatever happened to it."""

import pyarrow as pa

from schemas import IMAGE_ROW, versioned

VERSION = 1

SCHEMA = versioned(
    "audit_images",
    VERSION,
    [
        *IMAGE_ROW,
        pa.field("num_faces", pa.int32(), nullable=False),
        pa.field("num_kept", pa.int32(), nullable=False),
        pa.field("code_version", pa.string(), nullable=False),
    ],
)
