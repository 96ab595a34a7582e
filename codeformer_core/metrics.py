"""Image quality and face metrics. Pure functions.

Images are float tensors (N, 3, H, W), RGB in [0, 1], on any device. Every image metric returns a
float64 tensor of shape (N,) on that device, computed per image, so that an image's result does
not depend on the rest of its batch.

Precision: the no-reference measures do their per-pixel arithmetic in the precision of their input,
float64 for float64 images and float32 otherwise (the jobs' faces: half the memory traffic on a
device, and faster CPU kernels); their sums over an image accumulate in float64. The tables of the
audit report record four significant digits, and tests/unit/test_metrics.py holds each measure of
float32 images within a tenth of a unit of the fourth digit of its float64 value: a printed value
can change only next to a rounding boundary, and then by one in its last digit. The values the
jobs store, and that thresholds and dedup compare, differ from float64 ones from about the sixth
significant digit (bench/metric_precision.py). Where float32 would change the recorded digits the
arithmetic stays float64 whatever the input: NIQE's rounded luma, local moments (E[x^2] - E[x]^2
cancels) and statistics, and the full-reference PSNR and SSIM (no job records them; SSIM's
variances cancel the same way).

Two lumas are used, on the 0..255 scale:
- the Y of MATLAB's rgb2ycbcr (BT.601 studio range, 16..235) for PSNR/SSIM on "y" and for NIQE,
  as in BasicSR;
- full-range BT.601 luma 0.299 R + 0.587 G + 0.114 B (0..255, the Y of cv2.COLOR_RGB2GRAY) for the
  other no-reference measures, so black is 0, white 255, and noise added equally to R, G and B
  keeps its sigma.

Face facts and identity similarity are in face_metrics.py.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

YCBCR_Y_WEIGHTS = (65.481, 128.553, 24.966)  # MATLAB rgb2ycbcr, for R, G, B in [0, 1]; plus 16
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03

LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))
IMMERKAER = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))
JPEG_BLOCK = 8

NIQE_BLOCK = 96
# Pixel-minus-local-mean differences this small are rounding noise (exactly 0 in flat areas); see niqe().
NIQE_ROUNDING_NOISE = 1e-9
NIQE_PARAMS = Path(__file__).parent / "data" / "niqe_pris_params.npz"
# MATLAB imresize(img, 0.5) (bicubic, a = -0.5, antialiased) weighs the input pixels at d = -3.5 ... 3.5
# from an output centre by 0.5 * cubic(d / 2): the kernel is this half and its mirror image, and sums to 1.
MATLAB_HALF_KERNEL = (-0.01171875, -0.03515625, 0.11328125, 0.43359375)

def _images(x: Tensor, dtype: torch.dtype) -> Tensor:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(x.shape)}")
    return x.to(dtype)


def _working_dtype(x: Tensor) -> torch.dtype:
    """The no-reference measures' arithmetic: float64 for float64 images, float32 for any other."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _weighted_channels(x: Tensor, weights: tuple[float, float, float]) -> Tensor:
    """(N, 3, H, W) -> (N, H, W), the weighted sum of the channels."""
    # Not an einsum: in float32 that is a matrix product, which TF32 settings would round to 10 bits.
    return x[:, 0] * weights[0] + x[:, 1] * weights[1] + x[:, 2] * weights[2]


def ycbcr_y(x: Tensor) -> Tensor:
    """(N, H, W) float64 Y of MATLAB rgb2ycbcr on 0..255 (16..235), not rounded."""
    return 16.0 + _weighted_channels(_images(x, torch.float64), YCBCR_Y_WEIGHTS)


def luma(x: Tensor) -> Tensor:
    """(N, H, W) full-range BT.601 luma on 0..255, in the working precision of x."""
    return 255.0 * _weighted_channels(_images(x, _working_dtype(x)), LUMA_WEIGHTS)


def _in_space(x: Tensor, space: str) -> Tensor:
    """(N, C, H, W) on 0..255: the three RGB channels, or the single MATLAB Y channel."""
    if space == "rgb":
        return 255.0 * _images(x, torch.float64)
    if space == "y":
        return ycbcr_y(x)[:, None]
    raise ValueError(f"space must be 'rgb' or 'y', got {space!r}")


