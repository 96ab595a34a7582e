"""Every per-face measurement the jobs record, for batches of aligned 512x512 faces."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np
import torch

from codeformer_core import face_metrics, metrics
from codeformer_core.detect import Detector


def as_tensor(faces: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.stack(faces)).to(device).permute(0, 3, 1, 2).float().div_(255)


def measure_faces(
    faces: Sequence[np.ndarray],
    restored: Sequence[np.ndarray] | None,
    arcface: torch.nn.Module | None,
    device: torch.device,
    batch_size: int,
    names: Collection[str] = metrics.NO_REFERENCE,
    embeddings: bool = False,
) -> list[dict[str, float]]:
    """The no-reference metrics `names` of each RGB uint8 face; with `restored`, those of the restored faces
    (`restored_*`) and, with `arcface` too, the identity similarity between each pair (`ids_cosine`,
    `ids_degrees`) and, with `embeddings`, the restored face's ArcFace embedding (`restored_embedding`,
    float32 (512,)). NaN where a metric is undefined (NIQE of a face without two textured blocks)."""
    out: list[dict[str, float]] = []
    for start in range(0, len(faces), batch_size):
        x = as_tensor(faces[start : start + batch_size], device)
        values = {k: v.tolist() for k, v in metrics.no_reference(x, names).items()}
        if restored is not None:
            y = as_tensor(restored[start : start + batch_size], device)
            values |= {f"restored_{k}": v.tolist() for k, v in metrics.no_reference(y, names).items()}
            if arcface is not None:
                restored_embeddings = face_metrics.identity_embeddings(arcface, y)
                cosine, degrees = face_metrics.ids(face_metrics.identity_embeddings(arcface, x), restored_embeddings)
                values |= {"ids_cosine": cosine.tolist(), "ids_degrees": degrees.tolist()}
                if embeddings:
                    values["restored_embedding"] = list(restored_embeddings.float().cpu().numpy())
        out += [{k: v[j] for k, v in values.items()} for j in range(len(x))]
    return out


def landmark_distances(detector: Detector, faces: Sequence[np.ndarray], restored: Sequence[np.ndarray]) -> list[float]:
    """LMD of each pair: the mean distance in crop pixels between the 5 landmarks of the best face the
    detector finds in the face and in its restoration; NaN where it finds none in either."""
    found = detector.detect(list(faces) + list(restored))
    pairs = zip(found[: len(faces)], found[len(faces) :])
    return [
        float(face_metrics.landmark_distance(a[0].landmarks[None], b[0].landmarks[None])[0]) if a and b else math.nan
        for a, b in pairs
    ]
