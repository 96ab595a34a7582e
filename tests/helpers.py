"""What only the tests need: reading PNGs back, checking schemas, writing synthetic checkpoint files."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import torch

from codeformer_core.samples import synthetic_face
from codeformer_core.weights import SYNTHETIC_MARKER, synthetic_codeformer_state_dict


def decode_png(data: bytes) -> np.ndarray:
    """PNG (or any format cv2 reads) written by `encode_png` -> RGB uint8."""
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def matches(schema: pa.Schema, expected: pa.Schema) -> bool:
    """Same fields (names, types, nullability) and the same table name and version."""
    return schema.remove_metadata().equals(expected.remove_metadata()) and all(
        (schema.metadata or {}).get(k) == v for k, v in expected.metadata.items()
    )


def save_synthetic_codeformer(path: Path, seed: int = 1) -> Path:
    """Write synthetic weights as `{'params_ema': ..., 'synthetic': ...}`; loaders report them as synthetic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    torch.save({"params_ema": synthetic_codeformer_state_dict(seed), SYNTHETIC_MARKER: f"random weights, seed {seed}"}, partial)
    os.replace(partial, path)
    return path


def varied_face(seed: int) -> np.ndarray:
    """A synthetic aligned face whose hair, background and lighting differ from those of other seeds
    at the scale a perceptual hash sees (an 8x8 random field), as two real people's photos do; the
    plain synthetic faces share one drawing and hash alike."""
    rng = np.random.default_rng(seed)
    field = cv2.resize(rng.uniform(-60, 60, (8, 8)), (512, 512), interpolation=cv2.INTER_CUBIC)
    return np.clip(synthetic_face(seed, degrade=False) + field[..., None], 0, 255).astype(np.uint8)
