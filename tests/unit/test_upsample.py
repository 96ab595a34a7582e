"""Real-ESRGAN: official checkpoints load through spandrel, tiles stitch, upsampled faces paste back in place."""

import cv2
import numpy as np
import pytest
import torch

from codeformer_core.align import estimate_affine, transform_points, FFHQ_TEMPLATE_512
from codeformer_core.paste import paste_affine, paste_faces
from codeformer_core.samples import synthetic_face
from codeformer_core.upsample import TILE_PAD, Upsampler, realesrgan_weights
from codeformer_core.weights import CheckpointMismatchError

CPU = torch.device("cpu")


def small_image(w: int, h: int) -> np.ndarray:
    return cv2.resize(synthetic_face(4), (w, h), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def x2():
    return Upsampler.from_weights(2, CPU, synthetic_seed=1, tile=0)[0]


def test_an_official_layout_checkpoint_loads_as_the_synthetic_weights_do(tmp_path, x2):
    state_dict, info = realesrgan_weights(2, synthetic_seed=1)
    assert info.synthetic and "conv_first.weight" in state_dict and "body.22.rdb3.conv5.bias" in state_dict
    path = tmp_path / "RealESRGAN_x2plus.pth"
    torch.save({"params_ema": state_dict}, path)

    from_file, file_info = Upsampler.from_weights(2, CPU, weights=str(path), tile=0)

    image = small_image(33, 27)  # odd sizes: the x2 model's input is padded to even, the output cut back
    out = from_file.upsample(image)
    assert out.shape == (54, 66, 3) and out.dtype == np.uint8
    assert np.array_equal(out, x2.upsample(image)) and not file_info.synthetic
    with pytest.raises(CheckpointMismatchError, match="conv_first.weight"):
        Upsampler.from_weights(4, CPU, weights=str(path))  # a x2 file for x4


def test_x4_quadruples_the_size():
    x4 = Upsampler.from_weights(4, CPU, synthetic_seed=1, tile=0)[0]
    assert x4.upsample(small_image(20, 14)).shape == (56, 80, 3)


def test_tiled_output_equals_the_untiled_within_one_level(x2):
    """With the default 40 pixels of context, every sample is within 1 of a single pass (the stated
    tolerance): here 3 x 2 tiles of 40 pixels over a 100 x 80 image."""
    image = small_image(100, 80)
    whole = x2.upsample(image)
    tiled = Upsampler(x2.net, 2, CPU, tile=40, pad=TILE_PAD).upsample(image)
    diff = np.abs(whole.astype(int) - tiled.astype(int))
    assert whole.shape == tiled.shape == (160, 200, 3)
    assert diff.max() <= 1
    assert Upsampler(x2.net, 2, CPU, tile=40, pad=4).upsample(image).tolist() != whole.tolist()  # context matters: the test can fail


def test_an_upsampled_face_pastes_where_the_crop_came_from():
    """The official face_upsampler branch: inverse affine without the half-pixel offset, translation
    times the factor. A face upsampled 2x (here by Lanczos) lands where the 512 crop lands."""
    affine = estimate_affine(transform_points(cv2.getRotationMatrix2D((256, 256), 12, 0.3), FFHQ_TEMPLATE_512) + [90, 70])
    official = cv2.invertAffineTransform(affine) * 2
    official /= 2
    official[:, 2] *= 2
    np.testing.assert_allclose(paste_affine(affine, 2, face_upsampled=True), official)

    image = np.full((300, 340, 3), 90, np.uint8)
    face = synthetic_face(2, degrade=False)
    big = cv2.resize(face, (1024, 1024), interpolation=cv2.INTER_LANCZOS4)
    plain = paste_faces(image, [face], [affine], upscale=2)
    upsampled = paste_faces(image, [big], [affine], upscale=2, faces_upsampled=True, background=cv2.resize(image, (680, 600)))
    inside = cv2.warpAffine(np.ones((512, 512), np.uint8), paste_affine(affine, 2), (680, 600)).astype(bool)
    inside = cv2.erode(inside.astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool)
    assert np.abs(plain[inside].astype(int) - upsampled[inside].astype(int)).mean() < 3
    assert np.abs(upsampled[inside].astype(int) - 90).mean() > 20  # the face is there
