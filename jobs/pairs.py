"""Make LQ/HQ training pairs with the CodeFormer degradation model on Ray Data.

    python -m jobs.pairs --input URI --output URI --preset codeformer-paper --seed S [--aligned]

Each face (an aligned input with --aligned; otherwise every face RetinaFace finds, or the
manifest's `landmarks` give, aligned to the FFHQ 512 template) is the HQ image of
--pairs-per-image pairs. Each pair's parameters come from (--seed, image id, face, pair) alone:
the same command gives byte-identical pairs on any number of workers, at any batch size, and
on reruns, on the same hardware and software. Output: images/ (one row per input, with a
status) and pairs/ (hq and lq PNGs, every parameter as a column) under --output, and with
--format webdataset also shards/*.tar. A rerun after a crash finishes the output without
duplicating rows.
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
from codeformer_core.degrade import PRESETS, DegradeConfig, config_from_mapping, load_config
from codeformer_core.detect import DetectConfig
from codeformer_core.weights import WeightsError, resolve
from jobs import _common, _ledger, _pair_stages, _udf
from jobs._common import UsageError, positive_int

FOLDERS = ("images", "pairs", "shards")
RANGE_FLAGS = ("sigma", "scale", "noise", "jpeg")


@dataclass(frozen=True)
class PairsConfig:
    input: str
    output: str
    preset: DegradeConfig
    seed: int
    aligned: bool
    pairs_per_image: int
    batch_size: int
    format: str
    limit: int | None
    max_pixels: int
    uri_column: str | None
    workers: int | None
    device: str
    ray_address: str | None
    window: int | None
    detect: DetectConfig
    detector_weights: str | None
    synthetic_detector: bool
    weights_dir: str | None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.pairs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="folder, s3://bucket/prefix, or a .parquet/.csv manifest of image URIs")
    p.add_argument("--output", required=True, help="folder or s3://bucket/prefix for the images/ and pairs/ tables")
    p.add_argument("--preset", choices=(*PRESETS, "custom"), default="codeformer-paper", help="degradation ranges: " + "; ".join(
        f"{c.name}: sigma {list(c.sigma)}, r {list(c.scale)}, noise {list(c.noise)}, q {list(c.jpeg)}" for c in PRESETS.values()
    ) + "; custom: --config and/or the range flags, starting from codeformer-paper (default codeformer-paper)")
    p.add_argument("--config", default=None, help="with --preset custom: a .json/.yaml file of settings (kernel_size, iso_prob, sigma, scale, noise, jpeg, jitter_prob, jitter_shift, grey_prob)")
    for name, what in (("sigma", "blur sigma"), ("scale", "downsampling factor r"), ("noise", "noise sigma, 0..255 scale"), ("jpeg", "JPEG quality")):
        p.add_argument(f"--{name}", nargs=2, type=float, metavar=("LOW", "HIGH"), default=None, help=f"with --preset custom: the {what} range")
    p.add_argument("--seed", type=int, default=0, help="global seed; with the image ids it decides every parameter (default 0)")
    p.add_argument("--aligned", action="store_true", help="inputs are aligned faces (resized to 512x512 when needed); no detection")
    p.add_argument("--pairs-per-image", type=positive_int, default=1, help="pairs made from each face, each with its own parameters (default 1)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="faces degraded together on the device (default 8)")
    p.add_argument("--format", choices=("parquet", "webdataset"), default="parquet", help="webdataset also writes shards/*.tar with {key}.hq.png, {key}.lq.png and {key}.json (default parquet)")
    p.add_argument("--limit", type=positive_int, default=None, help="process only the first N inputs in sorted order")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, help=f"reject images with more pixels than this before decoding them (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--uri-column", default=None, help="manifest column holding image URIs (default: the first of uri, source_uri, path, url, image)")
    p.add_argument("--workers", type=positive_int, default=None, help="degradation actors (default: one per GPU, else one per CPU core)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where blur and resizes run: auto picks GPUs when the cluster has them (default auto)")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray started for this job)")
    _common.add_window_argument(p)
    p.add_argument("--weights-dir", default=None, help="folder holding the detector checkpoint under its official name (default: $CODEFORMER_WEIGHTS_DIR)")
    d = _common.add_detect_arguments(p)
    d.add_argument("--synthetic-detector", action="store_true", help="random detector weights (offline tests and demos only)")
    return p


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


def config_from_args(argv: list[str] | None) -> PairsConfig:
    args = build_parser().parse_args(argv)
    return PairsConfig(
        input=args.input,
        output=args.output.rstrip("/"),
        preset=degrade_config(args),
        seed=args.seed,
        aligned=args.aligned,
        pairs_per_image=args.pairs_per_image,
        batch_size=args.batch_size,
        format=args.format,
        limit=args.limit,
        max_pixels=args.max_pixels,
        uri_column=args.uri_column,
        workers=args.workers,
        device=args.device,
        ray_address=args.ray_address,
        window=args.window,
        detect=_common.detect_config(args),
        detector_weights=args.detector_weights,
        synthetic_detector=args.synthetic_detector,
        weights_dir=args.weights_dir,
    )


def run_record(cfg: PairsConfig) -> dict:
    """What decides the output's bytes; a rerun into the same output must match it."""
    return {
        "job": "pairs",
        "code_version": f"codeformer-data {codeformer_core.__version__}",
        "preset": asdict(cfg.preset),
        "seed": cfg.seed,
        "pairs_per_image": cfg.pairs_per_image,
        "aligned": cfg.aligned,
        "max_pixels": cfg.max_pixels,
        "detect": None if cfg.aligned else asdict(cfg.detect),
        "synthetic_detector": cfg.synthetic_detector,
        "format": cfg.format,
    }


