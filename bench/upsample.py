"""Real-ESRGAN x2 on this machine: one aligned face (the --face-upsample path) and one 640x360
frame (the --bg-upsampler path), whole and in the default tiles (400 pixels, 40 of context).

Median seconds of --repeats runs after a warm-up, with torch on every core; synthetic weights,
which cost the same arithmetic as the official ones. The tiled output's largest difference from
the whole pass is printed too.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np
import torch

from codeformer_core.samples import synthetic_face
from codeformer_core.upsample import DEFAULT_TILE, TILE_PAD, Upsampler


def median_seconds(upsampler: Upsampler, image: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    out = upsampler.upsample(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        upsampler.upsample(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = Upsampler.from_weights(2, device, synthetic_seed=1)[0].net
    images = {"face 512x512": synthetic_face(1), "frame 640x360": cv2.resize(synthetic_face(2), (640, 360))}
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    for name, image in images.items():
        whole_s, whole = median_seconds(Upsampler(net, 2, device, tile=0), image, args.repeats)
        tiled_s, tiled = median_seconds(Upsampler(net, 2, device, tile=DEFAULT_TILE, pad=TILE_PAD), image, args.repeats)
        diff = int(np.abs(whole.astype(int) - tiled.astype(int)).max())
        print(f"| {name} | {whole_s:.2f} s | {tiled_s:.2f} s | {tiled_s / whole_s:.2f}x | {diff} |")


if __name__ == "__main__":
    main()
