"""`embedded/` of the dedup job: one row per face with what grouping needs, committed shard by
shard before the corpus is grouped (faces/ adds the groups); its thumbnails feed the report."""

import pyarrow as pa

from schemas import IMAGE_STRUCT, versioned

VERSION = 1
EMBEDDING_SIZE = 512

FACE = [
    # shard << 40 | place in the shard << 12 | face_index: unique in the output, the same on a rerun
    pa.field("face_id", pa.int64(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("face_index", pa.int32(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("landmarks", pa.list_(pa.float32(), 10)),  # null for --aligned inputs
    pa.field("content_sha256", pa.string(), nullable=False),  # of the source file's bytes
    pa.field("phash", pa.uint64(), nullable=False),  # 64-bit DCT pHash of the aligned face
    pa.field("embedding", pa.list_(pa.float32(), EMBEDDING_SIZE), nullable=False),  # ArcFace IR-SE50, L2-normalised
    pa.field("face_size", pa.float32(), nullable=False),  # side of the aligned crop's square in input pixels
    pa.field("det_score", pa.float32()),  # null unless detected
    pa.field("sharpness", pa.float64()),  # Laplacian variance of the aligned face, as the audit's
]

SCHEMA = versioned("dedup_embedded", VERSION, [*FACE, pa.field("thumbnail", IMAGE_STRUCT, nullable=False)])
