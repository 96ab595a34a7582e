"""The CodeFormer degradation model (paper section 4.1) for LQ/HQ training pairs.

    LQ = resize_back( JPEG_q( downsample_r( HQ * k_sigma ) + n_delta ) )

in that order, then optional colour jitter and greyscale as in the official training data
code. Parameters are sampled from a `numpy.random.Generator` into a frozen `DegradeParams`;
`degrade` is a pure function of the image and its parameters, and batches many images.

How each stage is computed (documented because it decides reproducibility):
- blur: correlation with the normalised kernel, borders reflected without repeating the edge
  (OpenCV's BORDER_REFLECT_101, `cv2.filter2D`'s default);
- resizes: bilinear with half-pixel centres, the formula of `cv2.resize(..., INTER_LINEAR)` on
  float images, to int(512 / r) pixels and back to 512;
- the blur and the downsampling are computed together (`blur_down`): the kernel is factored into
  separable terms (one for isotropic kernels) and only the pixels the downsampling reads are
  blurred, as products of banded matrices; a kernel with many terms at a large size falls back
  to a whole-image FFT blur. Both agree with filter2D-then-resize within 2e-5. A grouped 41x41
  convolution would cost 1.3 G multiply-adds per image, 10-100 times as much;
- noise: Gaussian, sigma given on the 0..255 scale, drawn by numpy from the parameters' own
  `noise_seed` (so it is the same on any device), then clipped to [0, 1];
- JPEG: the image is rounded to uint8 and coded by OpenCV's encoder at quality q, on the CPU;
- jitter adds one shift per channel (0..255 scale) and clips; grey uses the BT.601 weights of
  `cv2.COLOR_RGB2GRAY`; the result is rounded to uint8.
Every image is computed on its own numbers, so results do not depend on batch composition.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from codeformer_core.settings import read_mapping

SIZE = 512
FFT_SIZE = 576  # >= 512 + 41 - 1 for the default kernel, and a fast length (2^6 * 3^2)
GREY_WEIGHTS = (0.299, 0.587, 0.114)
FACTOR_TOLERANCE = 1e-6
FFT_COST = 3e8  # multiply-adds; about what a 576x576 FFT blur of 3 channels costs, on CPU


@dataclass(frozen=True)
class DegradeConfig:
    """Ranges parameters are drawn from, uniformly; probabilities of the optional stages."""

    name: str
    kernel_size: int = 41
    iso_prob: float = 0.5  # isotropic kernels, else anisotropic with a rotation in [-pi, pi]
    sigma: tuple[float, float] = (1.0, 15.0)
    scale: tuple[float, float] = (1.0, 30.0)  # r, the downsampling factor
    noise: tuple[float, float] = (0.0, 20.0)  # delta, on the 0..255 scale
    jpeg: tuple[int, int] = (30, 90)  # q, integers, both ends included
    jitter_prob: float = 0.0
    jitter_shift: float = 20.0  # each channel shifted by up to this, on the 0..255 scale
    grey_prob: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.kernel_size < 3 or self.kernel_size % 2 == 0 or self.kernel_size > FFT_SIZE - SIZE + 1:
            problems.append(f"kernel_size must be odd, between 3 and {FFT_SIZE - SIZE + 1}")
        for name, low, high in (("sigma", 1e-3, math.inf), ("scale", 0.5, SIZE), ("noise", 0, 255), ("jpeg", 1, 100)):
            lo, hi = getattr(self, name)
            if not low <= lo <= hi <= high:
                problems.append(f"{name} range must satisfy {low} <= low <= high <= {high}, got [{lo}, {hi}]")
        for name in ("iso_prob", "jitter_prob", "grey_prob"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be between 0 and 1")
        if self.jitter_shift < 0:
            problems.append("jitter_shift must be 0 or more")
        if problems:
            raise ValueError(f"degradation config {self.name!r}: " + "; ".join(problems))


PRESETS = {
    # the ranges of the paper, section 4.1, with the official kernel settings
    "codeformer-paper": DegradeConfig("codeformer-paper"),
    # options/CodeFormer_stage2.yml of the official repository
    "codeformer-stage2": DegradeConfig("codeformer-stage2", scale=(4.0, 30.0), jpeg=(30, 80)),
    # options/train_gfpgan_v1.yml of GFPGAN (its torch brightness/contrast/hue jitter is not included)
    "gfpgan-v1": DegradeConfig(
        "gfpgan-v1", sigma=(0.1, 10.0), scale=(0.8, 8.0), jpeg=(60, 100), jitter_prob=0.3, grey_prob=0.01
    ),
}


def config_from_mapping(values: Mapping[str, object], name: str = "custom") -> DegradeConfig:
    """A config from JSON/YAML-style values; unknown keys are an error, missing ones take the paper's."""
    known = {f.name for f in fields(DegradeConfig)} - {"name"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown degradation settings {unknown}; known: {sorted(known)}")
    ranges = {"sigma", "scale", "noise", "jpeg"}
    converted = {}
    for key, value in values.items():
        if key in ranges:
            if not isinstance(value, Sequence) or len(value) != 2:
                raise ValueError(f"{key} must be a [low, high] pair, got {value!r}")
            cast = int if key == "jpeg" else float
            converted[key] = (cast(value[0]), cast(value[1]))
        else:
            converted[key] = int(value) if key == "kernel_size" else float(value)  # type: ignore[arg-type]
    return replace(PRESETS["codeformer-paper"], name=name, **converted)


def load_config(path: str | Path) -> DegradeConfig:
    """A custom config from a .json, .yaml or .yml file of `config_from_mapping` keys."""
    return config_from_mapping(read_mapping(path))


@dataclass(frozen=True)
class DegradeParams:
    """Everything needed to rebuild one LQ image from its HQ image."""

    kernel: str  # "iso" or "aniso"
    kernel_size: int
    sigma_x: float
    sigma_y: float
    theta: float  # radians
    scale: float
    noise_sigma: float
    jpeg_quality: int
    color_jitter: bool
    jitter_shift: tuple[float, float, float]  # RGB, 0..255 scale; zeros without jitter
    grey: bool
    noise_seed: int

    def to_row(self) -> dict:
        return {**asdict(self), "jitter_shift": list(self.jitter_shift)}

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> DegradeParams:
        values = {f.name: row[f.name] for f in fields(cls)}
        values["jitter_shift"] = tuple(float(v) for v in values["jitter_shift"])  # type: ignore[union-attr]
        return cls(**values)  # type: ignore[arg-type]


def pair_seed(seed: int, image_id: str, face_index: int, pair_index: int) -> int:
    """The seed of one pair: a function of the global seed and the pair's identity, never of worker order."""
    digest = hashlib.sha256(f"{seed}/{image_id}/{face_index}/{pair_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # fits int64


def sample_params(rng: np.random.Generator, config: DegradeConfig) -> DegradeParams:
    iso = rng.uniform() < config.iso_prob
    sigma_x = rng.uniform(*config.sigma)
    sigma_y, theta = (sigma_x, 0.0) if iso else (rng.uniform(*config.sigma), rng.uniform(-math.pi, math.pi))
    scale = rng.uniform(*config.scale)
    noise = rng.uniform(*config.noise)
    quality = int(rng.integers(config.jpeg[0], config.jpeg[1], endpoint=True))
    jitter = bool(rng.uniform() < config.jitter_prob)
    shift = tuple(float(v) for v in rng.uniform(-config.jitter_shift, config.jitter_shift, 3)) if jitter else (0.0, 0.0, 0.0)
    grey = bool(rng.uniform() < config.grey_prob)
    return DegradeParams(
        kernel="iso" if iso else "aniso",
        kernel_size=config.kernel_size,
        sigma_x=float(sigma_x),
        sigma_y=float(sigma_y),
        theta=float(theta),
        scale=float(scale),
        noise_sigma=float(noise),
        jpeg_quality=quality,
        color_jitter=jitter,
        jitter_shift=shift,  # type: ignore[arg-type]
        grey=grey,
        noise_seed=int(rng.integers(2**63)),
    )


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Bivariate Gaussian, (size, size) float64 summing to 1: covariance R diag(sx^2, sy^2) R^T, R a
    rotation by theta (counter-clockwise with x right and y down, as image rows run)."""
    half = size // 2
    ys, xs = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    inverse = np.linalg.inv(rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T)
    points = np.stack([xs, ys], axis=-1)
    kernel = np.exp(-0.5 * np.einsum("...i,ij,...j->...", points, inverse, points))
    return kernel / kernel.sum()


def blur(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) float images, (B,k,k) kernels -> each image correlated with its kernel, reflect-101 borders."""
    _, _, height, width = images.shape
    pad = kernels.shape[-1] // 2
    n = (max(FFT_SIZE, height + 2 * pad), max(FFT_SIZE, width + 2 * pad))
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    flipped = torch.flip(kernels, dims=(-2, -1)).to(images.dtype)
    spectrum = torch.fft.rfft2(padded, s=n) * torch.fft.rfft2(flipped, s=n).unsqueeze(1)
    full = torch.fft.irfft2(spectrum, s=n)
    return full[..., 2 * pad : 2 * pad + height, 2 * pad : 2 * pad + width]


def linear_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weight of bilinear resampling with half-pixel centres, clamped at the edges as OpenCV does."""
    position = (np.arange(target) + 0.5) * (source / target) - 0.5
    low = np.floor(position).astype(np.int64)
    weight = position - low
    under, over = low < 0, low >= source - 1
    low[under], weight[under] = 0, 0.0
    low[over], weight[over] = source - 1, 0.0
    return low, np.minimum(low + 1, source - 1), weight


def band_rows(taps: np.ndarray, size: int, rows: np.ndarray) -> np.ndarray:
    """(k, len(rows), size): rows `rows` of the matrices correlating a length-`size` signal with each of the
    (k, n) `taps`, borders reflected without repeating the edge (BORDER_REFLECT_101)."""
    k, n = taps.shape
    columns = rows[:, None] + np.arange(n) - n // 2
    columns = np.abs(columns)
    columns = np.where(columns > size - 1, 2 * (size - 1) - columns, columns)
    out = np.zeros((k, len(rows), size))
    which = np.arange(k)[:, None, None]
    np.add.at(out, (which, np.arange(len(rows))[None, :, None], columns[None]), taps[:, None, :])
    return out


def blur_resize_matrices(taps: np.ndarray, source: int, target: int) -> np.ndarray:
    """(k, target, source): correlation with each of the (k, n) `taps`, then bilinear resizing to `target`."""
    low, high, weight = linear_taps(source, target)
    return (1 - weight)[:, None] * band_rows(taps, source, low) + weight[:, None] * band_rows(taps, source, high)


def kernel_factors(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column and row taps, (k, n) each, whose outer products sum to `kernel` within FACTOR_TOLERANCE
    (L1, so the largest error they add to an image in [0, 1]); k is 1 for separable kernels."""
    u, s, vt = np.linalg.svd(kernel)
    cols = (u * s).T
    partial = np.zeros_like(kernel)
    for rank in range(1, len(s) + 1):
        partial += np.outer(cols[rank - 1], vt[rank - 1])
        if np.abs(kernel - partial).sum() <= FACTOR_TOLERANCE:
            break
    return cols[:rank], vt[:rank]


def row_blocks(matrices: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Runs of consecutive rows of banded (k, s, H) matrices, each with the columns it reads:
    (start, stop, first, end). A run spans at most twice the widest band, so products skip most zeros."""
    reads = (matrices != 0).any(axis=0)
    first = reads.argmax(axis=1)
    end = reads.shape[1] - reads[:, ::-1].argmax(axis=1)
    limit = 2 * int((end - first).max())
    blocks, start = [], 0
    for stop in range(1, len(first) + 1):
        if stop == len(first) or end[stop] - first[start] > limit:
            blocks.append((start, stop, int(first[start]), int(end[stop - 1])))
            start = stop
    return blocks


def sandwich(left: np.ndarray, image: torch.Tensor, right: np.ndarray) -> torch.Tensor:
    """The sum over m of left[m] @ image[..., c] @ right[m].T for each channel c: (k,s,H), (H,W,C), (k,t,W) -> (s,t,C),
    for banded `left`: the first product runs block by block over the rows of `left` (see `row_blocks`),
    the second sums over m too."""
    k, s, height = left.shape
    _, width, channels = image.shape
    t = right.shape[1]
    pixels = image.reshape(height, width * channels)
    by_row = torch.from_numpy(left.transpose(1, 0, 2).astype(np.float32)).to(image.device, image.dtype)
    rows = image.new_empty(s, k, width * channels)
    for start, stop, first, end in row_blocks(left):
        block = by_row[start:stop, :, first:end].reshape((stop - start) * k, end - first)
        torch.mm(block, pixels[first:end], out=rows[start:stop].view((stop - start) * k, -1))
    rows = rows.view(s, k, width, channels).permute(0, 3, 1, 2).reshape(s * channels, k * width)
    columns = torch.from_numpy(right.transpose(0, 2, 1).reshape(k * width, t).astype(np.float32)).to(image.device, image.dtype)
    return torch.mm(rows, columns).view(s, channels, t).transpose(1, 2)


def resize_rows(image: torch.Tensor, height: int) -> torch.Tensor:
    """Bilinear resizing of the first axis only, whole rows at a time."""
    low, high, weight = (torch.from_numpy(a).to(image.device) for a in linear_taps(image.shape[0], height))
    rows = image.reshape(image.shape[0], -1)
    resized = torch.lerp(rows.index_select(0, low), rows.index_select(0, high), weight.to(image.dtype)[:, None])
    return resized.view(height, *image.shape[1:])


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H,W,C) float -> (height,width,C), bilinear like cv2.resize(..., INTER_LINEAR) on float images.
    Columns are resized as the rows of the transpose; the smaller way round goes first."""
    if height <= image.shape[0]:
        return resize_rows(resize_rows(image, height).transpose(0, 1), width).transpose(0, 1).contiguous()
    return resize_rows(resize_rows(image.transpose(0, 1), width).transpose(0, 1), height)


def blur_down(image: torch.Tensor, kernel: np.ndarray, size: int) -> torch.Tensor:
    """(H,W,C) -> (size,size,C): `blur` with `kernel`, then `resize`, computing only the pixels the resize reads.

    The kernel is factored into k separable terms, so that the blur and the resize become k pairs of
    banded matrices, applied by `sandwich`. Where that would cost more than FFT_COST multiply-adds
    (large k and large `size`), the image is blurred whole by FFT and then resized. Both paths agree
    with the plain definition within 1e-5."""
    cols, rows = kernel_factors(kernel)
    height, width, channels = image.shape
    band = min(height, 2 * (kernel.shape[0] + 1))
    cost = len(cols) * size * channels * width * (band + size)
    if cost > FFT_COST:
        blurred = blur(image.permute(2, 0, 1)[None], torch.from_numpy(kernel)[None].to(image.device))[0]
        return resize(blurred.permute(1, 2, 0), size, size)
    return sandwich(blur_resize_matrices(cols, height, size), image, blur_resize_matrices(rows, width, size))


def add_noise(image: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """Gaussian noise of `sigma` (0..255 scale) from numpy's generator seeded with `seed`, clipped to [0,1]."""
    noise = np.random.default_rng(seed).standard_normal(tuple(image.shape), dtype=np.float32) * np.float32(sigma / 255)
    return (image + torch.from_numpy(noise).to(image.device)).clamp_(0, 1)


def jpeg_encode(rgb: np.ndarray, quality: int) -> bytes:
    """OpenCV's JPEG encoder at `quality`, on an RGB uint8 image."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("OpenCV could not encode the image as JPEG")
    return data.tobytes()


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """An RGB uint8 image after a JPEG round trip at `quality`."""
    decoded = cv2.imdecode(np.frombuffer(jpeg_encode(rgb, quality), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(H,W,C) float in [0,1] -> uint8, rounded half to even."""
    return image.mul(255).round_().clamp_(0, 255).to(torch.uint8).contiguous().cpu().numpy()


def from_uint8(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H,W,C) uint8 -> float in [0,1] on `device`."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).to(device).float().div_(255)


def degrade(hq: Sequence[np.ndarray], params: Sequence[DegradeParams], device: torch.device | None = None) -> list[np.ndarray]:
    """LQ images (512x512x3 uint8 RGB) for HQ images (512x512x3 uint8 RGB) and their parameters, on `device`."""
    if len(hq) != len(params):
        raise ValueError(f"{len(hq)} images and {len(params)} parameter sets")
    if not hq:
        return []
    device = device or torch.device("cpu")
    for image in hq:
        if image.shape != (SIZE, SIZE, 3) or image.dtype != np.uint8:
            raise ValueError(f"HQ images must be {SIZE}x{SIZE}x3 uint8, got {image.shape} {image.dtype}")
    batch = torch.from_numpy(np.stack(hq))
    if device.type == "cuda":
        batch = batch.pin_memory()
    images = batch.to(device, non_blocking=True)
    out = []
    with torch.inference_mode():
        for image, p in zip(images, params):
            image = image.float().div_(255)
            small = int(SIZE // p.scale)
            kernel = gaussian_kernel(p.kernel_size, p.sigma_x, p.sigma_y, p.theta)
            lq = add_noise(blur_down(image, kernel, small), p.noise_sigma, p.noise_seed)
            lq = from_uint8(jpeg(to_uint8(lq), p.jpeg_quality), device)
            lq = resize(lq, SIZE, SIZE)
            if p.color_jitter:
                lq = (lq + torch.tensor(p.jitter_shift, device=device).div(255)).clamp_(0, 1)
            if p.grey:
                lq = (torch.tensor(GREY_WEIGHTS, device=device) * lq).sum(-1, keepdim=True).expand(-1, -1, 3)
            out.append(to_uint8(lq))
    return out


def apply(hq_uint8_rgb: np.ndarray, params: DegradeParams, device: torch.device | None = None) -> np.ndarray:
    """One LQ image; the same bytes as `degrade` gives for it in any batch."""
    return degrade([hq_uint8_rgb], [params], device)[0]
