"""Face metrics: facts from five landmarks (eye distance, pose, landmark distance) and ArcFace
identity similarity. Pure functions.

Landmarks are (N, 5, 2) arrays of (x, y) pixels in facexlib order: left eye, right eye, nose tip,
left mouth corner, right mouth corner (left/right in the image). Faces are float tensors
(N, 3, H, W), RGB in [0, 1], aligned to the FFHQ template.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from codeformer_core.align import FFHQ_TEMPLATE_512

# insightface's `arcface_dst`: where the five points land in the 112x112 crops ArcFace models are trained on.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
ARCFACE_SIZE = 112

# Depth of the nose tip in front of the eyes and mouth corners, relative to the distance between the eyes
# (about 25 mm against 63 mm on an average adult head).
NOSE_DEPTH = 0.4


def interocular(landmarks: np.ndarray) -> np.ndarray:
    """(N,) distance between the two eye centres, in pixels."""
    points = np.asarray(landmarks, dtype=np.float64)
    return np.linalg.norm(points[:, 1] - points[:, 0], axis=-1)


def pose(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(yaw, roll) in degrees per face, a coarse estimate from the five points.

    roll: the angle of the line from the left to the right eye, clockwise on screen (y points down).
    yaw: the nose tip's signed distance from the face's midline (the line through the midpoint of the
    eyes and the midpoint of the mouth corners), positive when it lies to the image right of it. Under
    weak perspective that offset is NOSE_DEPTH * eye distance * sin(yaw) while the visible eye distance
    shrinks by cos(yaw), so yaw = atan(offset / (NOSE_DEPTH * visible eye distance)). An average head
    is assumed; the FFHQ template gives yaw -0.003 and roll 0.11. Good for telling frontal, three-quarter
    and profile faces apart, not for measuring.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    eyes = points[:, 1] - points[:, 0]
    roll = np.degrees(np.arctan2(eyes[:, 1], eyes[:, 0]))
    eye_mid = (points[:, 0] + points[:, 1]) / 2
    midline = (points[:, 3] + points[:, 4]) / 2 - eye_mid
    rightward = np.stack([midline[:, 1], -midline[:, 0]], axis=-1) / np.linalg.norm(midline, axis=-1, keepdims=True)
    offset = np.sum((points[:, 2] - eye_mid) * rightward, axis=-1)
    yaw = np.degrees(np.arctan(offset / (NOSE_DEPTH * np.linalg.norm(eyes, axis=-1))))
    return yaw, roll


def landmark_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) LMD: the mean Euclidean distance between corresponding points, in pixels."""
    return np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), axis=-1).mean(axis=-1)


def _fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity (rotation, uniform scale, translation) taking src points onto dst:
    what skimage's SimilarityTransform.estimate (Umeyama) gives, solved as a complex linear fit."""
    z, w = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    zc, wc = z - z.mean(), w - w.mean()
    a = np.vdot(zc, wc) / np.vdot(zc, zc).real
    t = w.mean() - a * z.mean()
    return np.array([[a.real, -a.imag, t.real], [a.imag, a.real, t.imag]])


def arcface_affine(face_size: int = 512) -> np.ndarray:
    """2x3 transform from a face_size FFHQ-aligned crop to insightface's 112x112 ArcFace crop."""
    return _fit_similarity(FFHQ_TEMPLATE_512 * (face_size / 512.0), ARCFACE_TEMPLATE_112)


def _pixel_to_normalised(size: int) -> np.ndarray:
    """3x3 map from pixel coordinates (pixel centres at integers) to grid_sample's align_corners=False ones."""
    return np.array([[2 / size, 0, 1 / size - 1], [0, 2 / size, 1 / size - 1], [0, 0, 1]])


@functools.cache
def _arcface_theta(face_size: int) -> np.ndarray:
    """affine_grid's theta: output (112 crop) normalised coordinates -> input (face) normalised coordinates."""
    forward = np.vstack([arcface_affine(face_size), [0, 0, 1]])
    theta = _pixel_to_normalised(face_size) @ np.linalg.inv(forward) @ np.linalg.inv(_pixel_to_normalised(ARCFACE_SIZE))
    return theta[:2]


def arcface_input(faces: Tensor) -> Tensor:
    """(N, 3, S, S) FFHQ-aligned RGB faces in [0, 1] -> (N, 3, 112, 112) ArcFace input.

    The crop is insightface's `norm_crop`: the face is warped by the similarity that takes the FFHQ
    template points onto insightface's `arcface_dst` (bilinear, zeros outside, like cv2.warpAffine with
    borderValue 0). The pixels are then put in BGR order and mapped to [-1, 1] by (x - 0.5) / 0.5: facexlib's
    IR-SE50 (`Backbone`) is TreB1eN's InsightFace_Pytorch model, trained and evaluated on BGR images
    normalised that way (data/data_pipe.py there), and ByteDance's InfiniteYou feeds facexlib's weights
    the same (norm_crop of a BGR image, 2x - 1).
    """
    if faces.ndim != 4 or faces.shape[1] != 3 or faces.shape[2] != faces.shape[3]:
        raise ValueError(f"expected square faces of shape (N, 3, S, S), got {tuple(faces.shape)}")
    theta = torch.as_tensor(_arcface_theta(faces.shape[-1]), dtype=faces.dtype, device=faces.device)
    size = (faces.shape[0], 3, ARCFACE_SIZE, ARCFACE_SIZE)
    grid = F.affine_grid(theta.expand(faces.shape[0], 2, 3), list(size), align_corners=False)
    crops = F.grid_sample(faces, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (crops.flip(1) - 0.5) / 0.5


def identity_embeddings(model: torch.nn.Module, faces: Tensor) -> Tensor:
    """(N, 512) L2-normalised embeddings of FFHQ-aligned faces; the model is put in eval mode (so BatchNorm
    uses its running statistics and an embedding does not depend on the rest of the batch)."""
    model.eval()
    parameter = next(model.parameters())
    with torch.inference_mode():
        embeddings = model(arcface_input(faces.to(device=parameter.device, dtype=parameter.dtype)))
    return F.normalize(embeddings, dim=1)


def ids(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Identity similarity of two (N, 512) embedding batches: (cosine, angle in degrees), float64."""
    cosine = (F.normalize(a.to(torch.float64), dim=1) * F.normalize(b.to(torch.float64), dim=1)).sum(dim=1)
    return cosine, torch.rad2deg(torch.arccos(cosine.clamp(-1.0, 1.0)))
