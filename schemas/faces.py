"""`faces/`: one row per restored face."""

import pyarrow as pa

from schemas import IMAGE_STRUCT, versioned

VERSION = 1

SCHEMA = versioned(
    "faces",
    VERSION,
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("face_index", pa.int32(), nullable=False),
        pa.field("restored", IMAGE_STRUCT, nullable=False),  # 512x512 PNG
        pa.field("input_crop", IMAGE_STRUCT, nullable=False),  # the aligned 512x512 input face, PNG
    ],
)
