"""LQ/HQ pair synthesis throughput: `degrade.degrade` (batched, torch) against a per-image OpenCV loop.

Both make the LQ image of the same clean synthetic faces with the same parameters, sampled as
the pairs job does (`sample_params(default_rng(pair_seed(0, id, 0, 0)), preset)`). The loop is
the straightforward way to write the CodeFormer degradation: `cv2.filter2D` with the float32
kernel, `cv2.resize` (INTER_LINEAR) down to int(512 // r), numpy noise from the same seed and
shape as `degrade.add_noise`, rounding to uint8 and `degrade.jpeg`, `cv2.resize` back, then
jitter and grey. Each method is timed with 1 thread (torch and OpenCV; the pairs job runs one
single-threaded degradation actor per core) and with all of them: median of --repeats runs
after a warm-up, in pairs/s. The max and mean abs difference between the two methods' LQ images
is printed too: close but not identical, as float summation order differs (FFT against OpenCV's
filter) and JPEG can turn a 1-level difference into more.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch

from codeformer_core import degrade
from codeformer_core.degrade import DegradeParams
from codeformer_core.samples import synthetic_face


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H,W,C) float in [0,1] -> uint8, rounded half to even as `degrade.to_uint8` does."""
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def loop_one(hq: np.ndarray, p: DegradeParams) -> np.ndarray:
    """One LQ image, the degradation written with OpenCV and numpy."""
    kernel = degrade.gaussian_kernel(p.kernel_size, p.sigma_x, p.sigma_y, p.theta).astype(np.float32)
    image = cv2.filter2D(hq.astype(np.float32) / 255, -1, kernel)
    small = int(degrade.SIZE // p.scale)
    image = cv2.resize(image, (small, small), interpolation=cv2.INTER_LINEAR)
    noise = np.random.default_rng(p.noise_seed).standard_normal((3, small, small), dtype=np.float32)
    image = np.clip(image + (noise * np.float32(p.noise_sigma / 255)).transpose(1, 2, 0), 0, 1)
    image = degrade.jpeg(to_uint8(image), p.jpeg_quality).astype(np.float32) / 255
    image = cv2.resize(image, (degrade.SIZE, degrade.SIZE), interpolation=cv2.INTER_LINEAR)
    if p.color_jitter:
        image = np.clip(image + np.float32(p.jitter_shift) / 255, 0, 1)
    if p.grey:
        image = np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    return to_uint8(image)


def loop(hq: list[np.ndarray], params: list[DegradeParams]) -> list[np.ndarray]:
    return [loop_one(image, p) for image, p in zip(hq, params)]


def ours(hq: list[np.ndarray], params: list[DegradeParams], batch_size: int) -> list[np.ndarray]:
    out = []
    for start in range(0, len(hq), batch_size):
        out += degrade.degrade(hq[start : start + batch_size], params[start : start + batch_size])
    return out


def timed(fn: Callable[[], list[np.ndarray]], repeats: int) -> tuple[float, list[np.ndarray]]:
    """Median wall seconds of `repeats` runs after a warm-up, and the warm-up's output."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="pairs per run (default 64)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per degrade call for ours (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up (default 3)")
    parser.add_argument("--preset", default="codeformer-paper", choices=sorted(degrade.PRESETS), help="parameter ranges (default codeformer-paper)")
    args = parser.parse_args()

    config = degrade.PRESETS[args.preset]
    hq = [synthetic_face(i, degrade=False) for i in range(args.images)]
    params = [
        degrade.sample_params(np.random.default_rng(degrade.pair_seed(0, f"synthetic_{i:04d}", 0, 0)), config)
        for i in range(args.images)
    ]
    all_threads = torch.get_num_threads()
    print(f"{args.images} pairs 512x512, preset {args.preset}, ours at batch {args.batch_size}, median of {args.repeats} runs")
    lq_ours: list[np.ndarray] = []
    lq_loop: list[np.ndarray] = []
    for threads in sorted({1, all_threads}):
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        ours_s, lq_ours = timed(lambda: ours(hq, params, args.batch_size), args.repeats)
        loop_s, lq_loop = timed(lambda: loop(hq, params), args.repeats)
        print(
            f"{threads} thread(s): ours {args.images / ours_s:.2f} pairs/s, OpenCV loop {args.images / loop_s:.2f} pairs/s,"
            f" ratio ours/loop {loop_s / ours_s:.2f}"
        )
    diff = np.abs(np.stack(lq_ours).astype(np.int16) - np.stack(lq_loop).astype(np.int16))
    print(f"LQ difference ours vs loop: max {diff.max()} grey levels, mean {diff.mean():.2e}")


if __name__ == "__main__":
    main()
