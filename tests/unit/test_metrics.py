"""Image and face metrics: known answers, independent numpy references, and batch independence."""

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from facexlib.recognition.arcface_arch import Backbone
from numpy.lib.stride_tricks import sliding_window_view

import schemas.audit_faces
from codeformer_core import face_metrics, metrics, report
from codeformer_core.align import FFHQ_TEMPLATE_512
from codeformer_core.samples import synthetic_face


def as_batch(*images: np.ndarray) -> torch.Tensor:
    """(H, W, 3) RGB images on 0..255 (any dtype) -> (N, 3, H, W) float64 in [0, 1]."""
    return torch.from_numpy(np.stack(images).astype(np.float64) / 255).permute(0, 3, 1, 2)


def textured_face(seed: int, size: int = 512) -> np.ndarray:
    """A synthetic face under a sinusoidal texture and mild noise: no flat or clipped areas."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    texture = sum(
        rng.uniform(4, 12)
        * np.sin(2 * np.pi * (rng.uniform(2, 30) * xx + rng.uniform(2, 30) * yy) + rng.uniform(0, 6.3))
        for _ in range(8)
    )
    img = 0.8 * synthetic_face(seed, size, degrade=False) + 25 + texture[..., None] / np.abs(texture).max() * 20
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).round().astype(np.uint8)


def numpy_space(img: np.ndarray, space: str) -> np.ndarray:
    """(H, W, 3) in [0, 1] -> (C, H, W) on 0..255: RGB, or MATLAB rgb2ycbcr's Y."""
    if space == "rgb":
        return 255 * img.transpose(2, 0, 1)
    return (16 + img @ np.array([65.481, 128.553, 24.966]))[None]


def numpy_psnr(a: np.ndarray, b: np.ndarray, space: str) -> float:
    mse = np.mean((numpy_space(a, space) - numpy_space(b, space)) ** 2)
    return 10 * math.log10(255**2 / mse)


