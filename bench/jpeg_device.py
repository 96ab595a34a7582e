"""JPEG decode and encode of 512x512 faces on the GPU (nvJPEG through torchvision.io) against
OpenCV on one CPU core: the two codec steps that bench/host.py finds left on a GPU node's CPUs.

For each, per face: wall milliseconds (synchronised) and the host's core-milliseconds spent
before the synchronisation (what the CPU does to hand the work over; its wait is not counted).
Batches of --batch faces, median of --repeats after a warm-up.

    python bench/jpeg_device.py [--batch 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch
import torchvision.io

from codeformer_core.samples import synthetic_face


def timed(fn: Callable[[], object], sync: Callable[[], None], repeats: int, faces: int) -> tuple[float, float]:
    """(wall ms per face, host core-ms per face before the synchronisation)."""
    walls, cpus = [], []
    for i in range(repeats + 1):
        sync()
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        host = time.process_time() - cpu
        sync()
        if i:
            walls.append((time.perf_counter() - wall) / faces)
            cpus.append(host / faces)
    return 1000 * statistics.median(walls), 1000 * statistics.median(cpus)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="faces per batch (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="timed batches after a warm-up (default 5)")
    args = p.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    faces = [synthetic_face(i % 16) for i in range(args.batch)]
    files = [cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1] for f in faces]
    rows = [("OpenCV decode, one core", lambda: [cv2.imdecode(f, cv2.IMREAD_COLOR) for f in files], lambda: None),
            ("OpenCV encode q95, one core", lambda: [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95]) for f in faces], lambda: None)]
    if torch.cuda.is_available():
        device = torch.device("cuda")
        data = [torch.from_numpy(f.copy()) for f in files]
        chw = torch.from_numpy(np.stack(faces)).to(device).permute(0, 3, 1, 2).contiguous()
        sync = torch.cuda.synchronize
        rows += [("nvJPEG decode (torchvision.io, batched)", lambda: torchvision.io.decode_jpeg(data, device=device), sync),
                 ("nvJPEG encode q95 (torchvision.io, batched)", lambda: torchvision.io.encode_jpeg(list(chw), quality=95), sync)]
        name = torch.cuda.get_device_name(device)
    else:
        name = "no GPU"
    print(f"{name}, torch {torch.__version__}, torchvision {torchvision.__version__}, OpenCV {cv2.__version__}, batches of {args.batch} 512x512 faces")
    print("| step | wall ms per face | host core-ms per face |\n|---|---|---|")
    for label, fn, sync in rows:
        wall, host = timed(fn, sync, args.repeats, args.batch)
        print(f"| {label} | {wall:.3f} | {host:.3f} |")


if __name__ == "__main__":
    main()
