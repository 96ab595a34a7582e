"""`pasted/` (with --paste): the whole input image with its restored faces pasted back."""

import pyarrow as pa

from schemas import FRAME_FIELDS, IMAGE_STRUCT, versioned

VERSION = 2

SCHEMA = versioned(
    "pasted",
    VERSION,
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("upscale", pa.int32(), nullable=False),
        pa.field("pasted", IMAGE_STRUCT, nullable=False),  # PNG, input size times upscale
        *FRAME_FIELDS,
    ],
)