def numpy_ssim(a: np.ndarray, b: np.ndarray, space: str) -> float:
    t = np.arange(11) - 5
    g = np.exp(-(t**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scores = []
    for p, q in zip(numpy_space(a, space), numpy_space(b, space)):
        pw, qw = sliding_window_view(p, (11, 11)), sliding_window_view(q, (11, 11))
        mp, mq = (pw * window).sum((-2, -1)), (qw * window).sum((-2, -1))
        vp = (pw**2 * window).sum((-2, -1)) - mp**2
        vq = (qw**2 * window).sum((-2, -1)) - mq**2
        cov = (pw * qw * window).sum((-2, -1)) - mp * mq
        scores.append((((2 * mp * mq + c1) * (2 * cov + c2)) / ((mp**2 + mq**2 + c1) * (vp + vq + c2))).mean())
    return float(np.mean(scores))


def test_psnr_of_identical_images_is_inf():
    x = as_batch(synthetic_face(0, size=64))
    assert metrics.psnr(x, x).item() == math.inf
    assert metrics.psnr(x, x, space="y").item() == math.inf


@pytest.mark.parametrize("space", ["rgb", "y"])
def test_psnr_and_ssim_agree_with_a_numpy_computation(space):
    rng = np.random.default_rng(7)
    clean = [cv2.GaussianBlur(rng.uniform(0, 1, (40, 48, 3)), (0, 0), 2) for _ in range(2)]
    noisy = [np.clip(c + rng.normal(0, 0.05, c.shape), 0, 1) for c in clean]
    x = torch.from_numpy(np.stack(clean)).permute(0, 3, 1, 2)
    y = torch.from_numpy(np.stack(noisy)).permute(0, 3, 1, 2)

    psnr, ssim = metrics.psnr(x, y, space), metrics.ssim(x, y, space)

    assert psnr.dtype == ssim.dtype == torch.float64 and psnr.shape == ssim.shape == (2,)
    np.testing.assert_allclose(psnr.numpy(), [numpy_psnr(a, b, space) for a, b in zip(clean, noisy)], atol=1e-4)
    np.testing.assert_allclose(ssim.numpy(), [numpy_ssim(a, b, space) for a, b in zip(clean, noisy)], atol=1e-4)
    assert 0.3 < ssim.min() and ssim.max() < 0.99
    np.testing.assert_allclose(metrics.ssim(x, x, space).numpy(), 1.0, atol=1e-12)


def test_an_unknown_colour_space_is_refused():
    x = as_batch(synthetic_face(0, size=32))
    with pytest.raises(ValueError, match="space"):
        metrics.psnr(x, x, space="lab")


def every_metric(images: torch.Tensor, references: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "psnr": metrics.psnr(images, references),
        "psnr_y": metrics.psnr(images, references, "y"),
        "ssim": metrics.ssim(images, references),
        "ssim_y": metrics.ssim(images, references, "y"),
        **metrics.no_reference(images),
    }


def test_an_image_scores_the_same_alone_and_in_a_batch():
    images = as_batch(*(synthetic_face(i, size=192) for i in range(3)))
    references = as_batch(*(synthetic_face(i, size=192, degrade=False) for i in range(3)))
    batched = every_metric(images, references)
    for i in range(3):
        alone = every_metric(images[i : i + 1], references[i : i + 1])
        for name, values in batched.items():
            assert values.dtype == torch.float64 and values.shape == (3,), name
            assert torch.isfinite(values[i]), name
            np.testing.assert_allclose(alone[name].numpy(), values[i : i + 1].numpy(), rtol=0, atol=1e-6, err_msg=name)


def test_no_reference_keys_match_the_schemas():
    x = as_batch(synthetic_face(0, size=96))
    assert tuple(metrics.no_reference(x)) == metrics.NO_REFERENCE == schemas.audit_faces.NO_REFERENCE


def test_no_reference_computes_only_the_named_metrics():
    x = as_batch(synthetic_face(0, size=192))
    every = metrics.no_reference(x)
    some = metrics.no_reference(x, ("niqe", "sharpness"))
    assert list(some) == ["sharpness", "niqe"] and some["niqe"].isfinite().all()
    for name, values in some.items():
        torch.testing.assert_close(values, every[name], rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown no-reference metrics.*sharpnes"):
        metrics.no_reference(x, ("sharpnes",))


def test_sharpness_falls_as_blur_grows():
    face = textured_face(0, size=256)
    blurred = [face] + [cv2.GaussianBlur(face, (0, 0), sigma) for sigma in (0.5, 1, 2, 4)]
    values = metrics.sharpness(as_batch(*blurred)).numpy()
    assert np.all(np.diff(values) < 0), values


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("sigma", [5.0, 10.0, 20.0])
def test_noise_estimate_is_within_15_percent_of_the_added_sigma(seed, sigma):
    face = synthetic_face(seed, degrade=False).astype(np.float64)
    # The same noise on R, G and B: the luma (weights summing to 1) carries exactly that sigma.
    noise = np.random.default_rng(seed).normal(0, sigma, face.shape[:2])[..., None]
    estimate = metrics.noise_level(as_batch(face + noise)).item()
    assert abs(estimate - sigma) < 0.15 * sigma
    assert metrics.noise_level(as_batch(face)).item() < 1.0
    # Without edges the estimator is unbiased; 510x510 residuals leave it about 0.3% of spread.
    flat = np.full_like(face, 128.0)
    assert metrics.noise_level(as_batch(flat + noise)).item() == pytest.approx(sigma, rel=0.02)


def test_blockiness_rises_as_jpeg_quality_falls():
    face = synthetic_face(1, degrade=False)
    decoded = []
    for quality in (90, 50, 20, 10):
        _, jpeg = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, quality])
        decoded.append(cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED))
    values = metrics.blockiness(as_batch(*decoded)).numpy()
    assert np.all(np.diff(values) > 0), values
    assert values[-1] > 1.5


def test_known_answers_on_constant_images():
    rgb = np.array([0.2, 0.5, 0.8])
    x = torch.from_numpy(np.broadcast_to(rgb, (1, 32, 32, 3)).copy()).permute(0, 3, 1, 2)
    r, g, b = 255 * rgb
    assert metrics.brightness(x).item() == pytest.approx(0.299 * r + 0.587 * g + 0.114 * b, abs=1e-9)
    assert metrics.contrast(x).item() == pytest.approx(0, abs=1e-9)
    assert metrics.sharpness(x).item() == pytest.approx(0, abs=1e-9)
    assert metrics.noise_level(x).item() == pytest.approx(0, abs=1e-9)
    assert metrics.blockiness(x).item() == pytest.approx(1.0)
    assert metrics.colourfulness(x).item() == pytest.approx(0.3 * math.hypot(r - g, (r + g) / 2 - b), abs=1e-9)
    grey = torch.full((1, 3, 16, 16), 0.4, dtype=torch.float64)
    assert metrics.colourfulness(grey).item() == pytest.approx(0, abs=1e-9)


