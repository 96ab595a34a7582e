"""Audit a face corpus: find, align and measure every face, keep or drop it by thresholds, report.

    python -m jobs.audit --input URI --output URI [--restore] [--thresholds FILE]

Each face (every face RetinaFace finds in a whole image, the manifest's `landmarks`, or the
image itself with --aligned) gets its face facts (detection score, size, eye distance, yaw and
roll from the 5 landmarks) and no-reference quality metrics (sharpness, noise, JPEG
blockiness, brightness, contrast, colourfulness, NIQE). With --restore, CodeFormer restores it
and the same metrics of the result, the ArcFace identity similarity between input and result,
and the landmark distance (LMD) between them, are added. Output under --output: images/ (one row per input) and faces/ (one row per
face, with `keep` and `dropped_by` from --thresholds), kept.parquet (a manifest of the kept
faces: source_uri and landmarks, which the other jobs take as --input), and report.html with
figures/*.png. The report is built from the written tables by a streaming pass whose memory
and output size do not grow with the corpus. A rerun after a crash finishes the output.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

import codeformer_core
import schemas.audit_faces
from codeformer_core import io
from codeformer_core.codec import DEFAULT_MAX_PIXELS
from codeformer_core.detect import DetectConfig
from codeformer_core.metrics import NO_REFERENCE
from codeformer_core.report import render
from codeformer_core.restore import Speed
from codeformer_core.summary import AuditSummary, MetricSpec
from codeformer_core.thresholds import Rule, load_rules
from codeformer_core.weights import SYNTHETIC_SPEC_PREFIX, WeightsError, WeightsInfo, codeformer_weights, resolve
from jobs import _audit_stages, _common, _ledger, _udf
from jobs._common import UsageError, positive_int
from jobs.restore import SYNTHETIC_NOTE, fidelity_weight

FOLDERS = ("images", "faces")
KEPT_MANIFEST = "kept.parquet"
METRICS = (
    MetricSpec("det_score", "detection score", 0.0, 1.0),
    MetricSpec("face_size", "face size (input px)", 0.0, 1024.0),
    MetricSpec("interocular", "eye distance (input px)", 0.0, 400.0),
    MetricSpec("yaw", "yaw (degrees)", -90.0, 90.0),
    MetricSpec("roll", "roll (degrees)", -90.0, 90.0),
    MetricSpec("sharpness", "sharpness (Laplacian variance)", 0.0, 2000.0),
    MetricSpec("noise", "noise sigma (0..255)", 0.0, 30.0, higher_is_better=False),
    MetricSpec("blockiness", "JPEG blockiness", 0.5, 3.0, higher_is_better=False),
    MetricSpec("brightness", "brightness (mean luma)", 0.0, 255.0),
    MetricSpec("contrast", "contrast (luma std)", 0.0, 128.0),
    MetricSpec("colourfulness", "colourfulness", 0.0, 150.0),
    MetricSpec("niqe", "NIQE (lower is better)", 0.0, 20.0, higher_is_better=False),
)
RESTORED_METRICS = (
    MetricSpec("ids_cosine", "identity similarity (ArcFace cosine)", -1.0, 1.0),
    MetricSpec("restored_sharpness", "restored sharpness", 0.0, 2000.0),
    MetricSpec("restored_niqe", "restored NIQE (lower is better)", 0.0, 20.0, higher_is_better=False),
)


@dataclass(frozen=True)
class AuditConfig:
    input: str
    output: str
    aligned: bool
    restore: bool
    fidelity: float
    weights: str
    arcface_weights: str | None
    synthetic_weights: bool
    weights_dir: str | None
    thresholds: tuple[Rule, ...]
    metrics: tuple[str, ...]
    batch_size: int
    speed: Speed
    gallery_size: int
    limit: int | None
    max_pixels: int
    uri_column: str | None
    workers: int | None
    device: str
    ray_address: str | None
    window: int | None
    detect: DetectConfig
    detector_weights: str | None


def metric_names(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in NO_REFERENCE]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(NO_REFERENCE)}; got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.audit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="folder, s3://bucket/prefix, or a .parquet/.csv manifest of image URIs (with optional landmarks)")
    p.add_argument("--output", required=True, help="folder or s3://bucket/prefix for images/, faces/, kept.parquet and report.html")
    p.add_argument("--aligned", action="store_true", help="inputs are aligned faces (resized to 512x512 when needed); no detection")
    p.add_argument("--thresholds", default=None, help='JSON/YAML file of keep rules, e.g. {"sharpness": {"min": 20}, "niqe": {"max": 12}, "yaw": {"abs_max": 45}}; bounds: min, max, abs_max on any measured column (default: keep every face)')
    p.add_argument(
        "--metrics",
        type=metric_names,
        default=NO_REFERENCE,
        help=f"no-reference metrics to compute, comma-separated (default: all of {','.join(NO_REFERENCE)}); "
        "NIQE costs about as much as the others together, so leaving it out roughly halves the time on CPU",
    )
    p.add_argument("--restore", action="store_true", help="also restore each face with CodeFormer and measure the result and its identity similarity to the input")
    p.add_argument("--fidelity", type=fidelity_weight, default=0.5, help="with --restore: CodeFormer fidelity weight w in [0,1] (default 0.5)")
    p.add_argument("--weights", default="codeformer", help="with --restore: CodeFormer checkpoint name, path or s3:// URI (default: codeformer)")
    p.add_argument("--arcface-weights", default=None, help="with --restore: ArcFace checkpoint path or s3:// URI (default: the official file, found like --weights)")
    p.add_argument("--synthetic-weights", action="store_true", help="random weights for every network (offline demos and tests; the report says so)")
    p.add_argument("--weights-dir", default=None, help="folder holding checkpoints under their official names (default: $CODEFORMER_WEIGHTS_DIR)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="faces measured (and restored) together (default 8)")
    p.add_argument("--gallery-size", type=positive_int, default=8, help="faces in each worst/best gallery of the report (default 8)")
    p.add_argument("--limit", type=positive_int, default=None, help="process only the first N inputs in sorted order")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, help=f"reject images with more pixels than this before decoding them (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--uri-column", default=None, help="manifest column holding image URIs (default: the first of uri, source_uri, path, url, image)")
    p.add_argument("--workers", type=positive_int, default=None, help="measuring actors (default: one per GPU, else 1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the networks and metrics run: auto picks GPUs when the cluster has them (default auto)")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray started for this job)")
    _common.add_window_argument(p)
    _common.add_speed_arguments(p)
    _common.add_detect_arguments(p)
    return p


def config_from_args(argv: list[str] | None) -> AuditConfig:
    args = build_parser().parse_args(argv)
    if args.synthetic_weights and (args.weights != "codeformer" or args.arcface_weights or args.detector_weights):
        raise UsageError("--synthetic-weights and --weights/--arcface-weights/--detector-weights exclude each other")
    columns = set(schemas.audit_faces.MEASURES)
    try:
        rules = load_rules(args.thresholds, columns) if args.thresholds else ()
    except OSError as exc:
        raise UsageError(f"cannot read --thresholds {args.thresholds}: {exc}") from None
    restored = {r.column for r in rules} & set(schemas.audit_faces.RESTORED)
    if restored and not args.restore:
        raise UsageError(f"thresholds on {', '.join(sorted(restored))} need --restore")
    skipped = {r.column for r in rules if r.column.removeprefix("restored_") in set(NO_REFERENCE) - set(args.metrics)}
    if skipped:
        raise UsageError(f"thresholds on {', '.join(sorted(skipped))} need those metrics in --metrics")
    return AuditConfig(
        input=args.input,
        output=args.output.rstrip("/"),
        aligned=args.aligned,
        restore=args.restore,
        fidelity=args.fidelity,
        weights=f"{SYNTHETIC_SPEC_PREFIX}1" if args.synthetic_weights else args.weights,
        arcface_weights=args.arcface_weights,
        synthetic_weights=args.synthetic_weights,
        weights_dir=args.weights_dir,
        thresholds=rules,
        metrics=args.metrics,
        batch_size=args.batch_size,
        speed=_common.speed_from_args(args, args.batch_size),
        gallery_size=args.gallery_size,
        limit=args.limit,
        max_pixels=args.max_pixels,
        uri_column=args.uri_column,
        workers=args.workers,
        device=args.device,
        ray_address=args.ray_address,
        window=args.window,
        detect=_common.detect_config(args),
        detector_weights=args.detector_weights,
    )


def run_record(cfg: AuditConfig, weights: WeightsInfo | None) -> dict:
    """What decides the output; a rerun into the same output must match it."""
    return {
        "job": "audit",
        "code_version": f"codeformer-data {codeformer_core.__version__}",
        "aligned": cfg.aligned,
        "max_pixels": cfg.max_pixels,
        "detect": None if cfg.aligned else asdict(cfg.detect),
        "synthetic_weights": cfg.synthetic_weights,
        "restore": {"fidelity": cfg.fidelity, "precision": cfg.speed.precision, "weights_sha256": weights.sha256} if weights else None,
        "thresholds": [asdict(r) for r in cfg.thresholds],
        "metrics": list(cfg.metrics),
    }


def preflight(cfg: AuditConfig) -> tuple[pa.Table, WeightsInfo | None, _ledger.Resume]:
    """Everything that can stop the job, checked before any work is started."""
    inputs = _common.list_inputs(cfg.input, cfg.uri_column, cfg.limit)
    weights = codeformer_weights(cfg.weights, cfg.weights_dir)[1] if cfg.restore else None
    if not cfg.synthetic_weights:
        if _common.needs_detector(cfg.aligned, inputs) or cfg.restore:
            resolve(cfg.detector_weights or cfg.detect.model, weights_dir=cfg.weights_dir)
        if cfg.restore:
            resolve(cfg.arcface_weights or "arcface", weights_dir=cfg.weights_dir)
    try:
        resume = _ledger.prepare(cfg.output, run_record(cfg, weights), FOLDERS)
    except OSError as exc:
        raise UsageError(f"cannot write to output {cfg.output}: {exc}") from None
    return inputs, weights, resume


def plan(cfg: AuditConfig, pending: pa.Table, weights: WeightsInfo | None, run: dict):
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0)) if cfg.device != "cpu" else 0
    if cfg.device == "cuda" and not gpus:
        raise UsageError("--device cuda was asked for, but the Ray cluster has no GPUs")
    workers = cfg.workers or max(gpus, 1)
    threads = None if gpus else max(1, (os.cpu_count() or 1) // workers)
    device = "cuda" if gpus else "cpu"
    cpu_stage = {"batch_format": "numpy", "batch_size": cfg.batch_size, "num_cpus": 0.25}

    def build(part: pa.Table):
        ds = _common.source(part, cfg.batch_size)
        ds = ds.map_batches(_udf.read_images, **cpu_stage)
        ds = ds.map_batches(_udf.decode_images, fn_kwargs={"max_pixels": cfg.max_pixels, "aligned": cfg.aligned}, **cpu_stage)
        if not cfg.aligned:
            if _common.needs_detector(cfg.aligned, part):
                ds = ds.map_batches(
                    _udf.DetectFaces,
                    batch_format="numpy",
                    batch_size=cfg.detect.batch_size,
                    compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
                    num_gpus=0.25 if gpus else 0,
                    num_cpus=0.5,
                    fn_constructor_kwargs={
                        "config": cfg.detect,
                        "weights": cfg.detector_weights,
                        "weights_dir": cfg.weights_dir,
                        "synthetic": cfg.synthetic_weights,
                        "device": device,
                        "threads": threads,
                    },
                )
            ds = ds.map_batches(_udf.align_faces, **cpu_stage)
        restore = arcface = detect = None
        if weights:
            restore = {
                "weights": cfg.weights, "weights_dir": cfg.weights_dir, "expected_sha256": weights.sha256,
                "device": device, "speed": cfg.speed, "fidelity": cfg.fidelity, "threads": threads,
            }
            arcface = {"weights": cfg.arcface_weights, "weights_dir": cfg.weights_dir, "synthetic_seed": 1 if cfg.synthetic_weights else None}
            detect = {"config": cfg.detect, "weights": cfg.detector_weights, "weights_dir": cfg.weights_dir, "synthetic_seed": 1 if cfg.synthetic_weights else None}
        ds = ds.map_batches(
            _audit_stages.MeasureFaces,
            batch_format="numpy",
            batch_size=cfg.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
            num_gpus=0.75 if gpus else 0,
            num_cpus=0.5,
            fn_constructor_kwargs={"metrics": cfg.metrics, "restore": restore, "arcface": arcface, "detect": detect, "device": device, "batch_size": cfg.batch_size, "threads": threads},
        )
        return ds.map_batches(_audit_stages.write_audit, fn_kwargs={"output": cfg.output, "run": run, "rules": cfg.thresholds}, **cpu_stage)

    return _common.windows(build, pending, cfg.batch_size, cfg.window)


def metric_specs(cfg: AuditConfig) -> tuple[MetricSpec, ...]:
    skipped = set(NO_REFERENCE) - set(cfg.metrics)
    specs = METRICS + (RESTORED_METRICS if cfg.restore else ())
    return tuple(m for m in specs if m.name.removeprefix("restored_") not in skipped)


def finish(cfg: AuditConfig) -> tuple[AuditSummary, int]:
    """Stream the committed tables once: the report's summary and the kept-faces manifest."""
    summary = AuditSummary(metric_specs(cfg), gallery_size=cfg.gallery_size)
    for images in _audit_stages.committed_tables(cfg.output, "images", ["status"]):
        for status in images.column("status").to_pylist():
            summary.add_image(status)
    columns = ["image_id", "source_uri", "face_index", "landmarks", "keep", "dropped_by", "thumbnail", "restored_thumbnail"]
    columns += [m.name for m in metric_specs(cfg)]
    kept = 0
    filesystem, path = io.filesystem_and_path(io.join(cfg.output, KEPT_MANIFEST))
    schema = pa.schema([pa.field("source_uri", pa.string()), pa.field("landmarks", pa.list_(pa.list_(pa.float64())))])
    with pq.ParquetWriter(path, schema, filesystem=filesystem) as writer:
        for faces in _audit_stages.committed_tables(cfg.output, "faces", list(dict.fromkeys(columns))):
            manifest: dict[str, list] = {}
            for row in faces.to_pylist():
                restored = row["restored_thumbnail"]
                summary.add_face(
                    key=f"{row['image_id']}_{row['face_index']}",
                    values={m.name: row[m.name] for m in metric_specs(cfg)},
                    size_px=row["face_size"],
                    yaw=row["yaw"] if row["yaw"] is not None else float("nan"),
                    kept=row["keep"],
                    dropped_by=row["dropped_by"],
                    thumbnail=row["thumbnail"]["bytes"],
                    restored=restored["bytes"] if restored else None,
                )
                if row["keep"]:
                    manifest.setdefault(row["source_uri"], []).append(row["landmarks"])
            kept += sum(len(v) for v in manifest.values())
            uris = sorted(manifest)
            landmarks = [None if any(lm is None for lm in manifest[u]) else [[float(v) for v in lm] for lm in manifest[u]] for u in uris]
            writer.write_table(pa.table({"source_uri": uris, "landmarks": landmarks}, schema=schema))
    return summary, kept


