"""Make LQ/HQ training pairs with the CodeFormer degradation model on Ray Data.

    python -m jobs.pairs --input URI --output URI --preset codeformer-paper --seed S [--aligned]

Each face (an aligned input with --aligned; otherwise every face RetinaFace finds, or the
manifest's `landmarks` give, aligned to the FFHQ 512 template) is the HQ image of
--pairs-per-image pairs. Videos are listed next to images, and each kept frame (1 a second unless
--fps or --every-n-frames says otherwise) is an image of its own. Each pair's parameters come from (--seed, image id, face, pair) alone:
the same command gives byte-identical pairs on any number of workers, at any batch size, and
on reruns, on the same hardware and software. Output: images/ (one row per input, with a
status; one per segment of a video), frames/ (one row per kept frame of a video) and pairs/ (hq and lq PNGs, every parameter as a column) under --output, and with
--format webdataset also shards/*.tar. A rerun after a crash finishes the output without
duplicating rows.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass

from codeformer_core.degrade import PRESETS, DegradeConfig, config_from_mapping, load_config
from jobs import cli
from jobs.cli import UsageError, positive_int
from jobs.driver import Common, Job, main
from jobs.pipeline import Context, Stage, stage
from jobs.resources import PER_CORE
from jobs.shared_stages import check_weights, front_stages
from jobs.stages.pairs import MakePairs, write_pairs

RANGE_FLAGS = ("sigma", "scale", "noise", "jpeg")


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=(*PRESETS, "custom"), default="codeformer-paper", help="degradation ranges: " + "; ".join(
        f"{c.name}: sigma {list(c.sigma)}, r {list(c.scale)}, noise {list(c.noise)}, q {list(c.jpeg)}" for c in PRESETS.values()
    ) + "; custom: --config and/or the range flags, starting from codeformer-paper (default codeformer-paper)")
    p.add_argument("--config", default=None, help="with --preset custom: a .json/.yaml file of settings (kernel_size, iso_prob, sigma, scale, noise, jpeg, jitter_prob, jitter_shift, grey_prob)")
    for name, what in (("sigma", "blur sigma"), ("scale", "downsampling factor r"), ("noise", "noise sigma, 0..255 scale"), ("jpeg", "JPEG quality")):
        p.add_argument(f"--{name}", nargs=2, type=float, metavar=("LOW", "HIGH"), default=None, help=f"with --preset custom: the {what} range")
    p.add_argument("--seed", type=int, default=0, help="global seed; with the image ids it decides every parameter (default 0)")
    p.add_argument("--pairs-per-image", type=positive_int, default=1, help="pairs made from each face, each with its own parameters (default 1)")
    p.add_argument("--format", choices=("parquet", "webdataset"), default="parquet", help="webdataset also writes shards/*.tar with {key}.hq.png, {key}.lq.png and {key}.json (default parquet)")
    cli.add_video_flags(p, 1.0)
    cli.add_detect_flags(p)


@dataclass(frozen=True)
class PairsConfig:
    preset: DegradeConfig
    seed: int
    pairs_per_image: int
    format: str
    detection: cli.Detection


def degrade_config(args: argparse.Namespace) -> DegradeConfig:
    flags = {name: getattr(args, name) for name in RANGE_FLAGS if getattr(args, name) is not None}
    if args.preset != "custom":
        if flags or args.config:
            raise UsageError("--config and the range flags (--sigma, --scale, --noise, --jpeg) need --preset custom")
        return PRESETS[args.preset]
    if not flags and not args.config:
        raise UsageError("--preset custom needs --config FILE or at least one of --sigma, --scale, --noise, --jpeg")
    try:
        base = load_config(args.config) if args.config else PRESETS["codeformer-paper"]
    except OSError as exc:
        raise UsageError(f"cannot read --config {args.config}: {exc}") from None
    return config_from_mapping({**{k: v for k, v in asdict(base).items() if k != "name"}, **flags})


def configure(args: argparse.Namespace, common: Common) -> PairsConfig:
    return PairsConfig(degrade_config(args), args.seed, args.pairs_per_image, args.format, cli.detection(args))


def preflight(common: Common, cfg: PairsConfig, detecting: bool) -> dict:
    check_weights(common, None, cfg.detection if detecting else None, None)
    return {
        "preset": asdict(cfg.preset), "seed": cfg.seed, "pairs_per_image": cfg.pairs_per_image, "aligned": common.aligned,
        "max_pixels": common.max_pixels, "detect": None if common.aligned else asdict(cfg.detection.config), "synthetic_weights": common.synthetic, "format": cfg.format,
    }


def stages(common: Common, cfg: PairsConfig, ctx: Context) -> list[Stage]:
    found = front_stages(common, cfg.detection, ctx)
    found.append(stage(MakePairs, PER_CORE, 3, config=cfg.preset, seed=cfg.seed, pairs_per_face=cfg.pairs_per_image, batch_size=ctx.block, device=ctx.place.device))
    return found + [stage(write_pairs, output=common.output, run=ctx.record)]


def finish(common: Common, cfg: PairsConfig, changed: bool) -> list[str]:
    return [f"preset {cfg.preset.name}, seed {cfg.seed}"]


JOB = Job("pairs", __doc__, ("images", "pairs", "shards", "frames"), "pairs", "made", add_flags, configure, preflight, stages, finish)

if __name__ == "__main__":
    sys.exit(main(JOB))
