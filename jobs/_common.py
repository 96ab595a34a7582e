"""What every job shares: argument types, listing inputs (with manifest landmarks), starting Ray."""

from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import hashlib
import json
import logging
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from codeformer_core import io
from codeformer_core.detect import MODELS, DetectConfig
from codeformer_core.restore import PRECISIONS, Speed
from jobs import _ledger, _udf

LANDMARKS_COLUMN = "landmarks"
# The process that runs a Ray Data run keeps memory for every block the run has made until the
# run ends (ray-project/ray#66016, and native memory of Ray's core worker that even outlives the
# run), so the inputs go through in runs of at most this many batches, each in a process of its own.
WINDOW_BATCHES = 2000
LISTING_CHUNK = 8192
PROGRESS_SECONDS = 1.0


# The driver's Arrow buffers come from malloc, whose freed memory release_freed_memory() hands back
# to the OS; Arrow's default mimalloc pool keeps what it has freed.
pa.set_memory_pool(pa.system_memory_pool())


class UsageError(Exception):
    pass


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def image_id(uri: str) -> str:
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:20]


def parse_landmarks(value: object) -> list[list[float]] | None:
    """A manifest cell -> a list of faces of 10 numbers each; a JSON string (CSV) or nested lists.

    An empty cell means: no landmarks given, detect."""
    if value is None or value == "":
        return None
    faces = json.loads(value) if isinstance(value, str) else value
    return [[float(v) for v in np.asarray(face, dtype=np.float64).reshape(-1)] for face in faces]


def list_inputs(source: str, uri_column: str | None, limit: int | None) -> pa.Table:
    """`source_uri` (and `manifest_landmarks` when the manifest has them), each input once, sorted, cut to --limit.

    Arrow does the sorting and de-duplication (a sort, not a hash group-by, whose memory the driver
    would keep), and the per-row Python work goes LISTING_CHUNK rows at a time, so that listing a
    large corpus costs the driver little more than the table it returns."""
    try:
        if io.is_manifest(source):
            manifest = io.read_manifest(source, uri_column)
        else:
            manifest = pa.table({"source_uri": pa.array(io.list_images(source), pa.string())})
    except FileNotFoundError:
        raise UsageError(f"input {source} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read input {source}: {exc}") from None
    if not manifest.num_rows:
        raise UsageError(f"no images (jpg, jpeg, png, webp, bmp) found under {source}")
    order = pc.sort_indices(manifest.column("source_uri"))  # a stable sort: a repeated URI's first row comes first
    ordered = manifest.column("source_uri").take(order)
    firsts = pa.concat_arrays([pa.array([True]), pc.not_equal(ordered[1:], ordered[:-1]).combine_chunks()])
    rows = order.filter(firsts)[:limit]
    uris = manifest.column("source_uri").take(rows)
    inputs = pa.table({"source_uri": uris, "image_id": in_chunks(uris, image_id, pa.string())})
    if LANDMARKS_COLUMN not in manifest.column_names:
        return inputs
    try:
        faces = in_chunks(manifest.column(LANDMARKS_COLUMN).take(rows), parse_landmarks, pa.list_(pa.list_(pa.float64())))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"manifest column {LANDMARKS_COLUMN!r} must hold lists of 10 numbers per face: {exc}") from None
    return inputs.append_column("manifest_landmarks", faces)


def in_chunks(values: pa.ChunkedArray, fn: Callable[[object], object], type: pa.DataType) -> pa.ChunkedArray:
    """`fn` of each value, converted through Python LISTING_CHUNK values at a time."""
    return pa.chunked_array(
        [pa.array([fn(v) for v in values.slice(i, LISTING_CHUNK).to_pylist()], type) for i in range(0, len(values), LISTING_CHUNK)], type
    )


def start_ray(address: str | None) -> None:
    import ray

    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, logging_level="ERROR")
    else:
        ray.init(address="local", include_dashboard=False, logging_level="ERROR")


