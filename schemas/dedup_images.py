"""`images/` of the dedup job: exactly one row per input, whatever happened to it."""

import pyarrow as pa

from schemas import IMAGE_ROW, versioned

VERSION = 2

SCHEMA = versioned(
    "dedup_images",
    VERSION,
    [
        *IMAGE_ROW,
        pa.field("content_sha256", pa.string()),  # of the source file's bytes; null when unread
        pa.field("num_faces", pa.int32(), nullable=False),
        pa.field("code_version", pa.string(), nullable=False),
    ],
)
