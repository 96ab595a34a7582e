"""Restore faces with CodeFormer on Ray Data: images in, restored faces and lineage out to Parquet.

    python -m jobs.restore --input URI --output URI --aligned [options]

Input is a local folder, an s3://bucket/prefix (both listed recursively for jpg, jpeg, png,
webp and bmp files in any case), or a Parquet/CSV manifest with a column of image URIs.
Output is two Parquet tables under --output: images/ (one row per input, with a status) and
faces/ (one row per restored face, PNG crops). Running the same command again after a crash
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

import pyarrow as pa

import codeformer_core
from codeformer_core import io
from codeformer_core.codec import DEFAULT_MAX_PIXELS
from codeformer_core.weights import SYNTHETIC_SPEC_PREFIX, WeightsError, WeightsInfo, codeformer_weights
from jobs import _ledger, _udf

TABLES = ("images", "faces")
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
    return p


def config_from_args(argv: list[str] | None) -> RestoreConfig:
    args = build_parser().parse_args(argv)
    if not args.aligned:
        raise UsageError(
            "only --aligned inputs are supported yet: face detection and alignment of whole images "
            "has not landed. Pass --aligned if every input is an aligned face crop."
        )
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
    )


def image_id(uri: str) -> str:
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:20]


def list_inputs(cfg: RestoreConfig) -> list[str]:
    """Input URIs, each once, in sorted order, cut to --limit."""
    try:
        if io.is_manifest(cfg.input):
            uris = io.read_manifest(cfg.input, cfg.uri_column).column("source_uri").to_pylist()
        else:
            uris = io.list_images(cfg.input)
    except FileNotFoundError:
        raise UsageError(f"input {cfg.input} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read input {cfg.input}: {exc}") from None
    unique = sorted(set(uris))
    if not unique:
        raise UsageError(f"no images (jpg, jpeg, png, webp, bmp) found under {cfg.input}")
    return unique[: cfg.limit] if cfg.limit else unique


def run_record(cfg: RestoreConfig, weights: WeightsInfo) -> dict:
    return {
        "job": "restore",
        "code_version": f"codeformer-data {codeformer_core.__version__}",
        "weights_sha256": weights.sha256,
        "weights_synthetic": weights.synthetic,
        "fidelity": cfg.fidelity,
        "aligned": cfg.aligned,
        "max_pixels": cfg.max_pixels,
    }


def preflight(cfg: RestoreConfig) -> tuple[list[str], WeightsInfo, _ledger.Resume]:
    """Everything that can stop the job, checked before any work is started."""
    uris = list_inputs(cfg)
    _, weights = codeformer_weights(cfg.weights, cfg.weights_dir)
    try:
        resume = _ledger.prepare(cfg.output, run_record(cfg, weights), TABLES)
    except OSError as exc:
        raise UsageError(f"cannot write to output {cfg.output}: {exc}") from None
    return uris, weights, resume


def start_ray(address: str | None) -> None:
    import ray

    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, logging_level="ERROR")
    else:
        ray.init(address="local", include_dashboard=False, logging_level="ERROR")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def plan(cfg: RestoreConfig, pending: list[str], weights: WeightsInfo, run: dict):
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0)) if cfg.device != "cpu" else 0
    if cfg.device == "cuda" and not gpus:
        raise UsageError("--device cuda was asked for, but the Ray cluster has no GPUs")
    actors = cfg.actors or max(gpus, 1)
    threads = cfg.threads_per_actor or (None if gpus else max(1, (os.cpu_count() or 1) // actors))
    blocks = [
        pa.table({"source_uri": chunk, "image_id": [image_id(u) for u in chunk]})
        for chunk in (pending[i : i + cfg.batch_size] for i in range(0, len(pending), cfg.batch_size))
    ]
    # Reads and decodes ask for less than a whole CPU so that Ray keeps them out of the model
    # actor (it fuses stages with equal resource requests) and runs them alongside it.
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(_udf.read_images, batch_format="numpy", batch_size=cfg.batch_size, num_cpus=0.5)
    ds = ds.map_batches(
        _udf.decode_aligned,
        batch_format="numpy",
        batch_size=cfg.batch_size,
        num_cpus=0.5,
        fn_kwargs={"max_pixels": cfg.max_pixels},
    )
    ds = ds.map_batches(
        _udf.RestoreFaces,
        batch_format="numpy",
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        num_gpus=1 if gpus else 0,
        num_cpus=1,
        fn_constructor_kwargs={
            "weights": cfg.weights,
            "weights_dir": cfg.weights_dir,
            "expected_sha256": weights.sha256,
            "device": "cuda" if gpus else "cpu",
            "batch_size": cfg.batch_size,
            "fidelity": cfg.fidelity,
            "threads": threads,
        },
    )
    ds = ds.map_batches(_udf.encode_png, batch_format="numpy", batch_size=cfg.batch_size)
    return ds.map_batches(
        _udf.write_part, batch_format="numpy", batch_size=cfg.batch_size, fn_kwargs={"output": cfg.output, "run": run}
    )


def summarize(cfg: RestoreConfig, total: int, statuses: Counter, faces: int, seconds: float, new_faces: int, weights: WeightsInfo) -> str:
    failures = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()) if k != "ok") or "none"
    rate = f"{new_faces / seconds:.3f} faces/s this run" if new_faces else "no faces restored this run"
    lines = [
        f"inputs {total}: ok {statuses.get('ok', 0)}; failures: {failures}",
        f"faces {faces} ({rate}, {seconds:.1f} s)",
        f"output: {cfg.output}/images/ and {cfg.output}/faces/",
        f'read: pandas.read_parquet("{cfg.output}/images") / pandas.read_parquet("{cfg.output}/faces")',
    ]
    if weights.synthetic:
        lines.append(SYNTHETIC_NOTE)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = config_from_args(argv)
        uris, weights, resume = preflight(cfg)
    except (UsageError, WeightsError, _ledger.OutputMismatchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if weights.synthetic:
        print(SYNTHETIC_NOTE, file=sys.stderr)

    ids = {u: image_id(u) for u in uris}
    pending = [u for u in uris if ids[u] not in resume.done_ids]
    statuses = Counter(resume.statuses)
    faces = resume.faces
    print(
        f"{len(uris)} inputs: {len(uris) - len(pending)} already done, {len(pending)} to process"
        + (f" ({resume.orphans_removed} unfinished part files from an earlier run removed)" if resume.orphans_removed else ""),
        file=sys.stderr,
    )
    start = time.monotonic()
    new_faces = 0
    if pending:
        from tqdm import tqdm

        try:
            start_ray(cfg.ray_address)
            ds = plan(cfg, pending, weights, run_record(cfg, weights))
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        with tqdm(total=len(pending), unit="img", desc="restore", file=sys.stderr) as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for n, k, st in zip(batch["inputs"], batch["faces"], batch["statuses"]):
                    statuses.update(json.loads(st))
                    faces += int(k)
                    new_faces += int(k)
                    bar.update(int(n))
                    bar.set_postfix(faces=faces, faces_per_s=f"{new_faces / max(time.monotonic() - start, 1e-9):.3f}")
    print(summarize(cfg, len(uris), statuses, faces, time.monotonic() - start, new_faces, weights))
    return 0


if __name__ == "__main__":
    sys.exit(main())
