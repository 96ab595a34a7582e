"""The degradation model: kernels, each stage's measurable effect, sampling statistics, determinism."""

import math

import cv2
import numpy as np
import pytest
import torch

from codeformer_core import degrade
from codeformer_core.degrade import PRESETS, DegradeParams
from codeformer_core.samples import synthetic_face

CPU = torch.device("cpu")


def covariance(kernel):
    half = kernel.shape[0] // 2
    ys, xs = np.mgrid[-half : half + 1, -half : half + 1]
    cxx, cyy, cxy = (kernel * xs * xs).sum(), (kernel * ys * ys).sum(), (kernel * xs * ys).sum()
    return np.array([[cxx, cxy], [cxy, cyy]])


@pytest.mark.parametrize("sx, sy, theta", [(1, 1, 0), (5, 5, 0), (15, 3, 0.7), (0.3, 8, -2.0)])
def test_kernels_sum_to_one(sx, sy, theta):
    assert degrade.gaussian_kernel(41, sx, sy, theta).sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.5, 6.0])
def test_isotropic_covariance_is_sigma_squared(sigma):
    """Sizes of at least 6.8 sigma + 1: cut at exactly +-3 sigma, a Gaussian loses 2.7% of its variance
    (the discrete kernel makes up for it only at small sigma), so 6 sigma + 1 alone cannot hold 2%."""
    size = 2 * math.ceil(3.4 * sigma) + 1
    cov = covariance(degrade.gaussian_kernel(size, sigma, sigma, 0.0))
    assert cov[0, 0] == pytest.approx(sigma**2, rel=0.02) and cov[1, 1] == pytest.approx(sigma**2, rel=0.02)
    assert abs(cov[0, 1]) < 1e-9


def test_rotation_turns_an_anisotropic_kernel():
    flat = degrade.gaussian_kernel(41, 4.0, 1.0, 0.0)
    turned = degrade.gaussian_kernel(41, 4.0, 1.0, math.pi / 2)
    np.testing.assert_allclose(turned, flat.T, atol=1e-12)
    theta = 0.6
    eigenvalues, eigenvectors = np.linalg.eigh(covariance(degrade.gaussian_kernel(41, 4.0, 1.0, theta)))
    major = eigenvectors[:, np.argmax(eigenvalues)]
    assert abs(abs(math.atan2(major[1], major[0])) - theta) < 0.01 or abs(abs(math.atan2(-major[1], -major[0])) - theta) < 0.01


def laplacian_variance(rgb):
    return cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()


def as_tensor(rgb):
    return degrade.from_uint8(rgb, CPU)


def test_blur_lowers_laplacian_variance_and_equals_filter2d():
    face = synthetic_face(1, degrade=False)
    kernel = degrade.gaussian_kernel(41, 3.0, 1.5, 0.4)
    blurred = degrade.blur(as_tensor(face).permute(2, 0, 1)[None], torch.from_numpy(kernel)[None])[0].permute(1, 2, 0)
    assert laplacian_variance(degrade.to_uint8(blurred)) < 0.5 * laplacian_variance(face)
    reference = cv2.filter2D(face.astype(np.float32) / 255, -1, kernel.astype(np.float32))
    np.testing.assert_allclose(blurred.numpy(), reference, atol=1e-5)


def test_resize_matches_opencv_both_ways():
    image = np.random.default_rng(0).random((512, 512, 3), dtype=np.float32)
    for size in (17, 200, 640):
        ours = degrade.resize(torch.from_numpy(image), size, size).numpy()
        np.testing.assert_allclose(ours, cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR), atol=1e-5)


@pytest.mark.parametrize("sx, sy, theta", [(4.0, 4.0, 0.0), (15.0, 1.0, 0.8), (2.0, 9.0, -2.5)])
def test_kernel_factors_rebuild_the_kernel(sx, sy, theta):
    kernel = degrade.gaussian_kernel(41, sx, sy, theta)
    cols, rows = degrade.kernel_factors(kernel)
    assert np.abs(np.einsum("mi,mj->ij", cols, rows) - kernel).sum() <= degrade.FACTOR_TOLERANCE
    assert (len(cols) == 1) == (sx == sy)


@pytest.mark.parametrize(
    "sx, sy, theta, size",
    [(4.0, 4.0, 0.0, 40), (12.0, 12.0, 0.0, 300), (6.0, 2.0, 0.5, 17), (3.0, 1.5, 0.4, 60), (12.0, 12.0, 0.0, 500), (15.0, 1.0, 0.8, 60)],
)
def test_blur_down_equals_filter2d_then_resize(sx, sy, theta, size):
    """Separable and factored kernels, and (the last two: too dear to factor at their size) the FFT path,
    all compute the plain definition."""
    face = synthetic_face(4, degrade=False)
    kernel = degrade.gaussian_kernel(41, sx, sy, theta)
    ours = degrade.blur_down(as_tensor(face), kernel, size).numpy()
    blurred = cv2.filter2D(face.astype(np.float32) / 255, -1, kernel.astype(np.float32))
    np.testing.assert_allclose(ours, cv2.resize(blurred, (size, size), interpolation=cv2.INTER_LINEAR), atol=2e-5)