def write_report(cfg: AuditConfig, summary: AuditSummary) -> None:
    title = f"Audit of {cfg.input}" + (" (SYNTHETIC WEIGHTS: the figures are not real measurements)" if cfg.synthetic_weights else "")
    thresholds = {r.name: r.limit for r in cfg.thresholds}
    for rel, data in render(summary, thresholds, title).items():
        io.write_bytes(io.join(cfg.output, rel), data)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = config_from_args(argv)
        inputs, weights, resume = preflight(cfg)
    except (UsageError, WeightsError, _ledger.OutputMismatchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.synthetic_weights:
        print(SYNTHETIC_NOTE, file=sys.stderr)
    pending = _common.pending_inputs(inputs, resume)
    statuses = Counter(resume.statuses)
    start = time.monotonic()
    if pending.num_rows:
        try:
            _common.start_ray(cfg.ray_address)
            plans = plan(cfg, pending, weights, run_record(cfg, weights))
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        _common.drive(plans, pending.num_rows, statuses, "audit", "faces")
    print("summarising the written tables for the report", file=sys.stderr)
    summary, kept = finish(cfg)
    _common.release_freed_memory()
    write_report(cfg, summary)
    failures = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()) if k != "ok") or "none"
    totals = summary.totals()
    print(f"inputs {inputs.num_rows}: ok {statuses.get('ok', 0)}; failures: {failures}")
    print(f"faces {totals['faces']}, kept {kept} ({time.monotonic() - start:.1f} s)")
    print(f"output: {cfg.output}/images/, {cfg.output}/faces/, {cfg.output}/{KEPT_MANIFEST}, {cfg.output}/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
