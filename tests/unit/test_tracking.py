"""Tracks: faces linked frame to frame by box overlap and landmarks, and a track's steadiness."""

import numpy as np
import pytest

from codeformer_core.align import FFHQ_TEMPLATE_512, estimate_affine, resize_affine
from codeformer_core.tracking import Face, Steadiness, TrackConfig, Tracker, crop_square, link, pixel_change
from tests.helpers import clip_face_corners


def face_at(x: float, y: float, side: float = 96.0, frame: int = 0) -> Face:
    """A face whose landmarks are the FFHQ template scaled into the square at (x, y)."""
    scale = side / 512
    landmarks = FFHQ_TEMPLATE_512 * scale + np.array([x, y])
    return Face(frame, crop_square(estimate_affine(landmarks)), landmarks)


def test_the_crop_square_of_an_aligned_face_is_where_it_was_cut():
    assert np.allclose(crop_square(resize_affine(640, 480).reshape(-1)), [0, 0, 640, 480], atol=0.2)  # up to OpenCV's half-pixel offset
    square = crop_square(estimate_affine(FFHQ_TEMPLATE_512 * 0.25 + [100, 50]))
    assert np.allclose(square, [100, 50, 228, 178], atol=0.5)


def test_the_two_moving_faces_of_the_test_clip_keep_their_ids():
    frames = 75
    corners = [clip_face_corners(i, frames) for i in range(frames)]
    ids = list(link([face_at(x, y, frame=i) for x, y in c] for i, c in enumerate(corners)))
    assert ids == [[0, 1]] * frames
    alternating = list(link([face_at(x, y, frame=i) for x, y in (c if i % 2 == 0 else c[::-1])] for i, c in enumerate(corners)))
    assert alternating == [[0, 1] if i % 2 == 0 else [1, 0] for i in range(frames)]  # ids follow the faces, not the order of the list


def test_a_face_gone_for_longer_than_the_gap_comes_back_as_a_new_track():
    tracker = Tracker(TrackConfig(max_gap=2))
    a, b = face_at(10, 10), face_at(200, 10)
    assert tracker.update([a, b]) == [0, 1]
    assert tracker.update([a]) == [0]
    assert tracker.update([a]) == [0]
    assert tracker.update([a, b]) == [0, 1]  # b unseen for 2 frames: continued
    for _ in range(3):
        tracker.update([a])
    assert tracker.update([a, b]) == [0, 2]  # unseen for 3: a new track


def test_overlap_below_the_threshold_never_links():
    tracker = Tracker(TrackConfig(min_iou=0.3))
    assert tracker.update([face_at(0, 0)]) == [0]
    assert tracker.update([face_at(80, 0)]) == [1]  # IoU of the squares about 0.1


def test_landmarks_decide_between_two_equally_overlapping_faces():
    a = face_at(100, 100)
    near = Face(1, a.square, a.landmarks + 1.0)
    far = Face(1, a.square, a.landmarks + 30.0)
    tracker = Tracker()
    tracker.update([a])
    assert tracker.update([far, near]) == [1, 0]


def test_steadiness_averages_consecutive_changes():
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(3)]
    unit = np.eye(512, dtype=np.float32)
    track = Steadiness(0)
    for frame, (crop, e) in enumerate(zip(crops, (unit[0], unit[0], (unit[0] + unit[1]) / np.sqrt(2)))):
        track.add(frame, e, crop, None)
    means = track.means()
    assert means["identity_cosine"] == pytest.approx((1 + 1 / np.sqrt(2)) / 2)
    assert means["restored_change"] == pytest.approx((pixel_change(crops[0], crops[1]) + pixel_change(crops[1], crops[2])) / 2)
    assert means["input_change"] is None and (track.first, track.last, track.faces) == (0, 2, 3)
    assert pixel_change(crops[0], crops[0]) == 0 and pixel_change(np.zeros((512, 512, 3), np.uint8), np.full((128, 128, 3), 9, np.uint8)) == 9
