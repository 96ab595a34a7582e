"""Face-like test images drawn from code: no photo, no licence, same pixels on every machine."""

from __future__ import annotations

import cv2
import numpy as np

from codeformer_core.align import FFHQ_TEMPLATE_512


def synthetic_face(seed: int, size: int = 512, degrade: bool = True) -> np.ndarray:
    """An aligned, face-like RGB uint8 image: skin oval, eyes, nose and mouth at the template points.

    With `degrade`, it is blurred, noised and JPEG-compressed, like a low-quality input.
    """
    rng = np.random.default_rng(seed)
    img = np.empty((512, 512, 3), np.uint8)
    img[:] = rng.integers(40, 200, size=3)
    skin = tuple(int(c) for c in rng.integers([150, 110, 90], [235, 190, 160]))
    hair = tuple(int(c) for c in rng.integers(10, 90, size=3))
    cv2.ellipse(img, (256, 250), (150, 215), 0, 180, 360, hair, -1)
    cv2.ellipse(img, (256, 290), (135, 175), 0, 0, 360, skin, -1)
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = FFHQ_TEMPLATE_512.round().astype(int)
    iris = tuple(int(c) for c in rng.integers(20, 120, size=3))
    for x, y in ((lx, ly), (rx, ry)):
        cv2.ellipse(img, (x, y), (26, 13), 0, 0, 360, (245, 245, 245), -1)
        cv2.circle(img, (x, y), 10, iris, -1)
        cv2.circle(img, (x, y), 4, (10, 10, 10), -1)
        cv2.ellipse(img, (x, y - 28), (30, 7), 0, 180, 360, hair, -1)
    cv2.line(img, (nx, ny - 50), (nx - 8, ny), tuple(int(c * 0.8) for c in skin), 3)
    cv2.ellipse(img, ((mlx + mrx) // 2, (mly + mry) // 2), ((mrx - mlx) // 2, 12), 0, 0, 180, (150, 60, 70), -1)
    if degrade:
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=float(rng.uniform(2, 4)))
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 60))])
        img = cv2.imdecode(jpg, cv2.IMREAD_COLOR)
    if size != 512:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img
