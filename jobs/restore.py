"""Restore faces with CodeFormer on Ray Data: images in, restored faces and lineage out to Parquet.

    python -m jobs.restore --input URI --output URI --aligned [options]

Input is a local folder, an s3://bucket/prefix (both listed recursively for jpg, jpeg, png,
webp and bmp files in any case), or a Parquet/CSV manifest with a column of image URIs and,
optionally, a `landmarks` column of five-point landmarks per face (then no detector runs).
Without --aligned, faces are found with RetinaFace, aligned to the FFHQ 512 template, restored
and, with --paste, pasted back into the whole image.
Output is Parquet tables under --output: images/ (one row per input, with a status), faces/
(one row per restored face, PNG crops and lineage) and, with --paste, pasted/. Running the same command again after a crash
finishes the output without duplicating rows; a finished output is left as it is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import codeformer_core
from codeformer_core import io
from codeformer_core.codec import DEFAULT_MAX_PIXELS
from codeformer_core.detect import MODELS, DetectConfig
from codeformer_core.weights import SYNTHETIC_SPEC_PREFIX, WeightsError, WeightsInfo, codeformer_weights, resolve
from jobs import _ledger, _udf

TABLES = ("images", "faces", "pasted")
LAYOUTS = ("separate", "fused")
LANDMARKS_COLUMN = "landmarks"
SYNTHETIC_NOTE = (
    "NOTE: SYNTHETIC WEIGHTS. The network ran with random weights in the official layout, not the trained "
    "CodeFormer: every stage ran for real, but the 'restored' faces are noise. Outputs are marked weights_synthetic."
)


class UsageError(Exception):
    pass


@dataclass(frozen=True)
class RestoreConfig:
    input: str
    output: str
    aligned: bool
    fidelity: float
    weights: str
    weights_dir: str | None
    batch_size: int
    limit: int | None
    max_pixels: int
    uri_column: str | None
    actors: int
    threads_per_actor: int | None
    device: str
    ray_address: str | None
    detect: DetectConfig
    detector_weights: str | None
    detect_layout: str
    paste: bool
    upscale: int
    parse: bool


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def fidelity_weight(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.restore", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--input", required=True, help="folder, s3://bucket/prefix, or a .parquet/.csv manifest of image URIs")
    p.add_argument("--output", required=True, help="folder or s3://bucket/prefix for the images/ and faces/ tables")
    p.add_argument(
        "--aligned",
        action="store_true",
        help="treat every input as an aligned face (resized to 512x512 when needed), like the official --has_aligned",
    )
    p.add_argument("--fidelity", type=fidelity_weight, default=0.5, help="CodeFormer fidelity weight w in [0,1]: 0 = best quality, 1 = closest to the input (default 0.5)")
    p.add_argument("--weights", default="codeformer", help="CodeFormer checkpoint: 'codeformer' (found as the README explains), a path or an s3:// URI (default: codeformer)")
    p.add_argument("--synthetic-weights", action="store_true", help="use synthetic random weights instead of a checkpoint (offline demos and tests; outputs are marked synthetic)")
    p.add_argument("--weights-dir", default=None, help="folder holding checkpoints under their official names (default: $CODEFORMER_WEIGHTS_DIR)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="faces per forward pass of the network (default 4)")
    p.add_argument("--limit", type=positive_int, default=None, help="process only the first N inputs in sorted order")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, help=f"reject images with more pixels than this before decoding them (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--uri-column", default=None, help="manifest column holding image URIs (default: the first of uri, source_uri, path, url, image)")
    p.add_argument("--actors", type=positive_int, default=None, help="restoration actors (default: one per GPU, or 1 on CPU)")
    p.add_argument("--threads-per-actor", type=positive_int, default=None, help="torch threads of each CPU actor (default: the node's cores divided by --actors)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the network runs: auto picks GPUs when the cluster has them (default auto)")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray started for this job)")
    d = p.add_argument_group("faces in whole images (without --aligned)")
    d.add_argument("--detector", choices=tuple(MODELS), default="retinaface_resnet50", help="RetinaFace backbone (default retinaface_resnet50)")
    d.add_argument("--detector-weights", default=None, help="detector checkpoint path or s3:// URI (default: the official file, found like --weights)")
    d.add_argument("--det-threshold", type=float, default=0.8, help="minimum detection confidence (default 0.8)")
    d.add_argument("--nms-threshold", type=float, default=0.4, help="IoU above which overlapping boxes are suppressed (default 0.4)")
    d.add_argument("--min-face-size", type=float, default=0.0, help="drop faces whose box is smaller than this many pixels (default 0)")
    d.add_argument("--max-faces", type=positive_int, default=None, help="keep at most this many faces per image, best first")
    d.add_argument("--only-center-face", action="store_true", help="keep only the face nearest the image centre")
    d.add_argument("--det-input-size", type=positive_int, default=640, help="short side images are rescaled to for detection (default 640, as the official helper)")
    d.add_argument("--detect-batch-size", type=positive_int, default=8, help="images per detector forward pass (default 8)")
    d.add_argument(
        "--detect-layout",
        choices=LAYOUTS,
        default="separate",
        help="separate: the detector runs in its own actor pool, ahead of the restorers; fused: each restoration "
        "actor holds the detector too and detects, aligns and restores in one call (default separate; "
        "docs/BENCHMARKS.md has the measurement)",
    )
    d.add_argument("--paste", action="store_true", help="also write pasted/: each whole image with its restored faces pasted back")
    d.add_argument("--upscale", type=int, choices=(1, 2), default=1, help="size factor of pasted images; the background is resized, not restored (default 1)")
    d.add_argument("--parse", action="store_true", help="with --paste, blend with a ParseNet face-parsing mask instead of the soft square")
    return p


def config_from_args(argv: list[str] | None) -> RestoreConfig:
    args = build_parser().parse_args(argv)
    if args.aligned and args.paste:
        raise UsageError("--paste needs whole images; with --aligned there is nothing to paste into")
    if args.parse and not args.paste:
        raise UsageError("--parse changes how faces are pasted back; it needs --paste")
    if args.synthetic_weights and args.weights != "codeformer":
        raise UsageError("--synthetic-weights and --weights exclude each other")
    return RestoreConfig(
        input=args.input,
        output=args.output.rstrip("/"),
        aligned=args.aligned,
        fidelity=args.fidelity,
        weights=f"{SYNTHETIC_SPEC_PREFIX}1" if args.synthetic_weights else args.weights,
        weights_dir=args.weights_dir,
        batch_size=args.batch_size,
        limit=args.limit,
        max_pixels=args.max_pixels,
        uri_column=args.uri_column,
        actors=args.actors or 0,
        threads_per_actor=args.threads_per_actor,
        device=args.device,
        ray_address=args.ray_address,
        detect=DetectConfig(
            model=args.detector,
            conf_threshold=args.det_threshold,
            nms_threshold=args.nms_threshold,
            min_face_size=args.min_face_size,
            max_faces=args.max_faces,
            only_center_face=args.only_center_face,
            input_size=args.det_input_size,
            batch_size=args.detect_batch_size,
        ),
        detector_weights=args.detector_weights,
        detect_layout=args.detect_layout,
        paste=args.paste,
        upscale=args.upscale,
        parse=args.parse,
    )


def image_id(uri: str) -> str:
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:20]


def parse_landmarks(value: object) -> list[list[float]] | None:
    """A manifest cell -> a list of faces of 10 numbers each; a JSON string (CSV) or nested lists.

    An empty cell means: no landmarks given, detect."""
    if value is None or value == "":
        return None
    faces = json.loads(value) if isinstance(value, str) else value
    return [[float(v) for v in np.asarray(face, dtype=np.float64).reshape(-1)] for face in faces]


def list_inputs(cfg: RestoreConfig) -> pa.Table:
    """`source_uri` (and `manifest_landmarks` when the manifest has them), each input once, sorted, cut to --limit."""
    try:
        if io.is_manifest(cfg.input):
            manifest = io.read_manifest(cfg.input, cfg.uri_column)
        else:
            manifest = pa.table({"source_uri": io.list_images(cfg.input)})
    except FileNotFoundError:
        raise UsageError(f"input {cfg.input} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read input {cfg.input}: {exc}") from None
    rows = {}
    landmarks = manifest.column(LANDMARKS_COLUMN).to_pylist() if LANDMARKS_COLUMN in manifest.column_names else None
    for i, uri in enumerate(manifest.column("source_uri").to_pylist()):
        rows.setdefault(uri, i)
    uris = sorted(rows)[: cfg.limit] if cfg.limit else sorted(rows)
    if not uris:
        raise UsageError(f"no images (jpg, jpeg, png, webp, bmp) found under {cfg.input}")
    inputs = pa.table({"source_uri": uris, "image_id": [image_id(u) for u in uris]})
    if landmarks is None:
        return inputs
    try:
        faces = [parse_landmarks(landmarks[rows[u]]) for u in uris]
    except (ValueError, TypeError) as exc:
        raise UsageError(f"manifest column {LANDMARKS_COLUMN!r} must hold lists of 10 numbers per face: {exc}") from None
    return inputs.append_column("manifest_landmarks", pa.array(faces, pa.list_(pa.list_(pa.float64()))))


def needs_detector(cfg: RestoreConfig, inputs: pa.Table) -> bool:
    if cfg.aligned:
        return False
    if "manifest_landmarks" not in inputs.column_names:
        return True
    return inputs.column("manifest_landmarks").null_count > 0


def run_record(cfg: RestoreConfig, weights: WeightsInfo) -> dict:
    return {
        "job": "restore",
        "code_version": f"codeformer-data {codeformer_core.__version__}",
        "weights_sha256": weights.sha256,
        "weights_synthetic": weights.synthetic,
        "fidelity": cfg.fidelity,
        "aligned": cfg.aligned,
        "max_pixels": cfg.max_pixels,
        "detect": None if cfg.aligned else asdict(cfg.detect),
        "upscale": cfg.upscale if cfg.paste else None,
        "parse": cfg.parse,
    }


def preflight(cfg: RestoreConfig) -> tuple[pa.Table, WeightsInfo, _ledger.Resume]:
    """Everything that can stop the job, checked before any work is started."""
    inputs = list_inputs(cfg)
    _, weights = codeformer_weights(cfg.weights, cfg.weights_dir)
    if needs_detector(cfg, inputs) and not weights.synthetic:
        resolve(cfg.detector_weights or cfg.detect.model, weights_dir=cfg.weights_dir)
    if cfg.parse and not weights.synthetic:
        resolve("parsenet", weights_dir=cfg.weights_dir)
    try:
        resume = _ledger.prepare(cfg.output, run_record(cfg, weights), TABLES)
    except OSError as exc:
        raise UsageError(f"cannot write to output {cfg.output}: {exc}") from None
    return inputs, weights, resume


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


def plan(cfg: RestoreConfig, pending: pa.Table, weights: WeightsInfo, run: dict):
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0)) if cfg.device != "cpu" else 0
    if cfg.device == "cuda" and not gpus:
        raise UsageError("--device cuda was asked for, but the Ray cluster has no GPUs")
    actors = cfg.actors or max(gpus, 1)
    threads = cfg.threads_per_actor or (None if gpus else max(1, (os.cpu_count() or 1) // actors))
    device = "cuda" if gpus else "cpu"
    detecting = not cfg.aligned and needs_detector(cfg, pending)
    fused = detecting and cfg.detect_layout == "fused"
    # Logical CPUs, for scheduling only (torch threads are set apart): two model pools plus the
    # CPU stages must fit on a 2-CPU machine, and CPU stages must ask for a different amount than
    # the model actors, or Ray fuses them into the actors and they stop overlapping. On GPUs, a
    # separate detector takes a quarter of a GPU so that it shares each GPU with one restorer.
    restore_gpus = 0 if not gpus else 0.75 if detecting and not fused else 1
    detect_stage = {"compute": ray.data.ActorPoolStrategy(min_size=1, max_size=actors), "num_gpus": 0.25 if gpus else 0, "num_cpus": 0.5}
    restore_stage = {"compute": ray.data.ActorPoolStrategy(min_size=1, max_size=actors), "num_gpus": restore_gpus, "num_cpus": 0.5}
    cpu_stage = {"batch_format": "numpy", "batch_size": cfg.batch_size, "num_cpus": 0.25}
    blocks = [pending.slice(i, cfg.batch_size) for i in range(0, pending.num_rows, cfg.batch_size)]
    detect_kwargs = {
        "config": cfg.detect,
        "weights": cfg.detector_weights,
        "weights_dir": cfg.weights_dir,
        "synthetic": weights.synthetic,
        "device": device,
        "threads": threads,
    }
    restore_kwargs = {
        "weights": cfg.weights,
        "weights_dir": cfg.weights_dir,
        "expected_sha256": weights.sha256,
        "device": device,
        "batch_size": cfg.batch_size,
        "fidelity": cfg.fidelity,
        "threads": threads,
    }

    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(_udf.read_images, **cpu_stage)
    ds = ds.map_batches(_udf.decode_images, fn_kwargs={"max_pixels": cfg.max_pixels, "aligned": cfg.aligned}, **cpu_stage)
    if fused:
        ds = ds.map_batches(
            _udf.DetectAndRestoreFaces,
            batch_format="numpy",
            batch_size=cfg.detect.batch_size,
            fn_constructor_kwargs={"detect": detect_kwargs, "restore": restore_kwargs},
            **restore_stage,
        )
    else:
        if detecting:
            ds = ds.map_batches(
                _udf.DetectFaces, batch_format="numpy", batch_size=cfg.detect.batch_size, fn_constructor_kwargs=detect_kwargs, **detect_stage
            )
        if not cfg.aligned:
            ds = ds.map_batches(_udf.align_faces, **cpu_stage)
        ds = ds.map_batches(
            _udf.RestoreFaces, batch_format="numpy", batch_size=cfg.batch_size, fn_constructor_kwargs=restore_kwargs, **restore_stage
        )
    if cfg.paste:
        ds = ds.map_batches(
            _udf.PasteFaces,
            batch_format="numpy",
            batch_size=cfg.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            num_cpus=0.5,
            fn_constructor_kwargs={
                "upscale": cfg.upscale, "parse": cfg.parse, "weights_dir": cfg.weights_dir, "synthetic": weights.synthetic,
            },
        )
    ds = ds.map_batches(_udf.encode_png, **cpu_stage)
    return ds.map_batches(_udf.write_part, fn_kwargs={"output": cfg.output, "run": run}, **cpu_stage)


def summarize(cfg: RestoreConfig, total: int, statuses: Counter, faces: int, seconds: float, new_faces: int, weights: WeightsInfo) -> str:
    failures = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()) if k != "ok") or "none"
    rate = f"{new_faces / seconds:.3f} faces/s this run" if new_faces else "no faces restored this run"
    lines = [
        f"inputs {total}: ok {statuses.get('ok', 0)}; failures: {failures}",
        f"faces {faces} ({rate}, {seconds:.1f} s)",
        f"output: {cfg.output}/images/ and {cfg.output}/faces/" + (f" and {cfg.output}/pasted/" if cfg.paste else ""),
        f'read: pandas.read_parquet("{cfg.output}/images") / pandas.read_parquet("{cfg.output}/faces")',
    ]
    if weights.synthetic:
        lines.append(SYNTHETIC_NOTE)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = config_from_args(argv)
        inputs, weights, resume = preflight(cfg)
    except (UsageError, WeightsError, _ledger.OutputMismatchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if weights.synthetic:
        print(SYNTHETIC_NOTE, file=sys.stderr)

    done = pa.array(sorted(resume.done_ids), pa.string())
    pending = inputs.filter(pc.invert(pc.is_in(inputs.column("image_id"), value_set=done)))
    total = inputs.num_rows
    statuses = Counter(resume.statuses)
    faces = resume.faces
    print(
        f"{total} inputs: {total - pending.num_rows} already done, {pending.num_rows} to process"
        + (f" ({resume.orphans_removed} unfinished part files from an earlier run removed)" if resume.orphans_removed else ""),
        file=sys.stderr,
    )
    start = time.monotonic()
    new_faces = 0
    if pending.num_rows:
        from tqdm import tqdm

        try:
            start_ray(cfg.ray_address)
            ds = plan(cfg, pending, weights, run_record(cfg, weights))
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        with tqdm(total=pending.num_rows, unit="img", desc="restore", file=sys.stderr) as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for n, k, st in zip(batch["inputs"], batch["faces"], batch["statuses"]):
                    statuses.update(json.loads(st))
                    faces += int(k)
                    new_faces += int(k)
                    bar.update(int(n))
                    bar.set_postfix(faces=faces, faces_per_s=f"{new_faces / max(time.monotonic() - start, 1e-9):.3f}")
    print(summarize(cfg, total, statuses, faces, time.monotonic() - start, new_faces, weights))
    return 0


if __name__ == "__main__":
    sys.exit(main())
