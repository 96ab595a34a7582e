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
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass

import pyarrow as pa

import codeformer_core
from codeformer_core.codec import DEFAULT_MAX_PIXELS
from codeformer_core.detect import DetectConfig
from codeformer_core.restore import MAX_AUTO_BATCH, Speed
from codeformer_core.weights import SYNTHETIC_SPEC_PREFIX, WeightsError, WeightsInfo, codeformer_weights, resolve
from jobs import _common, _ledger, _udf
from jobs._common import UsageError, list_inputs, positive_int

TABLES = ("images", "faces", "pasted")
LAYOUTS = ("separate", "fused")
SYNTHETIC_NOTE = (
    "NOTE: SYNTHETIC WEIGHTS. The network ran with random weights in the official layout, not the trained "
    "CodeFormer: every stage ran for real, but the 'restored' faces are noise. Outputs are marked weights_synthetic."
)


@dataclass(frozen=True)
class RestoreConfig:
    input: str
    output: str
    aligned: bool
    fidelity: float
    weights: str
    weights_dir: str | None
    arcface_weights: str | None
    batch_size: int | None
    speed: Speed
    limit: int | None
    max_pixels: int
    uri_column: str | None
    actors: int
    threads_per_actor: int | None
    device: str
    ray_address: str | None
    window: int | None
    detect: DetectConfig
    detector_weights: str | None
    detect_layout: str
    paste: bool
    upscale: int
    parse: bool


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
    p.add_argument("--arcface-weights", default=None, help="ArcFace checkpoint for the identity similarity of each restored face: path or s3:// URI (default: the official file, found like --weights)")
    p.add_argument("--weights-dir", default=None, help="folder holding checkpoints under their official names (default: $CODEFORMER_WEIGHTS_DIR)")
    p.add_argument(
        "--batch-size",
        type=_common.batch_size_or_auto,
        default=None,
        help=f"faces per forward pass of the network, or auto: as many as fit in the device's free memory, "
        f"up to {MAX_AUTO_BATCH['cuda']} on a GPU and {MAX_AUTO_BATCH['cpu']} on a CPU (default auto)",
    )
    p.add_argument("--limit", type=positive_int, default=None, help="process only the first N inputs in sorted order")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, help=f"reject images with more pixels than this before decoding them (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--uri-column", default=None, help="manifest column holding image URIs (default: the first of uri, source_uri, path, url, image)")
    p.add_argument("--actors", type=positive_int, default=None, help="restoration actors (default: one per GPU, or 1 on CPU)")
    p.add_argument("--threads-per-actor", type=positive_int, default=None, help="torch threads of each CPU actor (default: the node's cores divided by --actors)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the network runs: auto picks GPUs when the cluster has them (default auto)")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray started for this job)")
    _common.add_window_argument(p)
    _common.add_speed_arguments(p)
    d = _common.add_detect_arguments(p)
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
    if args.synthetic_weights and (args.weights != "codeformer" or args.arcface_weights):
        raise UsageError("--synthetic-weights and --weights/--arcface-weights exclude each other")
    return RestoreConfig(
        input=args.input,
        output=args.output.rstrip("/"),
        aligned=args.aligned,
        fidelity=args.fidelity,
        weights=f"{SYNTHETIC_SPEC_PREFIX}1" if args.synthetic_weights else args.weights,
        weights_dir=args.weights_dir,
        arcface_weights=args.arcface_weights,
        batch_size=args.batch_size,
        speed=_common.speed_from_args(args, args.batch_size),
        limit=args.limit,
        max_pixels=args.max_pixels,
        uri_column=args.uri_column,
        actors=args.actors or 0,
        threads_per_actor=args.threads_per_actor,
        device=args.device,
        ray_address=args.ray_address,
        window=args.window,
        detect=_common.detect_config(args),
        detector_weights=args.detector_weights,
        detect_layout=args.detect_layout,
        paste=args.paste,
        upscale=args.upscale,
        parse=args.parse,
    )


def run_record(cfg: RestoreConfig, weights: WeightsInfo) -> dict:
    return {
        "job": "restore",
        "code_version": f"codeformer-data {codeformer_core.__version__}",
        "weights_sha256": weights.sha256,
        "weights_synthetic": weights.synthetic,
        "fidelity": cfg.fidelity,
        "precision": cfg.speed.precision,
        "arcface_weights": cfg.arcface_weights,
        "aligned": cfg.aligned,
        "max_pixels": cfg.max_pixels,
        "detect": None if cfg.aligned else asdict(cfg.detect),
        "upscale": cfg.upscale if cfg.paste else None,
        "parse": cfg.parse,
    }


