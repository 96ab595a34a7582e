"""Restore faces with CodeFormer on Ray Data: images in, restored faces and lineage out to Parquet.

    python -m jobs.restore --input URI --output URI --aligned [options]

Input is a local folder, an s3://bucket/prefix (both listed recursively for jpg, jpeg, png,
webp and bmp files in any case), or a Parquet/CSV manifest with a column of image URIs and,
optionally, a `landmarks` column of five-point landmarks per face (then no detector runs).
Without --aligned, faces are found with RetinaFace, aligned to the FFHQ 512 template, restored
and, with --paste, pasted back into the whole image. Each face is then measured as --metrics
says, with its ArcFace identity similarity to the input unless --no-identity.
Videos (mp4, mov, avi, mkv, webm) are listed next to images; every frame is restored unless
--every-n-frames or --fps says otherwise, and a video is cut into segments of --segment-frames
that run side by side.
Output is Parquet tables under --output: images/ (one row per input, with a status; one per
segment of a video), faces/ (one row per restored face, its crops as --image-format says, and
lineage), frames/ (one row per kept frame of a video), tracks/ and face_tracks/ (faces followed
through each video), with --paste pasted/, and with --write-video videos/<image_id>.mp4. Running the same
command again after a crash finishes the output without duplicating rows; a finished output is
left as it is.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass

from codeformer_core.codec import Encoding
from codeformer_core.upsample import DEFAULT_TILE, TILE_PAD, realesrgan_weights
from jobs import cli
from jobs.cli import UsageError
from jobs.driver import Common, Job, main
from jobs.pipeline import Context, Stage, fused, stage
from jobs.resources import MODEL
from jobs.shared_stages import check_weights, front_stages, measure_stage, restore_stage
from jobs.stages import models
from jobs.stages.restore import write_restored
from jobs.tracks import Crops
from jobs.video_out import VideoOut

LAYOUTS = ("separate", "fused")


def add_flags(p: argparse.ArgumentParser) -> None:
    cli.add_restore_flags(p, "always")
    cli.add_measure_flags(p)
    cli.add_video_flags(p, None)
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
    d.add_argument(
        "--upscale", type=int, choices=(1, 2, 4), default=1,
        help="size factor of pasted images (official --upscale); the background is resized (Lanczos) unless --bg-upsampler says otherwise (default 1)",
    )
    d.add_argument("--parse", action="store_true", help="with --paste, blend with a ParseNet face-parsing mask instead of the soft square")
    cli.add_image_flags(p, "restored faces, input crops and pasted images").add_argument(
        "--no-input-crop", action="store_true",
        help="leave faces/ input_crop null: it can be made again from the input and the row's affine, and writing it is half the "
        "job's encoding work",
    )
    v = p.add_argument_group("restored videos (the official script's video output)")
    v.add_argument(
        "--write-video", action="store_true",
        help="also write videos/<image_id>.mp4 for each input video: every frame pasted (as --paste, which it implies), H.264, "
        "with the source's audio copied; needs every frame (no --every-n-frames or --fps)",
    )
    v.add_argument("--video-fps", type=cli.positive_float, default=None, help="frame rate of the written videos (default: the source's)")
    v.add_argument("--video-crf", type=int, choices=range(0, 52), metavar="0..51", default=18, help="H.264 quality of the written videos: lower is better and larger (default 18)")
    u = p.add_argument_group("upsampling with Real-ESRGAN (the official --bg_upsampler, --face_upsample and --bg_tile)")
    u.add_argument(
        "--bg-upsampler", choices=("none", "realesrgan"), default="none",
        help="realesrgan: upsample the background of pasted images by --upscale (2 or 4) with Real-ESRGAN "
        "x2plus or x4plus instead of resizing it; needs --paste (default none)",
    )
    u.add_argument(
        "--face-upsample", action="store_true",
        help="run each restored face through Real-ESRGAN before pasting it, as the official --face_upsample; needs --paste and --upscale 2 or 4",
    )
    u.add_argument(
        "--bg-tile", type=cli.non_negative_int, default=DEFAULT_TILE,
        help=f"Real-ESRGAN works in tiles of this many pixels, each with {TILE_PAD} pixels of context, to bound memory; "
        f"0: whole images at once (default {DEFAULT_TILE})",
    )
    u.add_argument(
        "--upsampler-weights", default=None,
        help="Real-ESRGAN checkpoint of the --upscale factor: path or s3:// URI (default: the official RealESRGAN_x2plus.pth "
        "or RealESRGAN_x4plus.pth, found as the README says)",
    )


@dataclass(frozen=True)
class RestoreConfig:
    restoration: cli.Restoration
    measures: cli.Measures
    detection: cli.Detection
    detect_layout: str
    paste: bool
    upscale: int
    parse: bool
    upsample_background: bool
    upsample_faces: bool
    upsampler: dict | None  # Upsampler.from_weights' arguments but the device, when either upsamples
    video_out: VideoOut | None  # --write-video
    encoding: Encoding
    input_crop: bool  # write faces/ input_crop


def configure(args: argparse.Namespace, common: Common) -> RestoreConfig:
    if args.write_video and (args.every_n_frames or args.fps):
        raise UsageError("--write-video needs every frame restored: leave out --every-n-frames and --fps (--video-fps sets the written rate)")
    if (args.video_fps or args.video_crf != 18) and not args.write_video:
        raise UsageError("--video-fps and --video-crf are settings of --write-video")
    args.paste = args.paste or args.write_video
    if common.aligned and args.paste:
        raise UsageError(f"{'--write-video' if args.write_video else '--paste'} needs whole images; with --aligned there is nothing to paste into")
    if args.parse and not args.paste:
        raise UsageError("--parse changes how faces are pasted back; it needs --paste")
    background, faces = args.bg_upsampler == "realesrgan", args.face_upsample
    if (background or faces) and not args.paste:
        raise UsageError(f"{'--bg-upsampler realesrgan' if background else '--face-upsample'} upsamples pasted images; it needs --paste")
    if (background or faces) and args.upscale == 1:
        raise UsageError("Real-ESRGAN upsamples by 2 or 4: add --upscale 2 (as the official default) or --upscale 4")
    upsampler = {
        "scale": args.upscale, "weights": args.upsampler_weights, "weights_dir": common.weights_dir,
        "synthetic_seed": 1 if common.synthetic else None, "tile": args.bg_tile,
    } if background or faces else None
    return RestoreConfig(
        cli.restoration(args, common.synthetic), cli.measures(args, restoring=True), cli.detection(args), args.detect_layout, args.paste,
        args.upscale, args.parse, background, faces, upsampler, VideoOut(args.video_fps, args.video_crf) if args.write_video else None,
        cli.encoding(args), not args.no_input_crop,
    )


def preflight(common: Common, cfg: RestoreConfig, detecting: bool) -> dict:
    weights = check_weights(common, cfg.restoration, cfg.detection if detecting else None, cfg.measures, cfg.parse)
    upsampler = None
    if cfg.upsampler:
        info = realesrgan_weights(cfg.upsampler["scale"], cfg.upsampler["weights"], common.weights_dir, cfg.upsampler["synthetic_seed"])[1]
        upsampler = {"weights_sha256": info.sha256, "background": cfg.upsample_background, "faces": cfg.upsample_faces, "tile": cfg.upsampler["tile"], "tile_pad": TILE_PAD}
    return {
        "weights_sha256": weights.sha256, "weights_synthetic": weights.synthetic, "fidelity": cfg.restoration.fidelity,
        "precision": cfg.restoration.speed.precision, "arcface_weights": cfg.measures.arcface_weights if cfg.measures.identity else None,
        "aligned": common.aligned, "max_pixels": common.max_pixels, "detect": None if common.aligned else asdict(cfg.detection.config),
        "upscale": cfg.upscale if cfg.paste else None, "parse": cfg.parse, "metrics": list(cfg.measures.metrics), "identity": cfg.measures.identity,
        "upsampler": upsampler, "video_out": asdict(cfg.video_out) if cfg.video_out else None,
        "encoding": asdict(cfg.encoding), "input_crop": cfg.input_crop,
    }


def stages(common: Common, cfg: RestoreConfig, ctx: Context) -> list[Stage]:
    found = front_stages(common, cfg.detection, ctx, restoring=True)
    restore = restore_stage(common, cfg.restoration, ctx, ctx.record["weights_sha256"])
    if ctx.detecting and cfg.detect_layout == "fused":
        found = found[:2] + [fused(*found[2:], restore)]
    else:
        found.append(restore)
    if cfg.measures.metrics or cfg.measures.identity:
        found.append(measure_stage(common, cfg.measures, ctx))
    if cfg.paste:
        found.append(stage(models.PasteFaces, MODEL, upscale=cfg.upscale, parse=cfg.parse, weights_dir=common.weights_dir, synthetic=ctx.synthetic,
                           device=ctx.place.device, upsampler=cfg.upsampler, background=cfg.upsample_background, faces=cfg.upsample_faces,
                           encoding=cfg.encoding))
    encoded = stage(models.encode_faces, columns=("crops", "restored") if cfg.input_crop else ("restored",), encoding=cfg.encoding)
    return found + [encoded, stage(write_restored, output=common.output, run=ctx.record, encoding=cfg.encoding)]


JOB = Job("restore", __doc__, ("images", "faces", "pasted", "frames"), "faces", "restored", add_flags, configure, preflight, stages,
          track_crops=Crops("restored", "input_crop"), writes_video=lambda cfg: cfg.video_out)

if __name__ == "__main__":
    sys.exit(main(JOB))