def preflight(cfg: PairsConfig) -> tuple[pa.Table, _ledger.Resume]:
    inputs = _common.list_inputs(cfg.input, cfg.uri_column, cfg.limit)
    if _common.needs_detector(cfg.aligned, inputs) and not cfg.synthetic_detector:
        resolve(cfg.detector_weights or cfg.detect.model, weights_dir=cfg.weights_dir)
    try:
        resume = _ledger.prepare(cfg.output, run_record(cfg), FOLDERS)
    except OSError as exc:
        raise UsageError(f"cannot write to output {cfg.output}: {exc}") from None
    return inputs, resume


def plan(cfg: PairsConfig, pending: pa.Table, run: dict):
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0)) if cfg.device != "cpu" else 0
    if cfg.device == "cuda" and not gpus:
        raise UsageError("--device cuda was asked for, but the Ray cluster has no GPUs")
    workers = cfg.workers or (gpus or max(1, int(ray.cluster_resources().get("CPU", 1))))
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
                    compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1 if not gpus else gpus),
                    num_gpus=0.25 if gpus else 0,
                    num_cpus=0.5,
                    fn_constructor_kwargs={
                        "config": cfg.detect,
                        "weights": cfg.detector_weights,
                        "weights_dir": cfg.weights_dir,
                        "synthetic": cfg.synthetic_detector,
                        "device": device,
                        "threads": None if gpus else os.cpu_count(),
                    },
                )
            ds = ds.map_batches(_udf.align_faces, **cpu_stage)
        ds = ds.map_batches(
            _pair_stages.MakePairs,
            batch_format="numpy",
            batch_size=cfg.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
            num_gpus=0.75 if gpus else 0,
            num_cpus=0.5,
            fn_constructor_kwargs={
                "config": cfg.preset, "seed": cfg.seed, "pairs_per_face": cfg.pairs_per_image, "batch_size": cfg.batch_size, "device": device,
            },
        )
        return ds.map_batches(_pair_stages.write_pairs, fn_kwargs={"output": cfg.output, "run": run}, **cpu_stage)

    return _common.windows(build, pending, cfg.batch_size, cfg.window)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = config_from_args(argv)
        inputs, resume = preflight(cfg)
    except (UsageError, WeightsError, _ledger.OutputMismatchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pending = _common.pending_inputs(inputs, resume)
    statuses = Counter(resume.statuses)
    start = time.monotonic()
    made = 0
    if pending.num_rows:
        try:
            _common.start_ray(cfg.ray_address)
            plans = plan(cfg, pending, run_record(cfg))
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        made = _common.drive(plans, pending.num_rows, statuses, "pairs", "pairs")
    seconds = time.monotonic() - start
    failures = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()) if k != "ok") or "none"
    print(f"inputs {inputs.num_rows}: ok {statuses.get('ok', 0)}; failures: {failures}")
    print(f"pairs {resume.items + made} ({made / seconds if made else 0:.2f} pairs/s this run, {seconds:.1f} s), preset {cfg.preset.name}, seed {cfg.seed}")
    print(f"output: {cfg.output}/images/ and {cfg.output}/pairs/" + (f" and {cfg.output}/shards/" if cfg.format == "webdataset" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
