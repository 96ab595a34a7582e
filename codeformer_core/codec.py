"""Image bytes <-> RGB uint8 arrays, with limits and a short reason for every rejection."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from codeformer_core.statuses import DECODE_ERROR, EMPTY, OK, TOO_LARGE

DEFAULT_MAX_PIXELS = 100_000_000
# zlib level 1: on 512x512 faces about 1.4x faster to write than level 3 for files about 13% larger (docs/BENCHMARKS.md).
PNG_COMPRESSION = 1
FORMATS = ("png", "jpeg", "webp")
SUFFIXES = {"png": "png", "jpeg": "jpg", "webp": "webp"}

# cv2 with IMREAD_COLOR_RGB applies EXIF orientation, turns grey into 3 channels and drops alpha
# (as the official inference's IMREAD_COLOR does), in RGB order straight from the decoder;
# IMREAD_ANYDEPTH keeps 16-bit samples for exact scaling.
_IMREAD_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_ANYDEPTH


@dataclass(frozen=True)
class Decoded:
    """`rgb` is set exactly when `status` is 'ok'; otherwise `error` says why."""

    status: str
    rgb: np.ndarray | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Bytes of a jpg/png/webp/bmp file -> RGB uint8 (H, W, 3), EXIF orientation applied.

    The header is read first: an image over `max_pixels` is rejected before it is decoded.
    """
    if not data:
        return Decoded(EMPTY, error="file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
    except Image.DecompressionBombError as exc:
        return Decoded(TOO_LARGE, error=str(exc))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return Decoded(DECODE_ERROR, error=f"not a readable image (unknown format or damaged header): {type(exc).__name__}")
    if width * height > max_pixels:
        return Decoded(
            TOO_LARGE, error=f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
            width=width, height=height,
        )
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), _IMREAD_FLAGS)
    if rgb is None or rgb.size == 0:
        return Decoded(DECODE_ERROR, error="image data is corrupt or truncated", width=width, height=height)
    if rgb.dtype == np.uint16:
        rgb = ((rgb.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif rgb.dtype != np.uint8:
        return Decoded(DECODE_ERROR, error=f"unsupported sample type {rgb.dtype}", width=width, height=height)
    return Decoded(OK, rgb=rgb, width=rgb.shape[1], height=rgb.shape[0])


@dataclass(frozen=True)
class Encoding:
    """How images are stored: lossless PNG, or JPEG or WebP at `quality` (1..100)."""

    format: str = "png"
    quality: int = 95

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"image format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"image quality must be 1..100, got {self.quality}")

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.format]

    @property
    def options(self) -> list[int]:
        if self.format == "png":
            return [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]
        return [cv2.IMWRITE_JPEG_QUALITY if self.format == "jpeg" else cv2.IMWRITE_WEBP_QUALITY, self.quality]


PNG = Encoding()


def encode(rgb: np.ndarray, encoding: Encoding = PNG) -> bytes:
    """RGB uint8 (H, W, 3) -> the bytes of an image file as `encoding` says."""
    ok, buf = cv2.imencode(f".{encoding.suffix}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), encoding.options)
    if not ok:
        raise ValueError(f"{encoding.format} encoding failed for an array of shape {rgb.shape}")
    return buf.tobytes()
