"""Restorer: holds a CodeFormer network and restores batches of aligned 512x512 faces."""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from codeformer_core.arch import CodeFormer
from codeformer_core.weights import WeightsInfo, build_codeformer, codeformer_weights

FACE_SIZE = 512


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' is the first GPU when there is one, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def as_aligned_face(rgb: np.ndarray) -> np.ndarray:
    """An input taken as an already aligned face, resized to 512x512 like the official `--has_aligned`."""
    if rgb.shape[:2] == (FACE_SIZE, FACE_SIZE):
        return rgb
    return cv2.resize(rgb, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_LINEAR)


def faces_to_tensor(faces: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N,512,512,3) uint8 RGB -> (N,3,512,512) float32 in [-1,1], scaled as the official script does."""
    t = torch.from_numpy(faces).to(device).permute(0, 3, 1, 2).double().div(255.0).float()
    return (t - 0.5) / 0.5


def tensor_to_faces(t: torch.Tensor) -> np.ndarray:
    """Network output -> (N,512,512,3) uint8 RGB: clamp to [-1,1], rescale, round."""
    t = (t.float().clamp(-1, 1) + 1) / 2
    return (t * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class Restorer:
    """Restores aligned faces with CodeFormer, `batch_size` faces per forward pass."""

    def __init__(self, model: CodeFormer, device: torch.device, batch_size: int = 4) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(
        cls,
        spec: str = "codeformer",
        device: str = "auto",
        batch_size: int = 4,
        weights_dir: str | os.PathLike[str] | None = None,
    ) -> tuple[Restorer, WeightsInfo]:
        """`spec` as `codeformer_weights` takes it: a known name, path, s3:// URI or `synthetic:SEED`."""
        state_dict, info = codeformer_weights(spec, weights_dir)
        chosen = pick_device(device)
        return cls(build_codeformer(state_dict, chosen), chosen, batch_size), info

    def restore(self, faces: Sequence[np.ndarray] | np.ndarray, fidelity: float = 0.5) -> np.ndarray:
        """(N,512,512,3) uint8 RGB aligned faces -> restored faces of the same shape.

        `fidelity` is CodeFormer's w: 0 favours quality (codebook prior), 1 favours the input.
        """
        stacked = np.ascontiguousarray(np.stack(list(faces)) if len(faces) else np.empty((0, FACE_SIZE, FACE_SIZE, 3), np.uint8))
        if stacked.ndim != 4 or stacked.shape[1:] != (FACE_SIZE, FACE_SIZE, 3) or stacked.dtype != np.uint8:
            raise ValueError(f"faces must be uint8 arrays of shape (512, 512, 3); got {stacked.dtype} {stacked.shape}")
        out = np.empty_like(stacked)
        with torch.inference_mode():
            for start in range(0, len(stacked), self.batch_size):
                chunk = faces_to_tensor(stacked[start : start + self.batch_size], self.device)
                restored, _, _ = self.model(chunk, w=fidelity, adain=True)
                out[start : start + len(chunk)] = tensor_to_faces(restored)
        return out