def preflight(cfg: RestoreConfig) -> tuple[pa.Table, WeightsInfo, _ledger.Resume]:
    """Everything that can stop the job, checked before any work is started."""
    inputs = list_inputs(cfg.input, cfg.uri_column, cfg.limit)
    _, weights = codeformer_weights(cfg.weights, cfg.weights_dir)
    if _common.needs_detector(cfg.aligned, inputs) and not weights.synthetic:
        resolve(cfg.detector_weights or cfg.detect.model, weights_dir=cfg.weights_dir)
    if cfg.parse and not weights.synthetic:
        resolve("parsenet", weights_dir=cfg.weights_dir)
    if not weights.synthetic:
        resolve(cfg.arcface_weights or "arcface", weights_dir=cfg.weights_dir)
    try:
        resume = _ledger.prepare(cfg.output, run_record(cfg, weights), TABLES)
    except OSError as exc:
        raise UsageError(f"cannot write to output {cfg.output}: {exc}") from None
    return inputs, weights, resume


def plan(cfg: RestoreConfig, pending: pa.Table, weights: WeightsInfo, run: dict):
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0)) if cfg.device != "cpu" else 0
    if cfg.device == "cuda" and not gpus:
        raise UsageError("--device cuda was asked for, but the Ray cluster has no GPUs")
    actors = cfg.actors or max(gpus, 1)
    threads = cfg.threads_per_actor or (None if gpus else max(1, (os.cpu_count() or 1) // actors))
    device = "cuda" if gpus else "cpu"
    detecting = not cfg.aligned and _common.needs_detector(cfg.aligned, pending)
    fused = detecting and cfg.detect_layout == "fused"
    # Logical CPUs, for scheduling only (torch threads are set apart): two model pools plus the
    # CPU stages must fit on a 2-CPU machine, and CPU stages must ask for a different amount than
    # the model actors, or Ray fuses them into the actors and they stop overlapping. On GPUs, a
    # separate detector takes a quarter of a GPU so that it shares each GPU with one restorer.
    restore_gpus = 0 if not gpus else 0.75 if detecting and not fused else 1
    detect_stage = {"compute": ray.data.ActorPoolStrategy(min_size=1, max_size=actors), "num_gpus": 0.25 if gpus else 0, "num_cpus": 0.5}
    restore_stage = {"compute": ray.data.ActorPoolStrategy(min_size=1, max_size=actors), "num_gpus": restore_gpus, "num_cpus": 0.5}
    block = cfg.batch_size or MAX_AUTO_BATCH["cuda" if gpus else "cpu"]
    cpu_stage = {"batch_format": "numpy", "batch_size": block, "num_cpus": 0.25}

    def build(part: pa.Table):
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
            "speed": cfg.speed,
            "fidelity": cfg.fidelity,
            "threads": threads,
            "arcface": {"weights": cfg.arcface_weights, "weights_dir": cfg.weights_dir, "synthetic_seed": 1 if weights.synthetic else None},
        }

        ds = _common.source(part, block)
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
                _udf.RestoreFaces, batch_format="numpy", batch_size=block, fn_constructor_kwargs=restore_kwargs, **restore_stage
            )
        if cfg.paste:
            ds = ds.map_batches(
                _udf.PasteFaces,
                batch_format="numpy",
                batch_size=block,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
                num_cpus=0.5,
                fn_constructor_kwargs={
                    "upscale": cfg.upscale, "parse": cfg.parse, "weights_dir": cfg.weights_dir, "synthetic": weights.synthetic,
                },
            )
        ds = ds.map_batches(_udf.encode_png, **cpu_stage)
        return ds.map_batches(_udf.write_part, fn_kwargs={"output": cfg.output, "run": run}, **cpu_stage)

    return _common.windows(build, pending, block, cfg.window)


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

    pending = _common.pending_inputs(inputs, resume)
    statuses = Counter(resume.statuses)
    start = time.monotonic()
    new_faces = 0
    if pending.num_rows:
        try:
            _common.start_ray(cfg.ray_address)
            plans = plan(cfg, pending, weights, run_record(cfg, weights))
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        new_faces = _common.drive(plans, pending.num_rows, statuses, "restore", "faces")
    faces = resume.items + new_faces
    total = inputs.num_rows
    print(summarize(cfg, total, statuses, faces, time.monotonic() - start, new_faces, weights))
    return 0


if __name__ == "__main__":
    sys.exit(main())