def _window(images: Tensor, dim: int, start: int, count: int, stride: int) -> Tensor:
    """`count` positions of the last (-1) or second-last (-2) dimension from `start`, every `stride`-th."""
    span = slice(start, start + stride * (count - 1) + 1, stride)
    return images[..., span, :] if dim == -2 else images[..., span]


def _shifted_sum(images: Tensor, taps: list[float], dim: int, stride: int = 1) -> Tensor:
    """Correlate `images` along `dim` (-1 or -2) with 1-D `taps` where they fit, every `stride`-th
    position: a sum of shifted slices, tap by tap. In float64 it is several times faster than
    conv2d, which has no fast float64 kernel on CPUs or GPUs, and sums in the same order."""
    count = (images.shape[dim] - len(taps)) // stride + 1
    out = _window(images, dim, 0, count, stride) * taps[0]
    for k, tap in enumerate(taps[1:], start=1):
        out.add_(_window(images, dim, k, count, stride), alpha=tap)
    return out


def _valid_filter(images: Tensor, rows: tuple[tuple[float, ...], ...]) -> Tensor:
    """Correlate each (N, H, W) image with a 2-D kernel at the positions where it fits (no padding)."""
    h, w = images.shape[1] - len(rows) + 1, images.shape[2] - len(rows[0]) + 1
    out = torch.zeros((images.shape[0], h, w), dtype=images.dtype, device=images.device)
    for i, row in enumerate(rows):
        for j, tap in enumerate(row):
            if tap:
                out.add_(images[:, i : i + h, j : j + w], alpha=tap)
    return out


def psnr(x: Tensor, y: Tensor, space: str = "rgb") -> Tensor:
    """PSNR in dB with data range 255 (images scaled by 255, not rounded), on RGB or MATLAB Y.

    Identical images give +inf.
    """
    a, b = _in_space(x, space), _in_space(y, space)
    mse = (a - b).square().mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(255.0**2 / mse)


def _gaussian(size: int, sigma: float, like: Tensor) -> Tensor:
    """1-D Gaussian of `size` taps, normalised to sum 1; the 2-D window is its outer product with itself."""
    t = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def _separable_filter(images: Tensor, taps: Tensor) -> Tensor:
    """Correlate each channel of (N, C, H, W) with the outer product of 1-D `taps`, at valid positions only."""
    values = taps.tolist()
    return _shifted_sum(_shifted_sum(images, values, -2), values, -1)


