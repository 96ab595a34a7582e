"""Detection and restoration in separate actor pools, or both in one actor: the restore job on
whole images in each layout, on this machine.

Each image is 640x480 with one generated face. Synthetic weights: the random RetinaFace passes
thousands of boxes, so `--max-faces 1` keeps exactly one face per image. Each layout runs the
job on a small and a large set; its rate is (large - small) images / (large - small) seconds,
so Ray start, actor start and model loading cancel out. Prints images/s per layout and the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
from detect import images
from pipeline import end_to_end

from jobs import driver, restore


def run(folder: Path, output: Path, layout: str, limit: int, batch_size: int) -> float:
    argv = ["--input", str(folder), "--output", str(output), "--synthetic-weights", "--max-faces", "1",
            "--detect-layout", layout, "--batch-size", str(batch_size), "--detect-batch-size", str(batch_size),
            "--limit", str(limit)]
    return end_to_end(argv, limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=2, help="images in the small run (default 2)")
    parser.add_argument("--images", type=int, default=6, help="images in the large run (default 6)")
    parser.add_argument("--batch-size", type=int, default=2, help="images per detector batch and faces per restore batch (default 2)")
    args = parser.parse_args()

    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for i, image in enumerate(images(args.images, 480, 640)):
            cv2.imwrite(str(folder / f"scene_{i:04d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        driver.start_ray(None)
        for layout in restore.LAYOUTS:
            small = run(folder, Path(tmp) / f"{layout}_small", layout, args.small, args.batch_size)
            large = run(folder, Path(tmp) / f"{layout}_large", layout, args.images, args.batch_size)
            rates[layout] = (args.images - args.small) / (large - small)
            print(f"{layout:8s}: {rates[layout]:.4f} images/s ({args.small} images in {small:.1f} s, {args.images} in {large:.1f} s)", flush=True)
    print(f"fused / separate: {rates['fused'] / rates['separate']:.3f}")


if __name__ == "__main__":
    main()
