"""What the commit design costs at scale: the driver's memory against the manifest's size, the files
a thousand inputs make, and a rerun with nothing left to do.

    .venv/bin/python bench/scale.py driver [--counts 10000 1000000 10000000]
    .venv/bin/python bench/scale.py inline [--counts 10000 1000000]
    .venv/bin/python bench/scale.py files
    .venv/bin/python bench/scale.py rerun [--count 100000]
    .venv/bin/python bench/scale.py shards [--repeats 3]

driver: a Parquet manifest of N unique URIs (1% of rows repeated, in row groups of 64k) is taken
by the audit job's driver, in a fresh Python process, through everything it does before the run:
the output's lock, the streaming listing into the output (with the repeats dropped), the
preflight, reading the markers and planning the pending shards. What the driver holds during the
run grows with the shards, not the inputs (a dict of pending shards; the pipeline runs in a Ray
worker of its own). Peak: getrusage(RUSAGE_SELF).ru_maxrss of that process.

inline: the same, for a Parquet file of N images inline (a 200-byte `jpg` cell each, in row groups
of 64k, and a `caption` column), listed as is and with --keep-columns caption: the image bytes are
not read at listing, the kept column is.

files: the audit job (--aligned --metrics sharpness) on 1,000 64x64 JPEGs; files per table.

rerun: the audit job on N inputs that fail to decode (10-byte files named .jpg: the cheapest
input that still gets its row and its shard), then the same command again; the second run's wall
time, against `python -c "import jobs.audit"` (Python and the job's imports). Ray is not started
when nothing is left to do.

shards: what windows used to cost. The audit job on 200 64x64 JPEGs in 4 shards of 50 against
one shard of 200, alternately, each into a fresh output; medians of the wall times. Shards are
committed one by one, but all go through one Ray Data run, so the actors start once either way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
DRIVER = """
import json, resource, sys, time
from collections import Counter
from jobs import audit, driver, listing
from jobs.lock import OutputLock
start = time.monotonic()
args = driver.build_parser(audit.JOB).parse_args(sys.argv[1:])
common = driver.Common.from_args(args)
cfg = audit.JOB.configure(args, common)
lock = OutputLock(common.output)
lock.acquire()
inputs, run, resume = driver.prepare(audit.JOB, common, cfg, lock)
pending = {k: inputs.shard_rows(k) for k in range(inputs.shards) if k not in resume.done}
lock.release()
print(json.dumps({"rows": inputs.rows, "shards": len(pending), "seconds": time.monotonic() - start,
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def manifest(path: Path, count: int) -> Path:
    """`count` unique URIs, 1% of them repeated once, written 64k rows at a time."""
    schema = pa.schema([pa.field("uri", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, count, 65536):
            n = min(65536, count - start)
            uris = [f"/data/corpus/{i // 1000:05d}/{i:09d}.jpg" for i in range(start, start + n)]
            writer.write_table(pa.table({"uri": uris + uris[: n // 100]}, schema=schema))
    return path


def inline_images(path: Path, count: int) -> Path:
    """`count` rows of a 200-byte image cell and a caption, written 64k rows at a time."""
    schema = pa.schema([pa.field("jpg", pa.binary()), pa.field("caption", pa.string())])
    cell = bytes(range(200))
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, count, 65536):
            n = min(65536, count - start)
            writer.write_table(pa.table({"jpg": [cell] * n, "caption": [f"a face, row {i}" for i in range(start, start + n)]}, schema=schema))
    return path


def driver(counts: list[int], inline: bool = False) -> None:
    print(f"{'input rows':>14} {'inputs':>10} {'shards':>7} {'flags':>22} {'driver s':>9} {'driver peak RSS MiB':>20}")
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        for count in counts:
            m = (inline_images if inline else manifest)(Path(tmp) / f"m{count}.parquet", count)
            for flags in (["--keep-columns", "caption"], []) if inline else ([],):
                out = Path(tmp) / f"out{count}{len(flags)}"
                argv = ["--input", str(m), "--output", str(out), "--aligned", "--metrics", "sharpness", *flags]
                result = subprocess.run([sys.executable, "-c", DRIVER, *argv], cwd=ROOT, capture_output=True, text=True)
                if result.returncode:
                    raise SystemExit(result.stderr[-3000:])
                r = json.loads(result.stdout.strip().splitlines()[-1])
                print(f"{pq.read_metadata(m).num_rows:>14} {r['rows']:>10} {r['shards']:>7} {' '.join(flags) or '-':>22} {r['seconds']:>9.1f} "
                      f"{r['peak_rss_kib'] / 1024:>20.1f}", flush=True)


def audit(inputs: Path, out: Path, *extra: str) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "jobs.audit", "--input", str(inputs), "--output", str(out), "--aligned", "--metrics", "sharpness", *extra],
        cwd=ROOT, capture_output=True, text=True,
    )
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return time.perf_counter() - start, result.stderr


def small_jpegs(folder: Path, count: int) -> Path:
    import cv2
    import numpy as np

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return folder


def shards(repeats: int) -> None:
    import statistics

    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        inputs = small_jpegs(Path(tmp) / "in", 200)
        times: dict[int, list[float]] = {50: [], 200: []}
        for r in range(repeats):
            for size in times:
                seconds, _ = audit(inputs, Path(tmp) / f"out{size}_{r}", "--shard-size", str(size))
                times[size].append(seconds)
        many, one = statistics.median(times[50]), statistics.median(times[200])
        print(f"200 inputs: 4 shards of 50 {many:.1f} s, 1 shard of 200 {one:.1f} s (medians of {repeats}); ratio {many / one:.3f}")
        print("all runs:", {k: [round(t, 1) for t in v] for k, v in times.items()})


def files() -> None:
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        inputs = small_jpegs(Path(tmp) / "in", 1000)
        seconds, _ = audit(inputs, Path(tmp) / "out")
        counts = {t: len(list((Path(tmp) / "out" / t).glob("*.parquet"))) for t in ("images", "faces")}
        print(f"1000 inputs, audit --aligned --metrics sharpness: {seconds:.1f} s; Parquet files per table: {counts}")


def rerun(count: int) -> None:
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        inputs = Path(tmp) / "in"
        for i in range(count):
            folder = inputs / f"{i // 1000:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:07d}.jpg").write_bytes(b"not a jpeg")
        out = Path(tmp) / "out"
        first, _ = audit(inputs, out, "--batch-size", "1000")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import jobs.audit"], cwd=ROOT, check=True)
        imports = time.perf_counter() - start
        again, log = audit(inputs, out, "--batch-size", "1000")
        done = next(line for line in log.splitlines() if "already done" in line)
        print(f"{count} inputs: first run {first:.1f} s; rerun {again:.1f} s ({done}); python and the job's imports {imports:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    d = sub.add_parser("driver")
    d.add_argument("--counts", type=int, nargs="+", default=[10_000, 1_000_000, 10_000_000])
    i = sub.add_parser("inline")
    i.add_argument("--counts", type=int, nargs="+", default=[10_000, 1_000_000])
    sub.add_parser("files")
    r = sub.add_parser("rerun")
    r.add_argument("--count", type=int, default=100_000)
    sh = sub.add_parser("shards")
    sh.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.what in ("driver", "inline"):
        driver(args.counts, args.what == "inline")
    elif args.what == "files":
        files()
    elif args.what == "shards":
        shards(args.repeats)
    else:
        rerun(args.count)


if __name__ == "__main__":
    main()
