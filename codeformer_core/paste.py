"""Paste restored faces back into the whole image, following facexlib's FaceRestoreHelper. Pure.

Each face goes back through the inverse of its alignment transform and is blended with a soft
mask: the warped square is eroded, then eroded again and Gaussian-blurred by an amount that
grows with the face's area. An optional face-parsing mask (ParseNet) replaces the square.
The background is not restored: with upscale > 1 it is resized (Lanczos), or given already
upsampled (Real-ESRGAN). Faces come at the crop size, or already upsampled by the same factor, as
the official helper's face_upsampler makes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from codeformer_core.align import invert_affine

# ParseNet's 19 classes -> kept (255) or not (0): background, neck, cloth and hat are left out.
PARSE_KEEP = np.array([0, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 0, 255, 0, 0, 0], np.float64)
PARSE_BORDER = 10


def paste_affine(affine: np.ndarray, upscale: int, face_upsampled: bool = False) -> np.ndarray:
    """Crop -> output-image transform, with the helper's half-pixel offset when upscaling a crop of
    the aligned size; a face already upsampled `upscale` times maps without it."""
    inverse = invert_affine(affine)
    if face_upsampled:
        inverse[:, 2] *= upscale
        return inverse
    inverse *= upscale
    if upscale > 1:
        inverse[:, 2] += 0.5 * upscale
    return inverse


def square_mask(
    face_size: int, inverse: np.ndarray, out_size: tuple[int, int], upscale: int
) -> tuple[np.ndarray, np.ndarray]:
    """(soft blending mask, eroded hard mask), both (H, W), of a square crop pasted with `inverse`."""
    w_up, h_up = out_size
    inv_mask = cv2.warpAffine(np.ones((face_size, face_size), np.float32), inverse, (w_up, h_up))
    eroded = cv2.erode(inv_mask, np.ones((2 * upscale, 2 * upscale), np.uint8))
    w_edge = int(np.sum(eroded) ** 0.5) // 20
    center = cv2.erode(eroded, np.ones((w_edge * 2, w_edge * 2), np.uint8))
    return cv2.GaussianBlur(center, (w_edge * 2 + 1, w_edge * 2 + 1), 0), eroded


def parse_mask(parsing: np.ndarray, face_size: int) -> np.ndarray:
    """(512, 512) ParseNet class map of a restored face -> soft mask in [0, 1] of the crop's size."""
    mask = PARSE_KEEP[parsing]
    mask = cv2.GaussianBlur(mask, (101, 101), 11)
    mask = cv2.GaussianBlur(mask, (101, 101), 11)
    mask[:PARSE_BORDER, :] = 0
    mask[-PARSE_BORDER:, :] = 0
    mask[:, :PARSE_BORDER] = 0
    mask[:, -PARSE_BORDER:] = 0
    return cv2.resize(mask / 255.0, (face_size, face_size))


def paste_faces(
    image: np.ndarray,
    faces: Sequence[np.ndarray],
    affines: Sequence[np.ndarray],
    upscale: int = 1,
    parse_masks: Sequence[np.ndarray] | None = None,
    background: np.ndarray | None = None,
    faces_upsampled: bool = False,
) -> np.ndarray:
    """`image` (H, W, 3) uint8 with each restored face pasted where its `affine` took it from.

    `affines` are the image -> crop transforms used for alignment (crops of S x S). Faces are
    (S, S, 3), or (S*upscale, S*upscale, 3) with `faces_upsampled`. `parse_masks`, when given, are
    soft masks from `parse_mask` of each face's size. `background` is the image already upsampled
    to (H*upscale, W*upscale); without it the image is resized. Returns (H*upscale, W*upscale, 3) uint8.
    """
    if upscale not in (1, 2, 3, 4):
        raise ValueError(f"upscale must be 1, 2, 3 or 4, got {upscale}")
    h, w = image.shape[:2]
    out_size = (w * upscale, h * upscale)
    if background is not None and background.shape[:2] != (h * upscale, w * upscale):
        raise ValueError(f"background is {background.shape[1]}x{background.shape[0]}, expected {out_size[0]}x{out_size[1]}")
    canvas = background if background is not None else image if upscale == 1 else cv2.resize(image, out_size, interpolation=cv2.INTER_LANCZOS4)
    result = canvas
    for i, (face, affine) in enumerate(zip(faces, affines)):
        inverse = paste_affine(affine, upscale, faces_upsampled)
        warped = cv2.warpAffine(face, inverse, out_size)
        if parse_masks is None:
            soft, eroded = square_mask(face.shape[0], inverse, out_size, upscale)
            pasted = eroded[:, :, None] * warped
        else:
            soft = cv2.warpAffine(parse_masks[i], inverse, out_size, flags=cv2.INTER_CUBIC)
            pasted = warped
        soft = soft[:, :, None]
        result = soft * pasted + (1 - soft) * result
    return result.astype(np.uint8)
