"""Video decode and encode throughput through PyAV (codeformer_core.video), on this machine.

A synthetic clip (moving gradient and bars, H.264 CRF 18, a keyframe every 250 frames, as x264's
default) of --seconds at --fps and --size is written once, then timed, as medians of --repeats:
- decode: every frame to RGB (`Sampling()`);
- sampled decode: 1 frame per second kept (`Sampling(fps=1)`): every frame is still decoded,
  only the kept ones are converted to RGB;
- a segment: the last --segment frames after a seek, as a worker resuming inside a video does;
- encode: the decoded frames back to H.264 CRF 18 (`encode`), as --write-video will.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from codeformer_core.video import Sampling, decode, encode, open_video, probe


def synthetic_frames(count: int, width: int, height: int) -> list[np.ndarray]:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    out = []
    for i in range(count):
        rgb = np.stack([(x + 3 * i) % 256 + 0 * y, (y + 2 * i) % 256 + 0 * x, (x + y + i) % 256], axis=2).astype(np.uint8)
        rgb[:, (7 * i) % width : (7 * i) % width + 16] = 255
        out.append(rgb)
    return out


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--size", default="1280x720")
    p.add_argument("--segment", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    width, height = map(int, args.size.split("x"))
    count = args.seconds * args.fps
    frames = synthetic_frames(count, width, height)
    with tempfile.TemporaryDirectory() as tmp:
        clip, again = str(Path(tmp) / "clip.mp4"), str(Path(tmp) / "again.mp4")
        encode(frames, args.fps, clip)
        with open_video(clip) as container:
            info = probe(container)
        print(f"clip: {info.width}x{info.height}, {info.frames} frames at {info.fps:g} fps, {info.codec}, {Path(clip).stat().st_size / 1e6:.1f} MB")

        def run(sampling: Sampling, start: int = 0) -> int:
            with open_video(clip) as container:
                return sum(1 for _ in decode(container, sampling, start))

        rows = [
            ("decode, every frame to RGB", count, median_seconds(lambda: run(Sampling()), args.repeats)),
            ("decode, 1 fps kept", count, median_seconds(lambda: run(Sampling(fps=1)), args.repeats)),
            (f"decode, last {args.segment} frames after a seek", args.segment, median_seconds(lambda: run(Sampling(), count - args.segment), args.repeats)),
            ("encode H.264 CRF 18", count, median_seconds(lambda: encode(frames, args.fps, again), args.repeats)),
        ]
    print("| step | frames | median s | frames/s |")
    print("|---|---|---|---|")
    for name, n, seconds in rows:
        print(f"| {name} | {n} | {seconds:.2f} | {n / seconds:.0f} |")


if __name__ == "__main__":
    main()
