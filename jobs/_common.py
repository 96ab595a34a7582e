"""What every job shares: argument types, listing inputs (with manifest landmarks), starting Ray."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from codeformer_core import io
from codeformer_core.detect import MODELS, DetectConfig
from jobs import _ledger

LANDMARKS_COLUMN = "landmarks"


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
    """`source_uri` (and `manifest_landmarks` when the manifest has them), each input once, sorted, cut to --limit."""
    try:
        if io.is_manifest(source):
            manifest = io.read_manifest(source, uri_column)
        else:
            manifest = pa.table({"source_uri": io.list_images(source)})
    except FileNotFoundError:
        raise UsageError(f"input {source} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read input {source}: {exc}") from None
    rows = {}
    landmarks = manifest.column(LANDMARKS_COLUMN).to_pylist() if LANDMARKS_COLUMN in manifest.column_names else None
    for i, uri in enumerate(manifest.column("source_uri").to_pylist()):
        rows.setdefault(uri, i)
    uris = sorted(rows)[: limit] if limit else sorted(rows)
    if not uris:
        raise UsageError(f"no images (jpg, jpeg, png, webp, bmp) found under {source}")
    inputs = pa.table({"source_uri": uris, "image_id": [image_id(u) for u in uris]})
    if landmarks is None:
        return inputs
    try:
        faces = [parse_landmarks(landmarks[rows[u]]) for u in uris]
    except (ValueError, TypeError) as exc:
        raise UsageError(f"manifest column {LANDMARKS_COLUMN!r} must hold lists of 10 numbers per face: {exc}") from None
    return inputs.append_column("manifest_landmarks", pa.array(faces, pa.list_(pa.list_(pa.float64()))))


def start_ray(address: str | None) -> None:
    import ray

    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, logging_level="ERROR")
    else:
        ray.init(address="local", include_dashboard=False, logging_level="ERROR")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def pending_inputs(inputs: pa.Table, resume: _ledger.Resume) -> pa.Table:
    """The inputs no committed part holds yet; says how many there are."""
    done = pa.array(sorted(resume.done_ids), pa.string())
    pending = inputs.filter(pc.invert(pc.is_in(inputs.column("image_id"), value_set=done)))
    print(
        f"{inputs.num_rows} inputs: {inputs.num_rows - pending.num_rows} already done, {pending.num_rows} to process"
        + (f" ({resume.orphans_removed} unfinished part files from an earlier run removed)" if resume.orphans_removed else ""),
        file=sys.stderr,
    )
    return pending


def drive(ds, inputs: int, statuses: Counter, desc: str, unit: str) -> int:
    """Run the plan to its end with a progress bar; count statuses in; return the `unit`s made this run."""
    from tqdm import tqdm

    start = time.monotonic()
    made = 0
    with tqdm(total=inputs, unit="img", desc=desc, file=sys.stderr) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for n, k, st in zip(batch["inputs"], batch["items"], batch["statuses"]):
                statuses.update(json.loads(st))
                made += int(k)
                bar.update(int(n))
                bar.set_postfix({unit: made, f"{unit}_per_s": f"{made / max(time.monotonic() - start, 1e-9):.3f}"})
    return made


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
