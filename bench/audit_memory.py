"""Driver peak memory and report size of the audit job against the number of inputs.

A cheap face source, so that no network and no costly metric dominates: small generated JPEGs
(--image-size px, default 64) with one face each, whose 5 landmarks come from a manifest of
exactly that many inputs (listing it is part of the measurement), so no detector runs; no
--restore; by default only the brightness and contrast metrics. Every face is still read,
decoded, aligned to 512x512, measured, thumbnailed, written to Parquet and summarised for the
report.

Each count runs the real job (`jobs.driver.main(jobs.audit.JOB)`) in a fresh Python process that starts its own
local Ray, into a fresh output folder. Driver peak: getrusage(RUSAGE_SELF).ru_maxrss of that
driver process alone (Ray's own processes and the actors are not in it). Run growth and
peak: the largest the job reports for the Ray workers that ran its Ray Data runs (how much a
worker grew during its run, and its peak resident memory then; a worker may have run Ray Data
tasks before, which its peak includes). The report size is report.html plus figures/.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from codeformer_core.align import FFHQ_TEMPLATE_512

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys
from jobs import audit, driver
rc = driver.main(audit.JOB, sys.argv[1:])
print(json.dumps({"rc": rc, "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def make_inputs(folder: Path, count: int, size: int) -> Path:
    """`count` size x size JPEGs of a face-like blob on noise, and a manifest with their landmarks."""
    rng = np.random.default_rng(0)
    landmarks = (FFHQ_TEMPLATE_512 * size / 512).reshape(-1)
    uris, faces = [], []
    for i in range(count):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        cv2.ellipse(image, (size // 2, size // 2), (size // 3, size * 2 // 5), 0, 0, 360, tuple(int(v) for v in rng.integers(80, 220, 3)), -1)
        path = folder / f"face_{i:06d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        uris.append(str(path))
        faces.append([(landmarks + rng.normal(0, size / 200, 10)).tolist()])
    manifest = folder / "manifest.parquet"
    pq.write_table(pa.table({"source_uri": uris, "landmarks": faces}), manifest)
    return manifest


def run(manifest: Path, output: Path, count: int, metrics: str, batch_size: int) -> dict:
    argv = ["--input", str(manifest), "--output", str(output), "--metrics", metrics, "--batch-size", str(batch_size)]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CHILD, *argv], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"the audit job failed for {count} inputs:\n{result.stderr[-3000:]}")
    child = json.loads(result.stdout.strip().splitlines()[-1])
    runs = [(float(g), float(p)) for g, p in re.findall(r"its Ray worker grew by (-?\d+) MiB, to (\d+) MiB", result.stderr)]
    report = [output / "report.html", *(output / "figures").iterdir()]
    faces = pq.read_table(output / "faces", columns=["face_index"]).num_rows
    return {
        "inputs": count,
        "faces": faces,
        "wall_s": wall,
        "driver_peak_rss_mib": child["peak_rss_kib"] / 1024,
        "runs": len(runs),
        "run_growth_mib": max(g for g, _ in runs),
        "run_peak_rss_mib": max(p for _, p in runs),
        "report_kib": sum(p.stat().st_size for p in report) / 1024,
        "report_files": len(report),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[200, 1000, 10000, 20000], help="input counts to run (default: 200 1000 10000 20000)")
    parser.add_argument("--metrics", default="brightness,contrast", help="the job's --metrics (default: brightness,contrast)")
    parser.add_argument("--batch-size", type=int, default=32, help="the job's --batch-size (default: 32)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the generated input images in px (default: 64)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        manifest = make_inputs(folder, max(args.counts), args.image_size)
        print(f"inputs: {args.image_size}x{args.image_size} JPEGs, one manifest face each; --metrics {args.metrics}, --batch-size {args.batch_size}")
        print(f"{'inputs':>8} {'faces':>8} {'wall s':>8} {'driver peak RSS MiB':>20} {'runs':>8} {'run growth MiB':>18} {'run peak RSS MiB':>20} {'report KiB':>11} {'files':>6}")
        for count in args.counts:
            own = folder / f"manifest_{count}.parquet"
            pq.write_table(pq.read_table(manifest).slice(0, count), own)
            r = run(own, Path(tmp) / f"out_{count}", count, args.metrics, args.batch_size)
            print(f"{r['inputs']:>8} {r['faces']:>8} {r['wall_s']:>8.1f} {r['driver_peak_rss_mib']:>20.1f} {r['runs']:>8} {r['run_growth_mib']:>18.0f} {r['run_peak_rss_mib']:>20.0f} {r['report_kib']:>11.1f} {r['report_files']:>6}", flush=True)


if __name__ == "__main__":
    main()
