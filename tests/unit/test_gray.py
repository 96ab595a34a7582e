"""Grey inputs: the official helper's arithmetic, written here from its definition, against ours."""

import cv2
import numpy as np
import pytest
from PIL import Image

from codeformer_core.gray import gray_restored, is_gray
from codeformer_core.samples import synthetic_face


# From the official CodeFormer (facelib/utils/misc.py), as it computes on BGR uint8 arrays.
def official_is_gray(img, threshold=10):
    img = Image.fromarray(img)
    if len(img.getbands()) == 1:
        return True
    img1 = np.asarray(img.getchannel(channel=0), dtype=np.int16)
    img2 = np.asarray(img.getchannel(channel=1), dtype=np.int16)
    img3 = np.asarray(img.getchannel(channel=2), dtype=np.int16)
    diff1 = (img1 - img2).var()
    diff2 = (img2 - img3).var()
    diff3 = (img3 - img1).var()
    diff_sum = (diff1 + diff2 + diff3) / 3.0
    return diff_sum <= threshold


def official_bgr2gray(img, out_channel=3):
    img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if out_channel == 3:
        img = img[:, :, np.newaxis].repeat(3, axis=2)
    return img


def official_calc_mean_std(feat, eps=1e-5):
    size = feat.shape
    c = size[2]
    feat_var = feat.reshape(-1, c).var(axis=0) + eps
    feat_std = np.sqrt(feat_var).reshape(1, 1, c)
    feat_mean = feat.reshape(-1, c).mean(axis=0).reshape(1, 1, c)
    return feat_mean, feat_std


def official_adain_npy(content_feat, style_feat):
    size = content_feat.shape
    style_mean, style_std = official_calc_mean_std(style_feat)
    content_mean, content_std = official_calc_mean_std(content_feat)
    normalized_feat = (content_feat - np.broadcast_to(content_mean, size)) / np.broadcast_to(content_std, size)
    return normalized_feat * np.broadcast_to(style_std, size) + np.broadcast_to(style_mean, size)


def official_add_restored_face(restored_bgr, input_bgr):
    """FaceRestoreHelper.add_restored_face for a grey input."""
    return official_adain_npy(official_bgr2gray(restored_bgr), input_bgr)


def grey_face(seed: int, tint: int = 0) -> np.ndarray:
    g = cv2.cvtColor(synthetic_face(seed), cv2.COLOR_RGB2GRAY)
    rgb = np.repeat(g[:, :, None], 3, axis=2).astype(np.int16)
    rgb[..., 0] += tint  # a sepia-like cast: still grey by the official test when small
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("tint", [0, 2])
def test_a_grey_face_restored_is_grey_with_the_input_statistics_as_the_official_helper(tint):
    input_rgb = grey_face(3, tint)
    restored_rgb = synthetic_face(7)  # a colourful "restoration"
    assert is_gray(input_rgb) and official_is_gray(input_rgb[..., ::-1])
    ours = gray_restored(restored_rgb, input_rgb)
    official = official_add_restored_face(np.ascontiguousarray(restored_rgb[..., ::-1]), np.ascontiguousarray(input_rgb[..., ::-1]))
    np.testing.assert_array_equal(ours[..., ::-1], np.clip(np.rint(official), 0, 255).astype(np.uint8))
    spread = ours.astype(np.int16)
    assert np.abs(spread[..., 1] - spread[..., 2]).max() <= 1  # the channels of the result differ only by the input's cast
    assert abs(float(ours[..., 0].mean()) - float(input_rgb[..., 0].mean())) < 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_grey_test_agrees_with_the_official_one(seed):
    rng = np.random.default_rng(seed)
    colour = synthetic_face(seed)
    almost = grey_face(seed).astype(np.int16) + rng.integers(-3, 4, size=(512, 512, 3))  # channel noise near the threshold
    for rgb in (colour, grey_face(seed), np.clip(almost, 0, 255).astype(np.uint8)):
        assert is_gray(rgb) == official_is_gray(np.ascontiguousarray(rgb[..., ::-1]))
    assert not is_gray(colour)


def test_the_threshold_is_inclusive_at_ten():
    # One pixel's red at d, all else 0: two of the three differences have variance 3 d^2 / 16, so the mean is d^2 / 8.
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0, 0] = 8  # 64 / 8 = 8 <= 10
    assert is_gray(rgb) and official_is_gray(rgb)
    rgb[0, 0, 0] = 9  # 81 / 8 = 10.125 > 10
    assert not is_gray(rgb) and not official_is_gray(rgb)
