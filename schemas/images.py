"""`images/`: exactly one row per input image, whatever happened to it."""

import pyarrow as pa

from schemas import STATUS, versioned

VERSION = 1

SCHEMA = versioned(
    "images",
    VERSION,
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        STATUS,
        pa.field("error", pa.string()),  # null when ok
        pa.field("width", pa.int32()),  # after EXIF orientation; null when unknown
        pa.field("height", pa.int32()),
        pa.field("num_faces", pa.int32(), nullable=False),
        pa.field("code_version", pa.string(), nullable=False),
        pa.field("weights_sha256", pa.string(), nullable=False),
        pa.field("weights_synthetic", pa.bool_(), nullable=False),
        pa.field("fidelity", pa.float32(), nullable=False),
    ],
)
