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

from codeformer_core.detect import DetectConfig
from codeformer_core.restore import Speed
from codeformer_core.weights import WeightsNotFoundError, codeformer_weights, resolve
from jobs import cli
from jobs.cli import UsageError
from jobs.driver import Common, Job, main
from jobs.pipeline import Context, Stage, fused, stage
from jobs.resources import MODEL
from jobs.stages import front, models
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
    weights: str
    fidelity: float
    speed: Speed
    metrics: tuple[str, ...]
    identity: bool
    arcface_weights: str | None
    detect: DetectConfig
    detector_weights: str | None
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
        weights=common.spec(args.weights), fidelity=args.fidelity, speed=cli.speed(args), metrics=args.metrics,
        identity=not args.no_identity, arcface_weights=args.arcface_weights, detect=cli.detect_config(args),
        detector_weights=args.detector_weights, detect_layout=args.detect_layout, paste=args.paste, upscale=args.upscale, parse=args.parse,
    )


def preflight(common: Common, cfg: RestoreConfig, detecting: bool) -> dict:
    _, weights = codeformer_weights(cfg.weights, common.weights_dir)
    if not weights.synthetic:
        if detecting:
            resolve(cfg.detector_weights or cfg.detect.model, weights_dir=common.weights_dir)
        if cfg.parse:
            resolve("parsenet", weights_dir=common.weights_dir)
        if cfg.identity:
            try:
                resolve(cfg.arcface_weights or "arcface", weights_dir=common.weights_dir)
            except WeightsNotFoundError as exc:
                raise WeightsNotFoundError(f"{exc}\nIdentity similarity needs ArcFace; --no-identity restores without it.") from None
    return {
        "weights_sha256": weights.sha256, "weights_synthetic": weights.synthetic, "fidelity": cfg.fidelity,
        "precision": cfg.speed.precision, "arcface_weights": cfg.arcface_weights if cfg.identity else None,
        "aligned": common.aligned, "max_pixels": common.max_pixels, "detect": None if common.aligned else asdict(cfg.detect),
        "upscale": cfg.upscale if cfg.paste else None, "parse": cfg.parse, "metrics": list(cfg.metrics), "identity": cfg.identity,
    }


def stages(common: Common, cfg: RestoreConfig, ctx: Context) -> list[Stage]:
    synthetic = ctx.record["weights_synthetic"]
    device = ctx.place.device
    detect = stage(front.DetectFaces, MODEL, 1, cfg.detect.batch_size, config=cfg.detect, weights=cfg.detector_weights,
                   weights_dir=common.weights_dir, synthetic=common.synthetic, device=device)
    restore = stage(models.RestoreFaces, MODEL, 2, weights=cfg.weights, weights_dir=common.weights_dir,
                    expected_sha256=ctx.record["weights_sha256"], device=device, speed=cfg.speed, fidelity=cfg.fidelity)
    found = [stage(front.read_images), stage(front.decode_images, max_pixels=common.max_pixels, aligned=common.aligned)]
    if ctx.detecting and cfg.detect_layout == "fused":
        found.append(fused(detect, stage(front.align_faces), restore))
    else:
        found += ([detect] if ctx.detecting else []) + ([] if common.aligned else [stage(front.align_faces)]) + [restore]
    if cfg.metrics or cfg.identity:
        identity = {"weights": cfg.arcface_weights, "weights_dir": common.weights_dir, "synthetic_seed": 1 if synthetic else None} if cfg.identity else None
        found.append(stage(models.MeasureFaces, MODEL, 1, metrics=cfg.metrics, identity=identity, lmd=None, device=device, batch_size=ctx.block))
    if cfg.paste:
        found.append(stage(models.PasteFaces, MODEL, upscale=cfg.upscale, parse=cfg.parse, weights_dir=common.weights_dir, synthetic=synthetic))
    return found + [stage(models.encode_faces, columns=("crops", "restored")), stage(write_restored, output=common.output, run=ctx.record)]


JOB = Job("restore", __doc__, ("images", "faces", "pasted"), "faces", "restored", add_flags, configure, preflight, stages)

if __name__ == "__main__":
    sys.exit(main(JOB))
