"""Audit a face corpus: find, align and measure every face, keep or drop it by thresholds, report.

    python -m jobs.audit --input URI --output URI [--restore] [--thresholds FILE]

Each face (every face RetinaFace finds in a whole image, the manifest's `landmarks`, or the
image itself with --aligned) gets its face facts (detection score, size, eye distance, yaw and
roll from the 5 landmarks) and no-reference quality metrics (sharpness, noise, JPEG
blockiness, brightness, contrast, colourfulness, NIQE). With --restore, CodeFormer restores it
and the same metrics of the result, the ArcFace identity similarity between input and result,
and the landmark distance (LMD) between them, are added. Videos are listed next to images and
sampled at 1 frame a second unless --fps or --every-n-frames says otherwise. Output under
--output: images/ (one row per input; one per segment of a video), frames/ (one row per kept
frame of a video) and faces/ (one row per face, with `keep` and `dropped_by` from --thresholds),
kept.parquet (a manifest of the kept faces: source_uri and landmarks, which the other jobs take
as --input), and report.html with figures/*.png. The report is built from the written tables by
a streaming pass whose memory and output size do not grow with the corpus. A rerun after a
crash finishes the output.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

import schemas.audit_faces
from codeformer_core import storage
from codeformer_core.metrics import NO_REFERENCE
from codeformer_core.report import render
from codeformer_core.thresholds import Rule, load_rules
from jobs import cli
from jobs.audit_report import KEPT_MANIFEST, summarize
from jobs.cli import UsageError, positive_int
from jobs.driver import Common, Job, main
from jobs.memory import release_freed_memory
from jobs.pipeline import Context, Stage, stage
from jobs.shared_stages import check_weights, front_stages, measure_stage, restore_stage
from jobs.stages import models
from jobs.stages.audit import thumbnails, write_audit
from jobs import tracks


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--thresholds", default=None, help='JSON/YAML file of keep rules, e.g. {"sharpness": {"min": 20}, "niqe": {"max": 12}, "yaw": {"abs_max": 45}}; bounds: min, max, abs_max on any measured column (default: keep every face)')
    p.add_argument("--gallery-size", type=positive_int, default=8, help="faces in each worst/best gallery of the report (default 8)")
    p.add_argument("--restore", action="store_true", help="also restore each face with CodeFormer and measure the result and its identity similarity to the input")
    cli.add_restore_flags(p, "with --restore")
    cli.add_measure_flags(p)
    cli.add_video_flags(p, 1.0)
    cli.add_detect_flags(p)


@dataclass(frozen=True)
class AuditConfig:
    restoration: cli.Restoration | None  # with --restore
    measures: cli.Measures
    thresholds: tuple[Rule, ...]
    gallery_size: int
    detection: cli.Detection


def configure(args: argparse.Namespace, common: Common) -> AuditConfig:
    try:
        rules = load_rules(args.thresholds, set(schemas.audit_faces.MEASURES)) if args.thresholds else ()
    except OSError as exc:
        raise UsageError(f"cannot read --thresholds {args.thresholds}: {exc}") from None
    restored = {r.column for r in rules} & set(schemas.audit_faces.RESTORED)
    if restored and not args.restore:
        raise UsageError(f"thresholds on {', '.join(sorted(restored))} need --restore")
    skipped = {r.column for r in rules if r.column.removeprefix("restored_") in set(NO_REFERENCE) - set(args.metrics)}
    if skipped:
        raise UsageError(f"thresholds on {', '.join(sorted(skipped))} need those metrics in --metrics")
    unmeasured = {r.column for r in rules if r.column.startswith("ids_")}
    if unmeasured and args.no_identity:
        raise UsageError(f"thresholds on {', '.join(sorted(unmeasured))} need identity similarity; leave out --no-identity")
    restoration = cli.restoration(args, common.synthetic) if args.restore else None
    return AuditConfig(restoration, cli.measures(args, args.restore), rules, args.gallery_size, cli.detection(args))


def preflight(common: Common, cfg: AuditConfig, detecting: bool) -> dict:
    weights = check_weights(common, cfg.restoration, cfg.detection if detecting or cfg.restoration else None, cfg.measures)
    r = cfg.restoration
    restore = {"fidelity": r.fidelity, "precision": r.speed.precision, "weights_sha256": weights.sha256, "identity": cfg.measures.identity} if r else None
    return {
        "aligned": common.aligned, "max_pixels": common.max_pixels, "detect": None if common.aligned else asdict(cfg.detection.config),
        "synthetic_weights": common.synthetic, "restore": restore, "thresholds": [asdict(r) for r in cfg.thresholds], "metrics": list(cfg.measures.metrics),
    }


def stages(common: Common, cfg: AuditConfig, ctx: Context) -> list[Stage]:
    restoring = cfg.restoration is not None
    found = front_stages(common, cfg.detection, ctx, restoring)
    if restoring:
        found.append(restore_stage(common, cfg.restoration, ctx, ctx.record["restore"]["weights_sha256"]))
    found += [measure_stage(common, cfg.measures, ctx, cfg.detection if restoring else None), stage(thumbnails)]
    if restoring:
        found.append(stage(models.encode_faces, columns=("restored",)))
    return found + [stage(write_audit, output=common.output, run=ctx.record, rules=cfg.thresholds)]


def finish(common: Common, cfg: AuditConfig, changed: bool) -> list[str]:
    report = storage.join(common.output, "report.html")
    if not changed and storage.file_size(report) is not None:
        return [f"nothing new to summarise: {common.output}/{KEPT_MANIFEST} and {report} are as the earlier run left them"]
    print("summarising the written tables for the report", file=sys.stderr)
    summary, kept = summarize(common.output, cfg.restoration is not None, cfg.measures, cfg.gallery_size)
    release_freed_memory()
    title = f"Audit of {common.input}" + (" (SYNTHETIC WEIGHTS: the figures are not real measurements)" if common.synthetic else "")
    record = storage.join(common.output, tracks.RECORD)
    found = json.loads(storage.read_bytes(record)) if storage.file_size(record) is not None else None
    for rel, data in render(summary, {r.name: r.limit for r in cfg.thresholds}, title, found).items():
        storage.write_bytes(storage.join(common.output, rel), data)
    return [f"kept {kept} of {summary.totals()['faces']} faces: {common.output}/{KEPT_MANIFEST}; report: {report}"]


JOB = Job("audit", __doc__, ("images", "faces", "frames"), "faces", "measured", add_flags, configure, preflight, stages, finish,
          track_crops=tracks.Crops("restored_thumbnail", "thumbnail"))

if __name__ == "__main__":
    sys.exit(main(JOB))