def ssim(x: Tensor, y: Tensor, space: str = "rgb") -> Tensor:
    """SSIM (Wang et al. 2004) as the reference MATLAB ssim_index computes it.

    11x11 Gaussian window with sigma 1.5, normalised to sum 1; K1 = 0.01, K2 = 0.03, L = 255; the SSIM
    map at the 'valid' window positions only (no padding), averaged; on RGB, the mean over the three
    channels. Images must be at least 11x11.
    """
    a, b = _in_space(x, space), _in_space(y, space)
    taps = _gaussian(SSIM_WINDOW, SSIM_SIGMA, a)

    def local_mean(t: Tensor) -> Tensor:
        return _separable_filter(t, taps)

    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a**2
    var_b = local_mean(b * b) - mu_b**2
    cov = local_mean(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def _total(images: Tensor) -> Tensor:
    """(N, H, W) -> (N,) sums accumulated in float64: float32 sums of one image change in the last place
    with how the CPU threads split them, and so with the batch's size."""
    return images.sum(dim=(1, 2), dtype=torch.float64)


def _mean(images: Tensor) -> Tensor:
    return _total(images) / (images.shape[1] * images.shape[2])


def _variance(images: Tensor) -> Tensor:
    """(N, H, W) -> (N,) population variances, from the deviations from each image's mean, with _total's sums."""
    mean = _mean(images).to(images.dtype)[:, None, None]
    return _mean((images - mean).square())


def _sharpness(lum: Tensor) -> Tensor:
    return _variance(_valid_filter(lum, LAPLACIAN))


def _noise_level(lum: Tensor) -> Tensor:
    residual = _valid_filter(lum, IMMERKAER).abs()
    count = residual.shape[1] * residual.shape[2]
    return math.sqrt(math.pi / 2) / (6 * count) * _total(residual)


def _blockiness(lum: Tensor) -> Tensor:
    steps = (lum[:, :, 1:] - lum[:, :, :-1]).abs(), (lum[:, 1:, :] - lum[:, :-1, :]).abs()
    h, w = lum.shape[1:]
    across_cols = torch.arange(1, w, device=lum.device) % JPEG_BLOCK == 0
    across_rows = torch.arange(1, h, device=lum.device) % JPEG_BLOCK == 0
    on_grid = _total(steps[0][:, :, across_cols]) + _total(steps[1][:, across_rows, :])
    everywhere = _total(steps[0]) + _total(steps[1])
    n_grid = h * int(across_cols.sum()) + w * int(across_rows.sum())
    n_all = h * (w - 1) + w * (h - 1)
    eps = 1e-9
    return (on_grid / n_grid + eps) / ((everywhere - on_grid) / (n_all - n_grid) + eps)


def sharpness(x: Tensor) -> Tensor:
    """Variance of the 3x3 Laplacian [[0,1,0],[1,-4,1],[0,1,0]] of the luma, over the valid region."""
    return _sharpness(luma(x))


def noise_level(x: Tensor) -> Tensor:
    """Noise sigma of the luma on 0..255, by Immerkaer (1996), "Fast noise variance estimation".

    sigma = sqrt(pi / 2) / (6 (W - 2)(H - 2)) * sum |I * M| over the valid region,
    M = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]; no edge exclusion, so strong edges raise it a little.
    """
    return _noise_level(luma(x))


def blockiness(x: Tensor) -> Tensor:
    """JPEG 8x8 blocking of the luma: the mean absolute step between neighbouring pixels across the 8-pixel
    block grid (columns and rows 8k-1 | 8k), divided by the mean absolute step everywhere else.

    1.0 means no blocking; it grows as JPEG quality falls. A flat image gives 1.0.
    """
    return _blockiness(luma(x))


def brightness(x: Tensor) -> Tensor:
    """Mean luma, 0..255."""
    return _mean(luma(x))


def contrast(x: Tensor) -> Tensor:
    """RMS contrast: the (population) standard deviation of the luma, 0..255."""
    return _variance(luma(x)).sqrt()


def colourfulness(x: Tensor) -> Tensor:
    """Hasler & Suesstrunk (2003) M on 0..255 RGB: rg = R - G, yb = (R + G) / 2 - B,
    M = sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mu_rg^2 + mu_yb^2), with population standard deviations."""
    r, g, b = (255.0 * _images(x, _working_dtype(x))).unbind(dim=1)
    rg, yb = r - g, (r + g) / 2 - b
    spread = torch.sqrt(_variance(rg) + _variance(yb))
    centre = torch.sqrt(_mean(rg) ** 2 + _mean(yb) ** 2)
    return spread + 0.3 * centre


# NIQE (Mittal, Soundararajan & Bovik 2013). The algorithm follows BasicSR's basicsr/metrics/niqe.py
# (Apache-2.0), itself a port of the authors' MATLAB release, batched here in torch.


@functools.cache
def _niqe_params() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu_pris_param (36,), cov_pris_param (36, 36), gaussian_window (7, 7)); see data/README.md."""
    with np.load(NIQE_PARAMS) as params:
        return params["mu_pris_param"][0], params["cov_pris_param"], params["gaussian_window"]


def _mscn(img: Tensor, taps: Tensor) -> Tensor:
    """Mean-subtracted contrast-normalised coefficients of (N, 1, H, W), edges replicated ('nearest')."""
    pad = taps.shape[0] // 2

    def local_mean(t: Tensor) -> Tensor:
        return _separable_filter(F.pad(t, (pad, pad, pad, pad), mode="replicate"), taps)

    mu = local_mean(img)
    sigma = (local_mean(img * img) - mu**2).abs().sqrt()
    deviation = img - mu
    return torch.where(deviation.abs() < NIQE_ROUNDING_NOISE, 0.0, deviation) / (sigma + 1)


def _matlab_half(img: Tensor) -> Tensor:
    """MATLAB imresize(img, 0.5) with antialiasing, for (N, 1, H, W) with even H and W: symmetric edges."""
    k = list(MATLAB_HALF_KERNEL + MATLAB_HALF_KERNEL[::-1])
    img = torch.cat([img[:, :, :3].flip(2), img, img[:, :, -3:].flip(2)], dim=2)
    img = torch.cat([img[:, :, :, :3].flip(3), img, img[:, :, :, -3:].flip(3)], dim=3)
    return _shifted_sum(_shifted_sum(img, k, -2, stride=2), k, -1, stride=2)


def _gamma_ratio(a: Tensor, b: Tensor) -> Tensor:
    """Gamma(a) / Gamma(b) for positive a, b."""
    return torch.exp(torch.lgamma(a) - torch.lgamma(b))


def _nearest_index(table: Tensor, values: Tensor) -> Tensor:
    """Index of the entry of the increasing `table` nearest to each value (the lower one on a tie, like an
    argmin of the squared differences), 0 for NaN."""
    upper = torch.searchsorted(table, values.contiguous()).clamp(1, table.shape[0] - 1)
    lower = upper - 1
    index = torch.where((table[upper] - values) ** 2 < (table[lower] - values) ** 2, upper, lower)
    return torch.where(values.isnan(), 0, index)


@functools.cache
def _aggd_table(device: torch.device) -> tuple[Tensor, Tensor]:
    """The tabulated AGGD shapes 0.2, 0.201, ... 10 and their r(shape), float64 on `device`."""
    shapes = torch.as_tensor(np.arange(0.2, 10.001, 0.001), dtype=torch.float64, device=device)
    inverse = 1 / shapes
    return shapes, torch.exp(2 * torch.lgamma(2 * inverse) - torch.lgamma(inverse) - torch.lgamma(3 * inverse))


def _aggd(values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric generalised Gaussian fit (alpha, beta_left, beta_right) over the last dimension, in
    float64. The sums over the values accumulate in float64 whatever the values' precision: float32
    sums land near a midpoint between tabulated shapes often enough to move a fit by a table step
    (0.001), which moved NIQE by up to 1.5e-5 of its value on 18 test faces.

    Empty sides give NaN betas, and then alpha is the first tabulated shape, 0.2, as in BasicSR.
    """
    shapes, r_table = _aggd_table(values.device)
    squares = values.square()
    left, right = values < 0, values > 0
    left_squares = (squares * left).sum(-1, dtype=torch.float64)
    right_squares = (squares * right).sum(-1, dtype=torch.float64)
    left_std, right_std = (left_squares / left.sum(-1)).sqrt(), (right_squares / right.sum(-1)).sqrt()
    g = left_std / right_std
    r_hat = values.abs().mean(-1, dtype=torch.float64) ** 2 / ((left_squares + right_squares) / values.shape[-1])
    r_norm = r_hat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    alpha = shapes[_nearest_index(r_table, r_norm)]
    scale = _gamma_ratio(1 / alpha, 3 / alpha).sqrt()
    return alpha, left_std * scale, right_std * scale


