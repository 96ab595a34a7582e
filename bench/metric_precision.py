"""The seven no-reference metrics in float32 against float64, the precision the tables record.

For each metric: how many significant digits the float32 value shares with the float64 one at
worst over the faces (-log10 of the largest relative difference), the largest absolute
difference, and the CPU time per face of each precision on one thread. float32 is had by handing
the metrics' arithmetic float32 images instead of float64 ones; this bench is the only place that
does so (`metrics._float64_images` is replaced here, nowhere else).

    python bench/metric_precision.py [--faces 32] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from codeformer_core import metrics
from codeformer_core.samples import synthetic_face


def faces_tensor(count: int, device: torch.device) -> torch.Tensor:
    """Half degraded, half clean synthetic 512x512 faces, (N, 3, H, W) in [0, 1]."""
    faces = np.stack([synthetic_face(seed, degrade=seed % 2 == 0) for seed in range(count)])
    return torch.from_numpy(faces).permute(0, 3, 1, 2).to(device).float().div(255)


def measured(x: torch.Tensor, dtype: torch.dtype, batch: int) -> tuple[dict[str, np.ndarray], float]:
    """Every metric of `x` with the arithmetic in `dtype`, and the seconds per face it took."""
    original = metrics._float64_images

    def in_dtype(images: torch.Tensor) -> torch.Tensor:
        return original(images).to(dtype)

    metrics._float64_images = in_dtype
    try:
        values: dict[str, list] = {name: [] for name in metrics.NO_REFERENCE}
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            for name, v in metrics.no_reference(x[i : i + batch]).items():
                values[name].append(v.double().cpu().numpy())
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / len(x)
    finally:
        metrics._float64_images = original
    return {name: np.concatenate(v) for name, v in values.items()}, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", type=int, default=32, help="synthetic faces, half of them degraded (default 32)")
    p.add_argument("--batch", type=int, default=8, help="faces per metrics call (default 8)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu, on one thread)")
    args = p.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    x = faces_tensor(args.faces, device)
    measured(x[: args.batch], torch.float64, args.batch)  # warm-up
    exact, t64 = measured(x, torch.float64, args.batch)
    single, t32 = measured(x, torch.float32, args.batch)
    print(f"{args.faces} synthetic 512x512 faces on {device}, torch {torch.__version__}; float64 {1000 * t64:.1f} ms per face, "
          f"float32 {1000 * t32:.1f} ms per face ({t64 / t32:.2f}x)")
    print("| metric | digits float32 shares with float64 (worst face) | largest absolute difference | value range |")
    print("|---|---|---|---|")
    for name in metrics.NO_REFERENCE:
        a, b = exact[name], single[name]
        relative = np.abs(a - b) / np.maximum(np.abs(a), np.finfo(np.float64).tiny)
        digits = -math.log10(relative.max()) if relative.max() > 0 else float("inf")
        print(f"| {name} | {digits:.1f} | {np.abs(a - b).max():.2e} | {a.min():.4g} .. {a.max():.4g} |")


if __name__ == "__main__":
    main()
