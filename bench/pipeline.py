"""Restore job throughput against the model alone, at the same batch size, on this machine.

End to end: the restore job with its default flags (read, decode, restore actor, measure actor,
encode, Parquet write) on generated aligned faces in a local folder, run twice as a user runs it,
on a small and a large set. The rate is (large - small faces) / (large - small seconds): fixed
costs (Ray and actor start, model load, filling and draining the pipeline) cancel out; both wall
times are printed too, and the busy fraction of each actor stage that the large run's summary
prints (the restore actor's time in its calls over its time from first call to last).
Model only: `Restorer.restore` on the same crops, batch by batch, after one warm-up batch.
Pipeline efficiency = end-to-end faces/s / model-only faces/s. Synthetic weights; both run the
job's default speed settings for this machine (`Speed()`: fp32 with Winograd convolutions on
CPUs without AMX, bf16 on CPUs with AMX).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from codeformer_core.restore import Restorer, Speed
from codeformer_core.samples import synthetic_face
from codeformer_core.weights import build_codeformer, codeformer_weights


def end_to_end(folder: Path, output: Path, batch_size: int, limit: int) -> tuple[float, str]:
    """Wall seconds of the restore job on the first `limit` faces of `folder`, run as a user runs it,
    and the busy fraction of its actor stages as its summary prints it."""
    argv = ["--input", str(folder), "--output", str(output), "--aligned", "--synthetic-weights", "--batch-size", str(batch_size), "--limit", str(limit)]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "jobs.restore", *argv], capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"the restore job failed:\n{done.stderr[-3000:]}")
    busy = next((line.rsplit("): ", 1)[1] for line in done.stdout.splitlines() if line.startswith("busy fraction")), "not printed")
    return seconds, busy


def model_only(crops: np.ndarray, batch_size: int, threads: int) -> float:
    torch.set_num_threads(threads)
    state_dict, _ = codeformer_weights("synthetic:1")
    restorer = Restorer(build_codeformer(state_dict), torch.device("cpu"), Speed(batch_size=batch_size))
    times = []
    for i, start in enumerate(range(0, len(crops), batch_size)):
        t = time.perf_counter()
        restorer.restore(crops[start : start + batch_size], 0.5)
        if i:
            times.append((time.perf_counter() - t) / batch_size)
    return 1 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=4, help="faces in the small run (default 4)")
    parser.add_argument("--faces", type=int, default=12, help="faces in the large run (default 12)")
    parser.add_argument("--batch-size", type=int, default=1, help="faces per forward pass (default 1, the job's auto on CPUs)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        crops = np.stack([synthetic_face(i) for i in range(args.faces)])
        for i, face in enumerate(crops):
            cv2.imwrite(str(folder / f"face_{i:04d}.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
        threads = torch.get_num_threads()
        model_rate = model_only(crops, args.batch_size, threads)  # before Ray starts, which takes CPU of its own
        small, _ = end_to_end(folder, Path(tmp) / "small", args.batch_size, args.small)
        large, busy = end_to_end(folder, Path(tmp) / "large", args.batch_size, args.faces)
    job_rate = (args.faces - args.small) / (large - small)
    restorer = Restorer(build_codeformer(codeformer_weights("synthetic:1")[0]), torch.device("cpu"), Speed(batch_size=args.batch_size))
    print(f"batch {args.batch_size}, {restorer.precision} on CPU (Winograd {restorer.winograd}, channels_last {restorer.channels_last}), {threads} torch threads")
    print(f"end to end : {job_rate:.4f} faces/s ({args.small} faces in {small:.1f} s, {args.faces} in {large:.1f} s)")
    print(f"model only : {model_rate:.4f} faces/s")
    print(f"pipeline efficiency: {job_rate / model_rate:.3f}")
    print(f"busy fraction ({args.faces} faces): {busy}")


if __name__ == "__main__":
    main()
