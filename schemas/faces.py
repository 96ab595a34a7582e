"""`faces/`: one row per restored face, in descending detection score within an image."""

import pyarrow as pa

from schemas import IMAGE_STRUCT, versioned

VERSION = 2

SCHEMA = versioned(
    "faces",
    VERSION,
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("face_index", pa.int32(), nullable=False),
        pa.field("bbox", pa.list_(pa.float32(), 4)),  # x1, y1, x2, y2 in the input image; null unless detected
        pa.field("det_score", pa.float32()),  # null unless detected
        pa.field("landmarks", pa.list_(pa.float32(), 10)),  # x, y of eyes, nose, mouth corners; null for --aligned
        pa.field("affine", pa.list_(pa.float64(), 6)),  # 2x3 input image -> 512 crop, row-major
        pa.field("restored", IMAGE_STRUCT, nullable=False),  # 512x512 PNG
        pa.field("input_crop", IMAGE_STRUCT, nullable=False),  # the aligned 512x512 input face, PNG
    ],
)