def test_known_answers_on_a_checkerboard_and_a_two_colour_image():
    board = np.indices((32, 32)).sum(axis=0) % 2 * 255.0
    x = as_batch(np.repeat(board[..., None], 3, axis=2))
    assert metrics.brightness(x).item() == pytest.approx(127.5)
    assert metrics.contrast(x).item() == pytest.approx(127.5)
    # Each pixel differs by 255 from its four neighbours: the Laplacian is -1020 on white and +1020 on black.
    assert metrics.sharpness(x).item() == pytest.approx(1020.0**2)

    halves = np.zeros((16, 16, 3))
    halves[:, :8, 0] = 255  # red | blue
    halves[:, 8:, 2] = 255
    # rg = 255 | 0 and yb = 127.5 | -255: means 127.5 and -63.75, standard deviations 127.5 and 191.25.
    expected = math.hypot(127.5, 191.25) + 0.3 * math.hypot(127.5, -63.75)
    assert metrics.colourfulness(as_batch(halves)).item() == pytest.approx(expected)


def test_niqe_is_worse_for_a_blurred_noisy_image():
    face = textured_face(1)
    rng = np.random.default_rng(3)
    bad = np.clip(cv2.GaussianBlur(face.astype(np.float64), (0, 0), 3) + rng.normal(0, 15, face.shape), 0, 255)
    clean, degraded = metrics.niqe(as_batch(face, bad)).numpy()
    assert np.isfinite(clean) and np.isfinite(degraded)
    assert degraded > clean + 2


def test_niqe_regression_value():
    # BasicSR's niqe.py run with numpy in float64 (its imresize switched from float32 to float64) gives
    # 9.575101393774649 for this image; BasicSR as released, in float32, gives 9.57512340078408.
    assert metrics.niqe(as_batch(textured_face(0))).item() == pytest.approx(9.575101393774649, abs=1e-6)


def test_niqe_of_flat_areas_does_not_depend_on_rounding_residues():
    # NIQE ignores a uniform offset of the luma; here one of exactly 20 Y levels (R, G and B raised by 20/219).
    # The flat areas of these faces give residues that change with the offset unless snapped to 0: without
    # the snapping the values below move by up to 1.7.
    faces = as_batch(*(synthetic_face(i, size=288, degrade=False) for i in range(3)))
    np.testing.assert_allclose(metrics.niqe(faces + 20 / 219).numpy(), metrics.niqe(faces).numpy(), atol=1e-6)


def test_niqe_of_a_flat_image_is_nan_and_of_a_small_one_an_error():
    assert math.isnan(metrics.niqe(torch.full((1, 3, 192, 192), 0.5, dtype=torch.float64)).item())
    with pytest.raises(ValueError, match="96x96"):
        metrics.niqe(torch.zeros(1, 3, 95, 200))


def test_face_facts_of_the_template():
    template = FFHQ_TEMPLATE_512[None]
    (dx, dy) = FFHQ_TEMPLATE_512[1] - FFHQ_TEMPLATE_512[0]
    np.testing.assert_allclose(face_metrics.interocular(template), [math.hypot(dx, dy)])
    yaw, roll = face_metrics.pose(template)
    assert abs(yaw[0]) < 0.05
    np.testing.assert_allclose(roll, [math.degrees(math.atan2(dy, dx))])
    assert abs(roll[0]) < 0.2


