"""`images/`: exactly one row per input image (per segment of a video), whatever happened to it."""

import pyarrow as pa

from schemas import IMAGE_ROW, VIDEO_ROW, versioned

VERSION = 4

SCHEMA = versioned(
    "images",
    VERSION,
    [
        *IMAGE_ROW,
        pa.field("num_faces", pa.int32()),
        # The official CodeFormer's grey test (mean variance of channel differences <= 10); null when not decoded.
        pa.field("is_gray", pa.bool_()),
        pa.field("code_version", pa.string(), nullable=False),
        pa.field("weights_sha256", pa.string(), nullable=False),
        pa.field("weights_synthetic", pa.bool_(), nullable=False),
        pa.field("fidelity", pa.float32(), nullable=False),
        *VIDEO_ROW,
    ],
)