@pytest.mark.parametrize("delta", [5.0, 20.0])
def test_noise_matches_delta_on_a_flat_image(delta):
    flat = torch.full((3, 256, 256), 0.5)
    noisy = degrade.add_noise(flat, delta, seed=3)
    assert float((noisy - flat).std() * 255) == pytest.approx(delta, rel=0.10)


@pytest.mark.parametrize("quality", [30, 75, 95])
def test_jpeg_is_opencvs_encoder_byte_for_byte(quality):
    face = synthetic_face(2, degrade=False)
    ok, expected = cv2.imencode(".jpg", cv2.cvtColor(face, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok and degrade.jpeg_encode(face, quality) == expected.tobytes()
    np.testing.assert_array_equal(degrade.jpeg(face, quality), cv2.cvtColor(cv2.imdecode(expected, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))


UNIFORM = {
    "sigma": lambda p: [p.sigma_x] + ([p.sigma_y] if p.kernel == "aniso" else []),
    "scale": lambda p: [p.scale],
    "noise": lambda p: [p.noise_sigma],
    "jpeg": lambda p: [p.jpeg_quality],
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_sampled_parameters_cover_each_range_uniformly(name):
    config = PRESETS[name]
    rng = np.random.default_rng(12345)
    params = [degrade.sample_params(rng, config) for _ in range(2000)]
    for field, values_of in UNIFORM.items():
        values = np.array([v for p in params for v in values_of(p)])
        low, high = getattr(config, field)
        assert low <= values.min() and values.max() <= high, field
        assert values.min() - low < 0.02 * (high - low) and high - values.max() < 0.02 * (high - low), field
        assert values.mean() == pytest.approx((low + high) / 2, rel=0.05), field
    iso = np.mean([p.kernel == "iso" for p in params])
    assert iso == pytest.approx(config.iso_prob, abs=0.05)
    thetas = np.array([p.theta for p in params if p.kernel == "aniso"])
    assert thetas.min() < -3.0 and thetas.max() > 3.0 and abs(thetas.mean()) < 0.2
    assert np.mean([p.color_jitter for p in params]) == pytest.approx(config.jitter_prob, abs=0.05)


def test_pair_parameters_depend_only_on_seed_and_identity():
    config = PRESETS["codeformer-paper"]
    first = degrade.sample_params(np.random.default_rng(degrade.pair_seed(7, "abc", 0, 1)), config)
    again = degrade.sample_params(np.random.default_rng(degrade.pair_seed(7, "abc", 0, 1)), config)
    other = degrade.sample_params(np.random.default_rng(degrade.pair_seed(7, "abc", 0, 2)), config)
    assert first == again and first != other


@pytest.fixture(scope="module")
def batch():
    config = PRESETS["gfpgan-v1"]  # jitter and grey included, small and large r
    faces = [synthetic_face(i, degrade=False) for i in range(8)]
    params = [degrade.sample_params(np.random.default_rng(degrade.pair_seed(1, str(i), 0, 0)), config) for i in range(8)]
    params[0] = DegradeParams(**{**params[0].__dict__, "color_jitter": True, "jitter_shift": (15.0, -10.0, 5.0)})
    params[1] = DegradeParams(**{**params[1].__dict__, "grey": True})
    return faces, params, degrade.degrade(faces, params, CPU)


def test_batch_composition_and_rebuilding_from_a_row_give_the_same_bytes(batch):
    faces, params, together = batch
    for face, p, lq in zip(faces, params, together):
        assert lq.shape == (512, 512, 3) and lq.dtype == np.uint8
        assert np.array_equal(degrade.apply(face, DegradeParams.from_row(p.to_row())), lq)
    assert all(np.array_equal(a, b) for a, b in zip(degrade.degrade(faces[::-1], params[::-1], CPU)[::-1], together))


def test_degradation_removes_detail_and_jitter_and_grey_show(batch):
    faces, params, lq = batch
    assert all(laplacian_variance(out) < laplacian_variance(face) for face, out in zip(faces, lq))
    assert np.array_equal(lq[1][..., 0], lq[1][..., 1]) and np.array_equal(lq[1][..., 1], lq[1][..., 2])


def test_bad_configs_are_explained():
    with pytest.raises(ValueError, match="sigma range"):
        degrade.config_from_mapping({"sigma": [5, 1]})
    with pytest.raises(ValueError, match="unknown degradation settings"):
        degrade.config_from_mapping({"blur": 3})
    with pytest.raises(ValueError, match="kernel_size"):
        degrade.config_from_mapping({"kernel_size": 40})
