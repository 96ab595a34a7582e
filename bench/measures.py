"""The measure stage's arithmetic per face on one device: the seven no-reference metrics of a batch
of 512x512 faces, computed as the jobs do (float32 faces; see codeformer_core/metrics.py for the
arithmetic that stays float64), the restore job measuring both the input and the restored face.

Faces go to the device as uint8 and are scaled there, as measure_faces does. Printed per face:
the device's wall milliseconds (synchronised) and the host's core-milliseconds (this process's
CPU time over the same runs: what the host spends handing the work to the device). On a CPU
both are the CPU's; on a GPU node the second is what bench/host.py counts for the measure stage.

    python bench/measures.py [--device auto] [--batch 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from codeformer_core import metrics
from codeformer_core.restore import pick_device
from codeformer_core.samples import synthetic_face


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--batch", type=int, default=32, help="faces per batch (default 32)")
    p.add_argument("--repeats", type=int, default=5, help="timed batches after a warm-up (default 5)")
    args = p.parse_args()
    device = pick_device(args.device)
    faces = np.stack([synthetic_face(i % 16) for i in range(args.batch)])
    pinned = torch.from_numpy(faces).pin_memory() if device.type == "cuda" else torch.from_numpy(faces)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batches of {args.batch} faces, median of {args.repeats}")
    print("| metric | device ms per face | host core-ms per face |\n|---|---|---|")
    for names in [(n,) for n in metrics.NO_REFERENCE] + [metrics.NO_REFERENCE]:
        walls, cpus = [], []
        for i in range(args.repeats + 1):
            synchronise(device)
            wall, cpu = time.perf_counter(), time.process_time()
            x = pinned.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
            values = metrics.no_reference(x, names)
            [v.cpu() for v in values.values()]  # the values come back to the host, as the job writes them
            synchronise(device)
            if i:
                walls.append((time.perf_counter() - wall) / args.batch)
                cpus.append((time.process_time() - cpu) / args.batch)
        label = names[0] if len(names) == 1 else "all seven"
        print(f"| {label} | {1000 * statistics.median(walls):.3f} | {1000 * statistics.median(cpus):.3f} |")


if __name__ == "__main__":
    main()
