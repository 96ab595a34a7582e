"""The seven no-reference metrics of float32 faces (the jobs' precision) against those of the same
faces in float64.

For each metric: how many significant digits the float32 value shares with the float64 one at
worst over the faces (-log10 of the largest relative difference), the largest difference as a
share of a unit of the last digit the report's tables print (report.SIGNIFICANT_DIGITS), and the
time per face of each precision (CPU: on one thread).

    python bench/metric_precision.py [--faces 32] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from codeformer_core import metrics, report
from codeformer_core.samples import synthetic_face


def faces_tensor(count: int, device: torch.device) -> torch.Tensor:
    """Half degraded, half clean synthetic 512x512 faces, (N, 3, H, W) in [0, 1]."""
    faces = np.stack([synthetic_face(seed, degrade=seed % 2 == 0) for seed in range(count)])
    return torch.from_numpy(faces).permute(0, 3, 1, 2).to(device).float().div(255)


def measured(x: torch.Tensor, batch: int) -> tuple[dict[str, np.ndarray], float]:
    """Every metric of `x`, in the precision of `x`, and the seconds per face it took."""
    values: dict[str, list] = {name: [] for name in metrics.NO_REFERENCE}
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        for name, v in metrics.no_reference(x[i : i + batch]).items():
            values[name].append(v.cpu().numpy())
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return {name: np.concatenate(v) for name, v in values.items()}, (time.perf_counter() - start) / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", type=int, default=32, help="synthetic faces, half of them degraded (default 32)")
    p.add_argument("--batch", type=int, default=8, help="faces per metrics call (default 8)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu, on one thread)")
    args = p.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    x = faces_tensor(args.faces, device)
    measured(x[: args.batch].double(), args.batch)  # warm-up
    measured(x[: args.batch], args.batch)
    exact, t64 = measured(x.double(), args.batch)
    single, t32 = measured(x, args.batch)
    print(f"{args.faces} synthetic 512x512 faces on {device}, torch {torch.__version__}; float64 {1000 * t64:.1f} ms per face, "
          f"float32 {1000 * t32:.1f} ms per face ({t64 / t32:.2f}x)")
    print(f"| metric | digits float32 shares with float64 (worst face) | largest difference, share of a unit of the "
          f"{report.SIGNIFICANT_DIGITS}th significant digit | value range |")
    print("|---|---|---|---|")
    for name in metrics.NO_REFERENCE:
        a, b = exact[name], single[name]
        relative = np.abs(a - b) / np.maximum(np.abs(a), np.finfo(np.float64).tiny)
        digits = -math.log10(relative.max()) if relative.max() > 0 else float("inf")
        unit = 10.0 ** (np.floor(np.log10(np.abs(a))) + 1 - report.SIGNIFICANT_DIGITS)
        print(f"| {name} | {digits:.1f} | {(np.abs(a - b) / unit).max():.4f} | {a.min():.4g} .. {a.max():.4g} |")

if __name__ == "__main__":
    main()