def _niqe_features(mscn: Tensor, block: int) -> Tensor:
    """(N, 1, H, W) MSCN -> (N, blocks, 18) float64: AGGD fits of each block and of its four neighbour products."""
    n = mscn.shape[0]
    blocks = mscn.unfold(2, block, block).unfold(3, block, block).reshape(n, -1, block, block)
    alpha, beta_l, beta_r = _aggd(blocks.flatten(-2))
    features = [alpha, (beta_l + beta_r) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        products = blocks * torch.roll(blocks, shift, dims=(-2, -1))
        alpha, beta_l, beta_r = _aggd(products.flatten(-2))
        features += [alpha, (beta_r - beta_l) * _gamma_ratio(2 / alpha, 1 / alpha), beta_l, beta_r]
    return torch.stack(features, dim=-1)


def niqe(x: Tensor) -> Tensor:
    """NIQE, lower is better, on the rounded MATLAB Y channel, 96x96 blocks without overlap (the image is
    cropped to whole blocks), no border crop, with the authors' pristine model (LIVE, UT Austin).

    The luma, its local moments and the final statistics are float64, as in MATLAB; the block fits take
    the working precision's values (float32 for float32 images) and sum them in float64. BasicSR works wholly in float32, which
    moves results by about 1e-4 on textured images. Pixel-minus-local-mean differences under NIQE_ROUNDING_NOISE are set to 0, their
    exact value: in flat areas (clipped, JPEG-flattened or border-filled pixels) the reference codes
    keep rounding residues whose signs, which depend on the filter's summation order, then decide
    which side of the AGGD fits those pixels fall on. On images with flat areas this can differ from
    BasicSR by a few tenths, and does not depend on how a device sums.

    Images must be at least 96x96. An image with fewer than two blocks that have all their features
    finite (e.g. a flat one) gives NaN.
    """
    y = ycbcr_y(x).round()
    h, w = (size // NIQE_BLOCK * NIQE_BLOCK for size in y.shape[1:])
    if h == 0 or w == 0:
        raise ValueError(f"NIQE needs images of at least {NIQE_BLOCK}x{NIQE_BLOCK}, got {tuple(y.shape[1:])}")
    mu_pris, cov_pris, window = (torch.as_tensor(p, dtype=y.dtype, device=y.device) for p in _niqe_params())
    # The window is MATLAB's fspecial('gaussian', 7, 7/6), the outer product of its normalised middle row.
    centre = window.shape[0] // 2
    taps = window[centre] / window[centre, centre].sqrt()
    img = y[:, None, :h, :w]
    working = _working_dtype(x)
    scale1 = _niqe_features(_mscn(img, taps).to(working), NIQE_BLOCK)
    scale2 = _niqe_features(_mscn(_matlab_half(img), taps).to(working), NIQE_BLOCK // 2)
    features = torch.cat([scale1, scale2], dim=-1)

    mu = torch.nanmean(features, dim=1)
    finite = ~features.isnan().any(dim=-1, keepdim=True)
    count = finite.sum(dim=1, keepdim=True)
    clean = torch.where(finite, features, 0.0)
    centred = torch.where(finite, clean - clean.sum(dim=1, keepdim=True) / count, 0.0)
    cov = centred.transpose(1, 2) @ centred / (count - 1)
    pooled = (cov_pris + cov) / 2
    usable = pooled.isfinite().all(dim=(1, 2)) & mu.isfinite().all(dim=1)
    # BasicSR takes d' P^-1 d with a pseudo-inverse, an SVD per face. P is positive definite (the pristine
    # covariance's eigenvalues are 7e-6 .. 1.1, and the image's covariance adds a semi-definite matrix), so
    # a Cholesky factor gives the same number (to 1e-11 here) for a fraction of the work.
    factor, failed = torch.linalg.cholesky_ex(torch.where(usable[:, None, None], pooled, cov_pris))
    d = mu_pris - mu
    quality = torch.linalg.solve_triangular(factor, d[..., None], upper=False)[..., 0].norm(dim=-1)
    return torch.where(usable & (failed == 0), quality, torch.nan)


NO_REFERENCE = ("sharpness", "noise", "blockiness", "brightness", "contrast", "colourfulness", "niqe")


def no_reference(x: Tensor, names: Collection[str] = NO_REFERENCE) -> dict[str, Tensor]:
    """The no-reference measures `names` (all by default) of a batch, each (N,) float64, in NO_REFERENCE order;
    the arithmetic in the working precision of x (see the module's docstring)."""
    unknown = set(names) - set(NO_REFERENCE)
    if unknown:
        raise ValueError(f"unknown no-reference metrics {sorted(unknown)}; known: {', '.join(NO_REFERENCE)}")
    lum = luma(x)
    measures = {
        "sharpness": lambda: _sharpness(lum),
        "noise": lambda: _noise_level(lum),
        "blockiness": lambda: _blockiness(lum),
        "brightness": lambda: _mean(lum),
        "contrast": lambda: _variance(lum).sqrt(),
        "colourfulness": lambda: colourfulness(x),
        "niqe": lambda: niqe(x),
    }
    return {name: measures[name]() for name in NO_REFERENCE if name in names}
