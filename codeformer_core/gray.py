"""Grey inputs give grey restorations, as the official CodeFormer inference does. Pure.

The official helper calls an input grey when the mean variance of its channel differences is at
most 10 (`is_gray`), and then turns each restored face grey and transfers the input crop's
per-channel mean and standard deviation onto it (`bgr2gray`, then `adain_npy`).
"""

from __future__ import annotations

import cv2
import numpy as np

GRAY_THRESHOLD = 10.0
_EPS = 1e-5  # adain_npy's variance epsilon
_BAND = 64  # rows of an image the grey test takes at a time


def is_gray(rgb: np.ndarray, threshold: float = GRAY_THRESHOLD) -> bool:
    """Whether an (H, W, 3) uint8 image is grey by the official test: the mean of the variances of
    its channel differences (R-G, G-B, B-R), here from their exact integer sums, taken by OpenCV
    in bands of rows so that the int16 differences stay in cache."""
    h, w = rgb.shape[:2]
    rotated = np.empty((min(_BAND, h), w, 3), np.uint8)
    differences = np.empty((min(_BAND, h), w, 3), np.int16)
    sums, squares = [0, 0, 0], 0
    for top in range(0, h, _BAND):
        band = rgb[top : top + _BAND]
        r, d = rotated[: len(band)], differences[: len(band)]
        cv2.mixChannels([band], [r], [1, 0, 2, 1, 0, 2])  # (G, B, R)
        cv2.subtract(band, r, dst=d, dtype=cv2.CV_16S)
        sums = [total + int(s) for total, s in zip(sums, cv2.sumElems(d))]
        squares += int(cv2.norm(d, cv2.NORM_L2SQR))
    n = h * w
    return (n * squares - sum(s * s for s in sums)) / (3 * n * n) <= threshold


def gray_restored(restored: np.ndarray, input_face: np.ndarray) -> np.ndarray:
    """The (S, S, 3) uint8 restored face made grey, with the input face's channel statistics, rounded to uint8."""
    grey = cv2.cvtColor(restored, cv2.COLOR_RGB2GRAY).astype(np.float64)
    content = np.repeat(grey[:, :, None], 3, axis=2)
    c_mean, c_std = _mean_std(content)
    s_mean, s_std = _mean_std(input_face.astype(np.float64))
    out = (content - c_mean) / c_std * s_std + s_mean
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _mean_std(feat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = feat.reshape(-1, feat.shape[2])
    return flat.mean(axis=0), np.sqrt(flat.var(axis=0) + _EPS)