def test_pose_known_answers():
    frontal = np.array([[-50.0, 0], [50, 0], [0, 40], [-40, 90], [40, 90]]) + [300, 200]
    turned = frontal.copy()
    turned[2, 0] += face_metrics.NOSE_DEPTH * 100 * math.tan(math.radians(30))  # nose to the image right
    angle = math.radians(10)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    rotated = (np.stack([frontal, turned]) - [256, 256]) @ rotation.T * 1.7 + [256, 256]

    yaw, roll = face_metrics.pose(np.stack([frontal, turned]))
    np.testing.assert_allclose(yaw, [0, 30], atol=1e-9)
    np.testing.assert_allclose(roll, [0, 0], atol=1e-9)
    yaw, roll = face_metrics.pose(rotated)
    np.testing.assert_allclose(yaw, [0, 30], atol=1e-9)
    np.testing.assert_allclose(roll, [10, 10], atol=1e-9)
    np.testing.assert_allclose(face_metrics.interocular(rotated), [170, 170])


def test_landmark_distance_of_a_shifted_copy_is_the_shift():
    a = np.stack([FFHQ_TEMPLATE_512, FFHQ_TEMPLATE_512 * 0.5])
    np.testing.assert_allclose(face_metrics.landmark_distance(a, a + [3.0, -4.0]), [5, 5])
    np.testing.assert_allclose(face_metrics.landmark_distance(a, a), [0, 0])


def test_arcface_crop_is_insightface_norm_crop_in_bgr():
    affine = face_metrics.arcface_affine()
    mapped = FFHQ_TEMPLATE_512 @ affine[:2, :2].T + affine[:, 2]
    assert np.abs(mapped - face_metrics.ARCFACE_TEMPLATE_112).max() < 2.5

    face = synthetic_face(2)
    expected = cv2.warpAffine(face.astype(np.float32) / 255, affine, (112, 112), borderValue=0)[..., ::-1] * 2 - 1
    crop = face_metrics.arcface_input(as_batch(face).float())
    assert crop.shape == (1, 3, 112, 112) and crop.dtype == torch.float32
    np.testing.assert_allclose(crop[0].permute(1, 2, 0).numpy(), expected, atol=1e-4)


@pytest.fixture(scope="module")
def arcface():
    torch.manual_seed(0)
    return Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")


def test_identity_similarity(arcface):
    faces = as_batch(*(synthetic_face(i) for i in range(3))).float()
    batch = face_metrics.identity_embeddings(arcface, faces)
    alone = face_metrics.identity_embeddings(arcface, faces[1:2])

    assert batch.shape == (3, 512)
    np.testing.assert_allclose(batch.norm(dim=1).numpy(), 1, atol=1e-6)
    np.testing.assert_allclose(alone[0].numpy(), batch[1].numpy(), atol=1e-5)
    cosine, degrees = face_metrics.ids(batch, batch)
    np.testing.assert_allclose(cosine.numpy(), 1, atol=1e-5)
    np.testing.assert_allclose(degrees.numpy(), 0, atol=1e-3)
    forward, backward = face_metrics.ids(batch, batch.roll(1, dims=0)), face_metrics.ids(batch.roll(1, dims=0), batch)
    np.testing.assert_allclose(forward[0].numpy(), backward[0].numpy(), atol=1e-12)
    np.testing.assert_allclose(forward[1].numpy(), np.degrees(np.arccos(forward[0].numpy())), atol=1e-9)
    assert forward[0].max() < 0.99


def test_landmark_distance_of_restorations_uses_the_detectors_best_face():
    """With the real RetinaFace (synthetic weights): a face against itself is 0; without faces, NaN."""
    from codeformer_core.detect import DetectConfig, Detector
    from codeformer_core.measure import landmark_distances

    faces = [synthetic_face(i, degrade=False) for i in range(2)]
    finds = Detector.from_weights(DetectConfig(conf_threshold=0.0), torch.device("cpu"), synthetic_seed=1)
    assert landmark_distances(finds, faces, faces) == [0.0, 0.0]
    blind = Detector.from_weights(DetectConfig(conf_threshold=1.01), torch.device("cpu"), synthetic_seed=1)
    assert all(math.isnan(v) for v in landmark_distances(blind, faces, faces))


