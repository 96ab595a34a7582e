"""Alignment geometry: known transforms are recovered and undone."""

import cv2
import numpy as np
import pytest

from codeformer_core.align import FFHQ_TEMPLATE_512, estimate_affine, landmark_problem, transform_points, warp_face
from codeformer_core.paste import paste_faces
from codeformer_core.samples import synthetic_face


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def place(crop: np.ndarray, angle_deg: float, scale: float, offset: tuple[float, float], canvas_hw: tuple[int, int]):
    """Put a 512 crop into a bigger canvas with a known similarity transform; return canvas and its landmarks."""
    m = cv2.getRotationMatrix2D((256, 256), angle_deg, scale)
    m[:, 2] += np.array(offset) - 256
    canvas = cv2.warpAffine(crop, m, (canvas_hw[1], canvas_hw[0]), flags=cv2.INTER_CUBIC, borderValue=(20, 90, 40))
    return canvas, transform_points(m, FFHQ_TEMPLATE_512)


@pytest.mark.parametrize("angle, scale, offset", [(25, 1.3, (600, 420)), (-40, 1.0, (380, 300)), (0, 2.0, (700, 600))])
def test_alignment_recovers_a_placed_crop_and_paste_puts_it_back(angle, scale, offset):
    crop = synthetic_face(3, degrade=False)
    canvas, landmarks = place(crop, angle, scale, offset, (1200, 1400))

    affine = estimate_affine(landmarks)
    recovered = warp_face(canvas, affine)

    inner = (slice(120, 440), slice(120, 400))  # the face, away from the crop's own border
    assert psnr(recovered[inner], crop[inner]) >= 35
    pasted = paste_faces(canvas, [recovered], [affine])
    square = cv2.warpAffine(np.ones((512, 512), np.uint8), cv2.invertAffineTransform(affine), (1400, 1200))
    inside = cv2.erode(square, np.ones((61, 61), np.uint8)).astype(bool)
    outside = ~cv2.dilate(square, np.ones((5, 5), np.uint8)).astype(bool)
    assert psnr(pasted[inside], canvas[inside]) >= 35
    assert np.array_equal(pasted[outside], canvas[outside])


def test_estimated_affine_maps_landmarks_onto_the_template():
    m = cv2.getRotationMatrix2D((100, 80), 17, 0.6)
    landmarks = transform_points(m, FFHQ_TEMPLATE_512)
    np.testing.assert_allclose(transform_points(estimate_affine(landmarks), landmarks), FFHQ_TEMPLATE_512, atol=1e-6)


@pytest.mark.parametrize(
    "landmarks, reason",
    [
        (np.full((5, 2), np.nan), "NaN"),
        (np.array([[10, 10], [20, 20], [30, 30], [40, 40], [50, 50]], float), "collinear"),
        (FFHQ_TEMPLATE_512 + 5000, "outside"),
        (np.array([[10, 10], [10, 10], [12, 20], [8, 30], [14, 30]], float), "coincide"),
        (np.zeros((4, 2)), "5 (x, y) points"),
    ],
)
def test_bad_landmarks_have_a_reason(landmarks, reason):
    assert reason in landmark_problem(landmarks, 512, 512)


def test_good_landmarks_pass():
    assert landmark_problem(FFHQ_TEMPLATE_512, 512, 512) is None
