"""Image bytes <-> RGB uint8 arrays, with limits and a short reason for every rejection."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 100_000_000
PNG_COMPRESSION = 3

# cv2 with IMREAD_COLOR applies EXIF orientation, turns grey into 3 channels and drops alpha
# (as the official inference does); IMREAD_ANYDEPTH keeps 16-bit samples for exact scaling.
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH


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
        return Decoded("empty", error="file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
    except Image.DecompressionBombError as exc:
        return Decoded("too_large", error=str(exc))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return Decoded("decode_error", error=f"not a readable image (unknown format or damaged header): {type(exc).__name__}")
    if width * height > max_pixels:
        return Decoded(
            "too_large", error=f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
            width=width, height=height,
        )
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _IMREAD_FLAGS)
    if pixels is None or pixels.size == 0:
        return Decoded("decode_error", error="image data is corrupt or truncated", width=width, height=height)
    if pixels.dtype == np.uint16:
        pixels = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        return Decoded("decode_error", error=f"unsupported sample type {pixels.dtype}", width=width, height=height)
    rgb = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return Decoded("ok", rgb=rgb, width=rgb.shape[1], height=rgb.shape[0])


def encode_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of shape {rgb.shape}")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """PNG (or any format cv2 reads) written by `encode_png` -> RGB uint8."""
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
