"""Decoding with limits: every rejection has a short reason, odd formats become RGB uint8; encoding as asked."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from codeformer_core.codec import Encoding, decode_image, encode
from codeformer_core.samples import synthetic_face
from tests.helpers import decode_png


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, "PNG")
    return buf.getvalue()


def test_empty_file():
    d = decode_image(b"")
    assert (d.status, d.rgb) == ("empty", None) and "0 bytes" in d.error


def test_garbage_is_a_decode_error():
    d = decode_image(b"this is not an image at all")
    assert d.status == "decode_error" and d.rgb is None and d.error


def test_truncated_jpeg_body_is_a_decode_error():
    ok, jpg = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))
    d = decode_image(jpg.tobytes()[:200])
    assert d.status == "decode_error"


def test_oversized_image_is_rejected_from_its_header():
    d = decode_image(png_bytes(np.zeros((30, 40, 3), np.uint8)), max_pixels=1000)
    assert d.status == "too_large" and d.rgb is None
    assert (d.width, d.height) == (40, 30) and "1200" in d.error


def test_grey_becomes_rgb():
    d = decode_image(png_bytes(np.full((8, 9), 77, np.uint8), "L"))
    assert d.status == "ok" and d.rgb.shape == (8, 9, 3) and (d.rgb == 77).all()


def test_alpha_is_dropped_like_the_official_reader():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    d = decode_image(png_bytes(rgba, "RGBA"))
    assert d.rgb.shape == (8, 8, 3) and (d.rgb[..., 0] == 200).all() and (d.rgb[..., 1:] == 0).all()


def test_16_bit_is_scaled_to_8_bit():
    grey16 = np.array([[0, 257, 65535, 32896]], np.uint16)
    ok, data = cv2.imencode(".png", grey16)
    d = decode_image(data.tobytes())
    assert d.rgb.dtype == np.uint8 and d.rgb[0, :, 0].tolist() == [0, 1, 255, 128]


def test_exif_orientation_is_applied():
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, :10] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    d = decode_image(buf.getvalue())
    assert (d.width, d.height) == (10, 20)
    assert d.rgb[:10].mean() > 200 and d.rgb[10:].mean() < 50  # white half now on top


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp"])
def test_each_format_decodes_to_rgb(ext):
    bgr = np.zeros((16, 16, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    ok, data = cv2.imencode(ext, bgr)
    d = decode_image(data.tobytes())
    assert d.status == "ok" and d.rgb[8, 8, 0] > 240 and d.rgb[8, 8, 2] < 15


def test_png_round_trip_is_lossless():
    rgb = np.random.default_rng(0).integers(0, 256, (32, 24, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(encode(rgb)), rgb)


@pytest.mark.parametrize("image_format", ["jpeg", "webp"])
def test_lossy_formats_keep_a_face_close_and_smaller_at_a_lower_quality(image_format):
    face = synthetic_face(4)  # textured, as faces are: PNG cannot shrink it much
    high, low = encode(face, Encoding(image_format, 95)), encode(face, Encoding(image_format, 40))
    assert len(low) < len(high) < len(encode(face)) / 3
    assert np.abs(decode_png(high).astype(int) - face).mean() < 3


def test_an_encoding_outside_the_formats_or_qualities_is_refused():
    with pytest.raises(ValueError, match="image format"):
        Encoding("gif")
    with pytest.raises(ValueError, match="quality"):
        Encoding("jpeg", 0)
