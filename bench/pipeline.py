"""Restore job throughput against the model alone, at the same batch size, on this machine.

End to end: the restore job's Ray Data plan (read, decode, restore actor, PNG encode, Parquet
write) on generated aligned faces in a local folder. Its steady rate is measured from the first
committed batch to the last, so Ray start-up and model loading (reported apart) do not count.
Model only: `Restorer.restore` on the same crops, batch by batch, after one warm-up batch.
Pipeline efficiency = end-to-end faces/s / model-only faces/s. Synthetic weights.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from codeformer_core.restore import Restorer
from codeformer_core.samples import synthetic_face
from codeformer_core.weights import build_codeformer, codeformer_weights
from jobs import restore


def end_to_end(folder: Path, output: Path, batch_size: int, faces: int) -> tuple[float, float]:
    """(steady faces/s, seconds before the first batch was committed)."""
    cfg = restore.config_from_args(
        ["--input", str(folder), "--output", str(output), "--aligned", "--synthetic-weights", "--batch-size", str(batch_size)]
    )
    start = time.perf_counter()
    uris, weights, _ = restore.preflight(cfg)
    restore.start_ray(None)
    ds = restore.plan(cfg, uris, weights, restore.run_record(cfg, weights))
    stamps = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for n in batch["faces"]:
            stamps.append((time.perf_counter(), int(n)))
    first_t, first_n = stamps[0]
    last_t = stamps[-1][0]
    assert sum(n for _, n in stamps) == faces
    return (faces - first_n) / (last_t - first_t), first_t - start


def model_only(crops: np.ndarray, batch_size: int, threads: int) -> float:
    torch.set_num_threads(threads)
    state_dict, _ = codeformer_weights("synthetic:1")
    restorer = Restorer(build_codeformer(state_dict), torch.device("cpu"), batch_size)
    times = []
    for i, start in enumerate(range(0, len(crops), batch_size)):
        t = time.perf_counter()
        restorer.restore(crops[start : start + batch_size], 0.5)
        if i:
            times.append((time.perf_counter() - t) / batch_size)
    return 1 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=16, help="aligned faces to restore (default 16)")
    parser.add_argument("--batch-size", type=int, default=4, help="faces per forward pass (default 4)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        crops = np.stack([synthetic_face(i) for i in range(args.faces)])
        for i, face in enumerate(crops):
            cv2.imwrite(str(folder / f"face_{i:04d}.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
        job_rate, warmup = end_to_end(folder, Path(tmp) / "out", args.batch_size, args.faces)
    threads = torch.get_num_threads()
    model_rate = model_only(crops, args.batch_size, threads)
    print(f"batch {args.batch_size}, {args.faces} faces, fp32 on CPU, {threads} torch threads")
    print(f"end to end : {job_rate:.4f} faces/s (steady; {warmup:.1f} s from start to the first committed batch)")
    print(f"model only : {model_rate:.4f} faces/s")
    print(f"pipeline efficiency: {job_rate / model_rate:.3f}")


if __name__ == "__main__":
    main()
