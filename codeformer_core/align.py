"""Five-point alignment to the FFHQ 512 template, as facexlib's FaceRestoreHelper does it. Pure functions.

Landmarks are (5, 2) arrays of (x, y) pixel coordinates in this order: left eye, right eye,
nose tip, left mouth corner, right mouth corner (left/right as seen in the image).
"""

from __future__ import annotations

import cv2
import numpy as np

FACE_SIZE = 512

# facexlib FaceRestoreHelper's template for 512x512 FFHQ crops.
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ]
)

# The helper warps BGR images with borderValue (135, 133, 132); these are the same grey pixels in RGB.
BORDER_FILL_RGB = (132, 133, 135)

# Landmarks may stick out of the image by this fraction of its width/height (faces cut by the border).
OUTSIDE_MARGIN = 0.1
# Spread of the five points along their weaker principal axis, relative to the stronger one,
# below which they count as collinear.
MIN_SPREAD_RATIO = 0.05
MIN_EYE_DISTANCE = 2.0


def landmark_problem(landmarks: np.ndarray, width: int, height: int) -> str | None:
    """Why these landmarks cannot be aligned, or None when they can."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2):
        return f"expected 5 (x, y) points, got an array of shape {points.shape}"
    if not np.isfinite(points).all():
        return "landmarks contain NaN or infinite values"
    lo = -OUTSIDE_MARGIN * np.array([width, height])
    hi = (1 + OUTSIDE_MARGIN) * np.array([width, height])
    if ((points < lo) | (points > hi)).any():
        return f"landmarks lie outside the {width}x{height} image"
    if np.linalg.norm(points[1] - points[0]) < MIN_EYE_DISTANCE:
        return "the two eye points coincide"
    singular = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    if singular[1] < MIN_SPREAD_RATIO * singular[0]:
        return "landmarks are (nearly) collinear"
    return None


def estimate_affine(landmarks: np.ndarray, face_size: int = FACE_SIZE) -> np.ndarray:
    """2x3 similarity transform (rotation, uniform scale, translation) from image to template, by LMEDS."""
    template = FFHQ_TEMPLATE_512 * (face_size / 512.0)
    affine, _ = cv2.estimateAffinePartial2D(np.asarray(landmarks, dtype=np.float64), template, method=cv2.LMEDS)
    if affine is None:
        raise ValueError("no similarity transform fits these landmarks")
    return affine


def warp_face(image: np.ndarray, affine: np.ndarray, face_size: int = FACE_SIZE) -> np.ndarray:
    """The aligned face crop: bilinear warp, pixels from outside the image filled with BORDER_FILL_RGB."""
    return cv2.warpAffine(
        image, affine, (face_size, face_size), borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_FILL_RGB
    )


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """The 2x3 transform from the aligned crop back to the image."""
    return cv2.invertAffineTransform(affine)


def transform_points(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return points @ affine[:, :2].T + affine[:, 2]


def as_aligned_face(rgb: np.ndarray) -> np.ndarray:
    """An input taken as an already aligned face, resized to 512x512 like the official `--has_aligned`."""
    if rgb.shape[:2] == (FACE_SIZE, FACE_SIZE):
        return rgb
    return cv2.resize(rgb, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_LINEAR)


def resize_affine(width: int, height: int) -> np.ndarray:
    """The 2x3 affine of `as_aligned_face`: image pixel centres -> 512 crop pixel centres."""
    sx, sy = FACE_SIZE / width, FACE_SIZE / height
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])


def crop_side(affine: np.ndarray) -> float:
    """Side of the crop's square in input pixels."""
    a = np.asarray(affine, dtype=np.float64).reshape(2, 3)
    return FACE_SIZE / float(np.sqrt(abs(np.linalg.det(a[:, :2]))))
