"""`pairs/`: one row per LQ/HQ pair, with every degradation parameter as its own column."""

import pyarrow as pa

from schemas import FRAME_FIELDS, IMAGE_STRUCT, versioned

VERSION = 2

SCHEMA = versioned(
    "pairs",
    VERSION,
    [
        pa.field("key", pa.string(), nullable=False),  # {image_id}_{face_index}_{pair_index} ({image_id}_f{frame:07d}_... for a video's frame), also the webdataset key
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("face_index", pa.int32(), nullable=False),
        pa.field("pair_index", pa.int32(), nullable=False),
        pa.field("hq", IMAGE_STRUCT, nullable=False),  # PNG, the aligned 512x512 face
        pa.field("lq", IMAGE_STRUCT, nullable=False),  # PNG, 512x512; the JPEG artefacts are in the pixels
        pa.field("kernel", pa.string(), nullable=False),  # iso or aniso
        pa.field("kernel_size", pa.int32(), nullable=False),
        pa.field("sigma_x", pa.float64(), nullable=False),
        pa.field("sigma_y", pa.float64(), nullable=False),
        pa.field("theta", pa.float64(), nullable=False),  # radians
        pa.field("scale", pa.float64(), nullable=False),  # r: downsampled to int(512 / r) pixels
        pa.field("noise_sigma", pa.float64(), nullable=False),  # 0..255 scale
        pa.field("jpeg_quality", pa.int32(), nullable=False),
        pa.field("color_jitter", pa.bool_(), nullable=False),
        pa.field("jitter_shift", pa.list_(pa.float64()), nullable=False),  # RGB, 0..255 scale
        pa.field("grey", pa.bool_(), nullable=False),
        pa.field("noise_seed", pa.int64(), nullable=False),
        pa.field("pair_seed", pa.int64(), nullable=False),  # the parameters are sample_params(default_rng(pair_seed), preset)
        pa.field("seed", pa.int64(), nullable=False),  # the job's --seed
        pa.field("preset", pa.string(), nullable=False),
        pa.field("code_version", pa.string(), nullable=False),
        *FRAME_FIELDS,
    ],
)
