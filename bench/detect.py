"""Face detection throughput: our batched RetinaFace against facexlib's per-image loop.

Both run the same network (synthetic resnet50 weights, classification head scaled so that a
handful of boxes pass the 0.8 threshold, as in the parity tests) on the same images, rescaled
to a 640 short side as the official helper does. Prints images/s, median of --repeats runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np
import torch

from codeformer_core.detect import DetectConfig, Detector, build_retinaface, rescale_factor
from codeformer_core.samples import synthetic_face
from codeformer_core.weights import synthetic_state_dict

CPU = torch.device("cpu")


def images(count: int, height: int, width: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        img = np.full((height, width, 3), rng.integers(30, 220, 3), np.uint8)
        size = min(height, width) // 2
        img[:size, :size] = synthetic_face(i, size)
        out.append(img)
    return out


def per_image(net, batch: list[np.ndarray], input_size: int) -> None:
    """What FaceRestoreHelper.get_face_landmarks_5 does, one image at a time."""
    for rgb in batch:
        scale, h, w = rescale_factor(*rgb.shape[:2], input_size)
        resized = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (w, h), interpolation=cv2.INTER_LANCZOS4)
        with torch.no_grad():
            net.detect_faces(resized, 0.8, 0.4)


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="images per run (default 16)")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"), help="image size (default 480 640)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass for ours (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up (default 3)")
    args = parser.parse_args()

    net = build_retinaface("retinaface_resnet50", CPU)
    state_dict = synthetic_state_dict(net, 3)
    net.load_state_dict({k: v * 0.01 if k.startswith("ClassHead") else v for k, v in state_dict.items()})
    batch = images(args.images, *args.size)
    detector = Detector(net, DetectConfig(batch_size=args.batch_size), CPU)

    ours = timed(lambda: detector.detect(batch), args.repeats)
    loop = timed(lambda: per_image(net, batch, 640), args.repeats)
    print(f"{args.images} images {args.size[0]}x{args.size[1]} -> 640 short side, resnet50, fp32, {torch.get_num_threads()} threads")
    print(f"ours, batch {args.batch_size}: {args.images / ours:.2f} images/s")
    print(f"facexlib per-image loop : {args.images / loop:.2f} images/s")
    print(f"ratio: {loop / ours:.2f}")


if __name__ == "__main__":
    main()
