"""`faces/` of the audit job: one row per face found (or given), with every measurement.

No-reference metrics are of the aligned input face; with --restore, `restored_*` are the same
metrics of the restored face and `ids_*` the identity similarity between the two."""

import pyarrow as pa

from schemas import FACE_FRAME_FIELDS, IMAGE_STRUCT, versioned

VERSION = 3

NO_REFERENCE = ("sharpness", "noise", "blockiness", "brightness", "contrast", "colourfulness", "niqe")
FACE_FACTS = ("det_score", "face_size", "interocular", "yaw", "roll")
RESTORED = tuple(f"restored_{name}" for name in NO_REFERENCE) + ("ids_cosine", "ids_degrees")
MEASURES = FACE_FACTS + NO_REFERENCE + RESTORED + ("lmd",)

SCHEMA = versioned(
    "audit_faces",
    VERSION,
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("face_index", pa.int32(), nullable=False),
        pa.field("bbox", pa.list_(pa.float32(), 4)),  # x1, y1, x2, y2 in the input image; null unless detected
        pa.field("landmarks", pa.list_(pa.float32(), 10)),  # null for --aligned inputs
        pa.field("affine", pa.list_(pa.float64(), 6)),  # 2x3 input image -> 512 crop, row-major
        pa.field("det_score", pa.float32()),  # null unless detected
        pa.field("face_size", pa.float32(), nullable=False),  # side of the aligned crop's square in input pixels
        pa.field("interocular", pa.float32()),  # eye-centre distance in input pixels; null without landmarks
        pa.field("yaw", pa.float32()),  # degrees, from the 5 landmarks; null without landmarks
        pa.field("roll", pa.float32()),
        *[pa.field(name, pa.float64()) for name in NO_REFERENCE],  # null where undefined: NIQE of a face without two textured 96-px blocks
        *[pa.field(name, pa.float64()) for name in RESTORED],  # null without --restore
        pa.field("lmd", pa.float64()),  # with --restore: landmark distance input vs restored, crop pixels; null if either has no face
        pa.field("keep", pa.bool_(), nullable=False),
        pa.field("dropped_by", pa.list_(pa.string()), nullable=False),  # names of the failed threshold rules
        pa.field("thumbnail", IMAGE_STRUCT, nullable=False),  # the aligned input face, 128x128 JPEG
        pa.field("restored_thumbnail", IMAGE_STRUCT),  # with --restore
        pa.field("restored", IMAGE_STRUCT),  # with --restore: the 512x512 restored face, PNG
        *FACE_FRAME_FIELDS,
    ],
)