def quiet_ray_data() -> None:
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def release_freed_memory() -> None:
    """Give the memory the driver has freed back to the OS, so that what one phase (listing, the
    run, the report's pass over the tables) used and freed does not stay resident under the next."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only
    if trim:
        trim(0)


def pending_inputs(inputs: pa.Table, resume: _ledger.Resume) -> pa.Table:
    """The inputs no committed part holds yet; says how many there are."""
    release_freed_memory()
    done = pa.array(sorted(resume.done_ids), pa.string())
    pending = inputs.filter(pc.invert(pc.is_in(inputs.column("image_id"), value_set=done)))
    print(
        f"{inputs.num_rows} inputs: {inputs.num_rows - pending.num_rows} already done, {pending.num_rows} to process"
        + (f" ({resume.orphans_removed} unfinished part files from an earlier run removed)" if resume.orphans_removed else ""),
        file=sys.stderr,
    )
    return pending


def windows(build: Callable[[pa.Table], object], pending: pa.Table, batch_size: int, window: int | None) -> list[Callable[[], object]]:
    """`build` of each consecutive slice of `pending` of `window` inputs (default WINDOW_BATCHES
    batches), for drive() to run, each as one Ray Data run."""
    size = window or WINDOW_BATCHES * batch_size
    return [functools.partial(build, pending.slice(start, size)) for start in range(0, pending.num_rows, size)]


def source(part: pa.Table, batch_size: int):
    """`part` as a Ray Dataset of blocks of `batch_size` rows, each made by a task as it is needed.
    ray.data.from_arrow would put every block up front from the process running the window, which
    keeps about 40 KB of native memory per block put for the whole run."""
    import ray
    from ray.data._internal.datasource.range_datasource import RangeDatasource

    blocks = -(-part.num_rows // batch_size)
    # ray.data.range's read tasks ask for a whole CPU, which actor pools may leave no room for.
    numbers = ray.data.read_datasource(RangeDatasource(n=blocks, column_name="id"), override_num_blocks=blocks, num_cpus=0.25)
    return numbers.map_batches(
        _udf.take_inputs, fn_kwargs={"inputs": part, "batch_size": batch_size}, batch_format="numpy", batch_size=1, num_cpus=0.25
    )


def add_window_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--window",
        type=positive_int,
        default=None,
        help=f"inputs per Ray Data run; each run goes in a process of its own whose memory grows with the run's size, "
        f"and starts its actors anew (default: {WINDOW_BATCHES} batches)",
    )


def run_window(plan: Callable[[], object]) -> Iterator[dict]:
    """Run one window's Ray Data plan to its end in this process; yield what it has done, at most
    every PROGRESS_SECONDS: inputs, items, statuses, and this process's memory in MiB when the
    window started and at its peak since. A Ray worker may have run other tasks before this one."""
    quiet_ray_data()
    reset_peak_memory()
    start_mib = memory_mib("VmRSS")
    done: dict = {"inputs": 0, "items": 0, "statuses": Counter()}
    last = time.monotonic()
    for batch in plan().iter_batches(batch_size=None, batch_format="numpy"):
        for n, k, st in zip(batch["inputs"], batch["items"], batch["statuses"]):
            done["statuses"].update(json.loads(st))
            done["items"] += int(k)
            done["inputs"] += int(n)
        if time.monotonic() - last >= PROGRESS_SECONDS:
            yield {**done, "start_mib": start_mib, "peak_mib": memory_mib("VmHWM")}
            done, last = {"inputs": 0, "items": 0, "statuses": Counter()}, time.monotonic()
    yield {**done, "start_mib": start_mib, "peak_mib": memory_mib("VmHWM")}


def reset_peak_memory() -> None:
    """Start this process's peak memory afresh (Linux), so that what a Ray worker used for earlier
    tasks does not count in memory_mib("VmHWM")."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def memory_mib(field: str) -> float:
    """A memory figure of this process in MiB: `VmRSS` (now) or `VmHWM` (peak since
    reset_peak_memory()) from /proc/self/status; where there is none (not Linux), the peak since it started."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024
    return int(next(line for line in status.splitlines() if line.startswith(f"{field}:")).split()[1]) / 1024


def drive(plans: list[Callable[[], object]], inputs: int, statuses: Counter, desc: str, unit: str) -> int:
    """Run each window's plan to its end, one after another, with one progress bar; count statuses
    in; return the `unit`s made this run.

    Each window runs as a Ray task whose worker exits after it, so what a Ray Data run leaves
    resident in the process that drives it goes with that process, and the job's driver stays the
    same size however many inputs there are."""
    import ray
    from tqdm import tqdm

    runner = ray.remote(num_cpus=0, max_calls=1, max_retries=0)(run_window)
    start = time.monotonic()
    made = 0
    with tqdm(total=inputs, unit="img", desc=desc, file=sys.stderr) as bar:
        for number, plan in enumerate(plans, 1):
            window_inputs = 0
            for ref in runner.remote(plan):
                done = ray.get(ref)
                statuses.update(done["statuses"])
                made += done["items"]
                window_inputs += done["inputs"]
                bar.update(done["inputs"])
                bar.set_postfix({unit: made, f"{unit}_per_s": f"{made / max(time.monotonic() - start, 1e-9):.3f}"})
            grown = done["peak_mib"] - done["start_mib"]
            bar.write(f"window {number}/{len(plans)}: inputs {window_inputs}; its Ray worker grew by {grown:.0f} MiB, to {done['peak_mib']:.0f} MiB", file=sys.stderr)
    release_freed_memory()
    return made


def batch_size_or_auto(text: str) -> int | None:
    return None if text == "auto" else positive_int(text)


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    s = parser.add_argument_group("how the CodeFormer network runs (docs/BENCHMARKS.md has the measurements)")
    s.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="fp32: the official network's arithmetic (TF32 off; bit-faithful with --winograd off); bf16/fp16: a 16-bit network whose norms, AdaIN "
        "statistics and code-prediction head stay in float32, faster on GPUs and AMX CPUs; auto: bf16 on GPUs "
        "(fp16 where bf16 is missing) and on CPUs with AMX, else fp32 (default auto)",
    )
    s.add_argument(
        "--channels-last",
        choices=("auto", "on", "off"),
        default="auto",
        help="channels_last memory format for the network; auto: on for CPUs where Winograd is off and for 16-bit precisions on GPUs (default auto)",
    )
    s.add_argument(
        "--winograd",
        choices=("auto", "on", "off"),
        default="auto",
        help="3x3 convolutions by NNPACK's Winograd transform, fp32 on CPUs: about 1.7x faster there, the same code "
        "indices as the direct sums on the golden test; off gives the direct sums, bit-faithful to the official "
        "network with --channels-last off; auto: on for fp32 on CPUs unless --channels-last on (default auto)",
    )
    s.add_argument("--compile", action="store_true", help="torch.compile the network: faster forwards after a warm-up of a minute or more per actor")


def speed_from_args(args: argparse.Namespace, batch_size: int | None) -> Speed:
    channels_last = {"auto": None, "on": True, "off": False}[args.channels_last]
    winograd = {"auto": None, "on": True, "off": False}[args.winograd]
    return Speed(precision=args.precision, channels_last=channels_last, winograd=winograd, compile=args.compile, batch_size=batch_size)


def add_detect_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The detector's flags, in a group the job can add its own whole-image flags to."""
    d = parser.add_argument_group("faces in whole images (without --aligned)")
    d.add_argument("--detector", choices=tuple(MODELS), default="retinaface_resnet50", help="RetinaFace backbone (default retinaface_resnet50)")
    d.add_argument("--detector-weights", default=None, help="detector checkpoint path or s3:// URI (default: the official file, found like --weights)")
    d.add_argument("--det-threshold", type=float, default=0.8, help="minimum detection confidence (default 0.8)")
    d.add_argument("--nms-threshold", type=float, default=0.4, help="IoU above which overlapping boxes are suppressed (default 0.4)")
    d.add_argument("--min-face-size", type=float, default=0.0, help="drop faces whose box is smaller than this many pixels (default 0)")
    d.add_argument("--max-faces", type=positive_int, default=None, help="keep at most this many faces per image, best first")
    d.add_argument("--only-center-face", action="store_true", help="keep only the face nearest the image centre")
    d.add_argument("--det-input-size", type=positive_int, default=640, help="short side images are rescaled to for detection (default 640, as the official helper)")
    d.add_argument("--detect-batch-size", type=positive_int, default=8, help="images per detector forward pass (default 8)")
    return d


def detect_config(args: argparse.Namespace) -> DetectConfig:
    return DetectConfig(
        model=args.detector,
        conf_threshold=args.det_threshold,
        nms_threshold=args.nms_threshold,
        min_face_size=args.min_face_size,
        max_faces=args.max_faces,
        only_center_face=args.only_center_face,
        input_size=args.det_input_size,
        batch_size=args.detect_batch_size,
    )


def needs_detector(aligned: bool, inputs: pa.Table) -> bool:
    """Whole images some of which have no manifest landmarks."""
    if aligned:
        return False
    if "manifest_landmarks" not in inputs.column_names:
        return True
    return inputs.column("manifest_landmarks").null_count > 0