def test_shifted_sums_give_conv2d_results_to_the_last_bits():
    """The filters sum shifted slices instead of calling conv2d (no fast float64 kernel anywhere):
    the recorded float64 values must not move beyond rounding in the last place."""
    images = torch.rand(3, 2, 41, 37, dtype=torch.float64) * 255
    taps = torch.rand(7, dtype=torch.float64)
    n, c, h, w = images.shape
    planes = F.conv2d(F.conv2d(images.reshape(n * c, 1, h, w), taps.view(1, 1, -1, 1)), taps.view(1, 1, 1, -1))
    torch.testing.assert_close(metrics._separable_filter(images, taps), planes.reshape(n, c, *planes.shape[-2:]), rtol=1e-15, atol=1e-12)
    for rows in (metrics.LAPLACIAN, metrics.IMMERKAER):
        expected = F.conv2d(images[:, :1], torch.tensor(rows, dtype=torch.float64)[None, None])[:, 0]
        torch.testing.assert_close(metrics._valid_filter(images[:, 0], rows), expected, rtol=1e-15, atol=1e-12)
    half = torch.tensor(metrics.MATLAB_HALF_KERNEL + metrics.MATLAB_HALF_KERNEL[::-1], dtype=torch.float64)
    strided = F.conv2d(F.conv2d(images[:, :1], half.view(1, 1, -1, 1), stride=(2, 1)), half.view(1, 1, 1, -1), stride=(1, 2))
    ours = metrics._shifted_sum(metrics._shifted_sum(images[:, :1], half.tolist(), -2, stride=2), half.tolist(), -1, stride=2)
    torch.testing.assert_close(ours, strided, rtol=1e-15, atol=1e-12)


def test_float32_faces_keep_the_digits_the_report_records():
    """The jobs measure float32 faces, and the audit report's tables print report.SIGNIFICANT_DIGITS digits.
    Each measure of float32 images stays within a tenth of a unit of the last of those digits of its
    float64 value, on faces with texture, flat and clipped areas, blur, JPEG blocks and low light; and
    an image's values do not depend on the batch it is measured in."""
    rng = np.random.default_rng(5)
    faces = [synthetic_face(i, size=384, degrade=i % 2 == 0) for i in range(6)] + [textured_face(i, size=384) for i in range(2)]
    patch = np.full((384, 384, 3), 128, np.uint8)
    patch[60:260, 80:280] = rng.integers(0, 256, (200, 200, 3))
    _, jpeg = cv2.imencode(".jpg", faces[1], [cv2.IMWRITE_JPEG_QUALITY, 10])
    faces += [
        patch,
        np.clip(faces[1].astype(np.int64) * 3 - 200, 0, 255).astype(np.uint8),
        faces[3] // 8,
        cv2.GaussianBlur(faces[5], (0, 0), 4),
        cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED),
        np.full((384, 384, 3), 90, np.uint8),  # flat: sharpness, noise and contrast 0, NIQE undefined
    ]
    single = as_batch(*faces).float()
    in_float32, in_float64 = metrics.no_reference(single), metrics.no_reference(single.double())
    for name in metrics.NO_REFERENCE:
        found, exact = in_float32[name].numpy(), in_float64[name].numpy()
        assert in_float32[name].dtype == torch.float64, name
        np.testing.assert_array_equal(np.isnan(found), np.isnan(exact), err_msg=name)
        found, exact = found[~np.isnan(exact)], exact[~np.isnan(exact)]
        unit = 10.0 ** (np.floor(np.log10(np.maximum(np.abs(exact), 1e-300))) + 1 - report.SIGNIFICANT_DIGITS)
        share = np.abs(found - exact) / unit
        assert share.max() < 0.1, (name, share.max())
    assert math.isnan(in_float32["niqe"][-1]) and in_float32["sharpness"][-1] == 0
    for size in (1, 3, 5):
        for start in range(0, len(faces), size):
            part = metrics.no_reference(single[start : start + size])
            for name, values in part.items():
                torch.testing.assert_close(values, in_float32[name][start : start + size], rtol=1e-12, atol=0, equal_nan=True, msg=name)


def test_aggd_fits_of_float32_values_sum_in_float64():
    """Summed in float32, a block's sums are off by about 1e-7 and move NIQE's fits by a table step now
    and then; summed in float64, only the float32 rounding of each value and product is left (1e-8)."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(400, 9216, generator=generator) * torch.rand(400, 1, generator=generator).add(0.2)
    values = torch.where(values < 0, 0.7 * values, values) ** 3
    single, double = metrics._aggd(values), metrics._aggd(values.double())
    for a, b in zip(single[1:], double[1:]):
        assert a.dtype == torch.float64
        assert ((a - b).abs() / b).max() < 5e-8
