"""LQ/HQ pair synthesis throughput: `degrade.degrade` (torch) against a per-image OpenCV loop.

Both make the LQ image of the same clean synthetic faces with the same parameters, sampled as
the pairs job does (`sample_params(default_rng(pair_seed(0, id, 0, 0)), preset)`). The loop is
the straightforward way to write the CodeFormer degradation: `cv2.filter2D` with the float32
kernel, `cv2.resize` (INTER_LINEAR) down to int(512 // r), numpy noise from the same seed and
shape as `degrade.add_noise`, rounding to uint8 and `degrade.jpeg`, `cv2.resize` back, then
jitter and grey.

Timed, as median pairs/s of --repeats runs after a warm-up:
- one core: each method in this process with 1 thread (torch and OpenCV);
- the whole CPU: each method in one single-threaded process per core, the pairs split between
  them, which is how the pairs job runs (one degradation actor per core, torch pinned to 1
  thread); and the loop once more in this process with OpenCV's own threads, as a user would
  run it.
The max and mean abs difference between the two methods' LQ images is printed too: close but
not identical, as float summation order differs and JPEG can turn a 1-level difference into more.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
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
    noise = np.random.default_rng(p.noise_seed).standard_normal((small, small, 3), dtype=np.float32)
    image = np.clip(image + noise * np.float32(p.noise_sigma / 255), 0, 1)
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


def workload(images: int, preset: str) -> tuple[list[np.ndarray], list[DegradeParams]]:
    config = degrade.PRESETS[preset]
    hq = [synthetic_face(i, degrade=False) for i in range(images)]
    params = [
        degrade.sample_params(np.random.default_rng(degrade.pair_seed(0, f"synthetic_{i:04d}", 0, 0)), config)
        for i in range(images)
    ]
    return hq, params


_shard: tuple[list[np.ndarray], list[DegradeParams]] = ([], [])


def load_shard(images: int, preset: str, index: int, count: int) -> None:
    """Pool initializer: this worker's share of the workload, single-threaded."""
    global _shard
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    hq, params = workload(images, preset)
    _shard = (hq[index::count], params[index::count])


def run_shard(task: tuple[str, int]) -> int:
    method, batch_size = task
    hq, params = _shard
    return len(ours(hq, params, batch_size) if method == "ours" else loop(hq, params))


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall seconds of `repeats` runs after a warm-up, and the warm-up's result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def report(label: str, images: int, ours_s: float, loop_s: float) -> None:
    print(f"{label}: ours {images / ours_s:.2f} pairs/s, OpenCV loop {images / loop_s:.2f} pairs/s, ratio ours/loop {loop_s / ours_s:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="pairs per run (default 64)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per degrade call for ours (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up (default 3)")
    parser.add_argument("--preset", default="codeformer-paper", choices=sorted(degrade.PRESETS), help="parameter ranges (default codeformer-paper)")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    print(f"{args.images} pairs 512x512, preset {args.preset}, ours at batch {args.batch_size}, median of {args.repeats} runs")
    # Set before the workers start: numpy's BLAS and OpenMP read these once, and torch.set_num_threads
    # does not reach them (Ray sets OMP_NUM_THREADS in its workers the same way).
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    context = multiprocessing.get_context("spawn")

    def in_processes(method: str, count: int) -> float:
        pools = [context.Pool(1, load_shard, (args.images, args.preset, i, count)) for i in range(count)]

        def run() -> None:
            pending = [pool.apply_async(run_shard, ((method, args.batch_size),)) for pool in pools]
            assert sum(p.get() for p in pending) == args.images

        seconds, _ = timed(run, args.repeats)
        for pool in pools:
            pool.close()
        return seconds

    one = {method: in_processes(method, 1) for method in ("ours", "loop")}
    report("one core (1 single-threaded process each)", args.images, one["ours"], one["loop"])
    whole = {method: in_processes(method, cores) for method in ("ours", "loop")}
    report(f"whole CPU ({cores} single-threaded processes each)", args.images, whole["ours"], whole["loop"])
    hq, params = workload(args.images, args.preset)
    threaded_s, lq_loop = timed(lambda: loop(hq, params), args.repeats)
    report(f"whole CPU, ours as above, the loop in this process with OpenCV's {cv2.getNumThreads()} threads", args.images, whole["ours"], threaded_s)

    lq_ours = ours(hq, params, args.batch_size)
    diff = np.abs(np.stack(lq_ours).astype(np.int16) - np.stack(lq_loop).astype(np.int16))  # type: ignore[arg-type]
    print(f"LQ difference ours vs loop: max {diff.max()} grey levels, mean {diff.mean():.2e}")


if __name__ == "__main__":
    main()
