"""`pasted/` (with --paste): the whole input image with its restored faces pasted back."""

import pyarrow as pa

from codeformer_core.codec import FORMATS
from schemas import FRAME_FIELDS, IMAGE_STRUCT, versioned

VERSION = 3

SCHEMA = versioned(
    "pasted",
    VERSION,
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("upscale", pa.int32(), nullable=False),
        pa.field("pasted", IMAGE_STRUCT, nullable=False),  # input size times upscale
        pa.field("image_format", pa.string(), nullable=False, metadata={"values": ",".join(FORMATS)}),  # of pasted: --image-format
        *FRAME_FIELDS,
    ],
)
