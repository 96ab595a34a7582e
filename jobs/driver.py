"""The one driver of every job: flags, preflight, listing, resume, the windows, progress, summary, exit codes.

A job module declares a `Job`: its own flags, its config, what it checks before work (weights),
its stages in order and its tables; `main(job)` does the rest, the same way for every job."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

import codeformer_core
from codeformer_core.weights import WeightsError
from jobs import cli, ledger, listing, memory, pipeline, resources, windows
from jobs.cli import UsageError
from jobs.pipeline import Context, Stage

SYNTHETIC_NOTE = (
    "NOTE: SYNTHETIC WEIGHTS. The networks ran with random weights in the official layout, not the trained "
    "ones: every stage ran for real, but restored faces are noise and detections arbitrary. Outputs are marked synthetic."
)


@dataclass(frozen=True)
class Common:
    """The flags of every job (jobs.cli.parser)."""

    input: str
    output: str
    aligned: bool
    limit: int | None
    max_pixels: int
    uri_column: str | None
    weights_dir: str | None
    synthetic: bool
    batch_size: int | None
    workers: int | None
    threads: int | None
    device: str
    ray_address: str | None
    window: int | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Common:
        named = [f for f in ("weights", "arcface_weights", "detector_weights") if getattr(args, f, None) not in (None, "codeformer")]
        if args.synthetic_weights and named:
            raise UsageError(f"--synthetic-weights and --{named[0].replace('_', '-')} exclude each other")
        return cls(
            input=args.input, output=args.output.rstrip("/"), aligned=args.aligned, limit=args.limit, max_pixels=args.max_pixels,
            uri_column=args.uri_column, weights_dir=args.weights_dir, synthetic=args.synthetic_weights, batch_size=args.batch_size,
            workers=args.workers, threads=args.threads_per_worker, device=args.device, ray_address=args.ray_address, window=args.window,
        )


@dataclass(frozen=True)
class Job:
    """What a job declares. `configure` turns its own flags into its config (raising UsageError);
    `preflight` checks what it needs before any work (weights) and returns the run record, which a
    rerun into the same output must match; `stages` lists its stages in order; `finish` runs after
    the windows (the audit's report) and returns extra summary lines."""

    name: str
    doc: str
    tables: tuple[str, ...]
    unit: str  # what the job makes, as counted in its commit records
    verb: str  # what it does to them, for "no faces restored this run"
    add_flags: Callable[[argparse.ArgumentParser], None]
    configure: Callable[[argparse.Namespace, Common], object]
    preflight: Callable[[Common, object, bool], dict]
    stages: Callable[[Common, object, Context], list[Stage]]
    finish: Callable[[Common, object], list[str]] | None = None


def build_parser(job: Job) -> argparse.ArgumentParser:
    p = cli.parser(job.name, job.doc)
    job.add_flags(p)
    return p


def record(job: Job, extra: dict) -> dict:
    return {"job": job.name, "code_version": f"codeformer-data {codeformer_core.__version__}", **extra}


def start_ray(address: str | None) -> None:
    import ray

    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, logging_level="ERROR")
    else:
        ray.init(address="local", include_dashboard=False, logging_level="ERROR")


def pending_inputs(inputs: pa.Table, resume: ledger.Resume) -> pa.Table:
    """The inputs no committed part holds yet; says how many there are."""
    memory.release_freed_memory()
    done = pa.array(sorted(resume.done_ids), pa.string())
    pending = inputs.filter(pc.invert(pc.is_in(inputs.column("image_id"), value_set=done)))
    print(
        f"{inputs.num_rows} inputs: {inputs.num_rows - pending.num_rows} already done, {pending.num_rows} to process"
        + (f" ({resume.orphans_removed} unfinished part files from an earlier run removed)" if resume.orphans_removed else ""),
        file=sys.stderr,
    )
    return pending


def prepare(job: Job, argv: list[str] | None) -> tuple[Common, object, pa.Table, dict, ledger.Resume]:
    """Everything that can stop the job, checked before any work is started."""
    args = build_parser(job).parse_args(argv)
    common = Common.from_args(args)
    cfg = job.configure(args, common)
    inputs = listing.list_inputs(common.input, common.uri_column, common.limit)
    run = record(job, job.preflight(common, cfg, listing.needs_detector(common.aligned, inputs)))
    try:
        resume = ledger.prepare(common.output, run, job.tables)
    except OSError as exc:
        raise UsageError(f"cannot write to output {common.output}: {exc}") from None
    return common, cfg, inputs, run, resume


def plans(job: Job, common: Common, cfg: object, pending: pa.Table, run: dict) -> list:
    place = resources.placement(resources.alive_nodes(), common.device, common.workers, common.threads)
    context = Context(place, place.block(common.batch_size), listing.needs_detector(common.aligned, pending), common.synthetic, run)
    stages = job.stages(common, cfg, context)
    build = lambda part: pipeline.build(windows.source(part, context.block), stages, place, context.block)  # noqa: E731
    return windows.windows(build, pending, context.block, common.window)


def summary(job: Job, common: Common, total: int, statuses: Counter, items: int, new: int, seconds: float) -> list[str]:
    failures = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()) if k != "ok") or "none"
    rate = f"{new / seconds:.3f} {job.unit}/s this run" if new else f"no {job.unit} {job.verb} this run"
    return [
        f"inputs {total}: ok {statuses.get('ok', 0)}; failures: {failures}",
        f"{job.unit} {items} ({rate}, {seconds:.1f} s)",
        f"output: {common.output}/, tables " + ", ".join(f"{t}/" for t in job.tables) + " (those this run's flags write)",
        f'read: pandas.read_parquet("{common.output}/{job.tables[0]}") / pandas.read_parquet("{common.output}/{job.tables[1]}")',
    ]


def main(job: Job, argv: list[str] | None = None) -> int:
    """Run `job` as its command line says; 0 when done, 2 for a usage error, 130 when interrupted."""
    memory.use_system_allocator()
    try:
        try:
            common, cfg, inputs, run, resume = prepare(job, argv)
        except (UsageError, WeightsError, ledger.OutputMismatchError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        synthetic = common.synthetic or bool(run.get("weights_synthetic"))
        if synthetic:
            print(SYNTHETIC_NOTE, file=sys.stderr)
        pending = pending_inputs(inputs, resume)
        statuses = Counter(resume.statuses)
        start = time.monotonic()
        new = 0
        if pending.num_rows:
            try:
                start_ray(common.ray_address)
                windowed = plans(job, common, cfg, pending, run)
            except UsageError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            new = windows.drive(windowed, pending.num_rows, statuses, job.name, job.unit)
        extra = job.finish(common, cfg) if job.finish else []
        lines = summary(job, common, inputs.num_rows, statuses, resume.items + new, new, time.monotonic() - start) + extra
        print("\n".join(lines + ([SYNTHETIC_NOTE] if synthetic else [])))
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: what was committed is kept; run the same command again to finish the output", file=sys.stderr)
        return 130
