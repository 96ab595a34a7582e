"""`crops/` of the crop job: one row per face, its aligned 512x512 crop and where it came from."""

import pyarrow as pa

from schemas import IMAGE_STRUCT, versioned

VERSION = 1

SCHEMA = versioned(
    "crops",
    VERSION,
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("face_index", pa.int32(), nullable=False),
        pa.field("landmarks", pa.list_(pa.float32(), 10)),  # x, y of eyes, nose, mouth corners in the input; null for --aligned
        pa.field("affine", pa.list_(pa.float64(), 6)),  # 2x3 input image -> 512 crop, row-major
        pa.field("crop", IMAGE_STRUCT, nullable=False),  # 512x512 PNG
    ],
)
