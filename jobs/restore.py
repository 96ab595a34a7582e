"""Restore faces with CodeFormer on Ray Data: images in, restored faces and lineage out to Parquet.

    python -m jobs.restore --input URI --output URI --aligned [options]

Input is a local folder, an s3://bucket/prefix (both listed recursively for jpg, jpeg, png,
webp and bmp files in any case), or a Parquet/CSV manifest with a column of image URIs and,
optionally, a `landmarks` column of five-point landmarks per face (then no detector runs).
Without --aligned, faces are found with RetinaFace, aligned to the FFHQ 512 template, restored
and, with --paste, pasted back into the whole image. Each face is then measured as --metrics
says, with its ArcFace identity similarity to the input unless --no-identity.
Output is Parquet tables under --output: images/ (one row per input, with a status), faces/
(one row per restored face, PNG crops and lineage) and, with --paste, pasted/. Running the same
command again after a crash finishes the output without duplicating rows; a finished output is
left as it is.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass

from jobs import cli
from jobs.cli import UsageError
from jobs.driver import Common, Job, main
from jobs.pipeline import Context, Stage, fused, stage
from jobs.resources import MODEL
from jobs.shared_stages import check_weights, front_stages, measure_stage, restore_stage
from jobs.stages import models
from jobs.stages.restore import write_restored

LAYOUTS = ("separate", "fused")


def add_flags(p: argparse.ArgumentParser) -> None:
    cli.add_restore_flags(p, "always")
    cli.add_measure_flags(p)
    d = cli.add_detect_flags(p)
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


@dataclass(frozen=True)
class RestoreConfig:
    restoration: cli.Restoration
    measures: cli.Measures
    detection: cli.Detection
    detect_layout: str
    paste: bool
    upscale: int
    parse: bool


def configure(args: argparse.Namespace, common: Common) -> RestoreConfig:
    if common.aligned and args.paste:
        raise UsageError("--paste needs whole images; with --aligned there is nothing to paste into")
    if args.parse and not args.paste:
        raise UsageError("--parse changes how faces are pasted back; it needs --paste")
    return RestoreConfig(
        cli.restoration(args, common.synthetic), cli.measures(args, restoring=True), cli.detection(args), args.detect_layout, args.paste, args.upscale, args.parse,
    )


def preflight(common: Common, cfg: RestoreConfig, detecting: bool) -> dict:
    weights = check_weights(common, cfg.restoration, cfg.detection if detecting else None, cfg.measures, cfg.parse)
    return {
        "weights_sha256": weights.sha256, "weights_synthetic": weights.synthetic, "fidelity": cfg.restoration.fidelity,
        "precision": cfg.restoration.speed.precision, "arcface_weights": cfg.measures.arcface_weights if cfg.measures.identity else None,
        "aligned": common.aligned, "max_pixels": common.max_pixels, "detect": None if common.aligned else asdict(cfg.detection.config),
        "upscale": cfg.upscale if cfg.paste else None, "parse": cfg.parse, "metrics": list(cfg.measures.metrics), "identity": cfg.measures.identity,
    }


def stages(common: Common, cfg: RestoreConfig, ctx: Context) -> list[Stage]:
    found = front_stages(common, cfg.detection, ctx)
    restore = restore_stage(common, cfg.restoration, ctx, ctx.record["weights_sha256"])
    if ctx.detecting and cfg.detect_layout == "fused":
        found = found[:2] + [fused(*found[2:], restore)]
    else:
        found.append(restore)
    if cfg.measures.metrics or cfg.measures.identity:
        found.append(measure_stage(common, cfg.measures, ctx))
    if cfg.paste:
        found.append(stage(models.PasteFaces, MODEL, upscale=cfg.upscale, parse=cfg.parse, weights_dir=common.weights_dir, synthetic=ctx.synthetic))
    return found + [stage(models.encode_faces, columns=("crops", "restored")), stage(write_restored, output=common.output, run=ctx.record)]


JOB = Job("restore", __doc__, ("images", "faces", "pasted"), "faces", "restored", add_flags, configure, preflight, stages)

if __name__ == "__main__":
    sys.exit(main(JOB))
