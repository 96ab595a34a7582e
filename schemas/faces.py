"""`faces/`: one row per restored face, in descending detection score within an image.

The no-reference metrics (`sharpness` ... `niqe`) are of the aligned input face, `restored_*` the
same of the restored face, and `ids_*` the ArcFace identity similarity between the two; the
audit job's faces/ table (schemas/audit_faces.py) uses the same names and definitions."""

import pyarrow as pa

from codeformer_core.codec import FORMATS
from schemas import FACE_FRAME_FIELDS, IMAGE_STRUCT, versioned
from schemas.audit_faces import NO_REFERENCE, RESTORED

VERSION = 5

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
        pa.field("restored", IMAGE_STRUCT, nullable=False),  # 512x512
        pa.field("input_crop", IMAGE_STRUCT),  # the aligned 512x512 input face; null with --no-input-crop
        pa.field("image_format", pa.string(), nullable=False, metadata={"values": ",".join(FORMATS)}),  # of restored and input_crop: --image-format
        *[pa.field(name, pa.float64()) for name in NO_REFERENCE + RESTORED],  # null where undefined (NIQE of a flat face)
        *FACE_FRAME_FIELDS,
    ],
)
