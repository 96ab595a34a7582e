"""The one driver of every job: flags, the output's lock, listing, preflight, resume, the run, progress, summary, exit codes.

A job module declares a `Job`: its own flags, its config, what it checks before work (weights),
its stages in order and its tables; `main(job)` does the rest, the same way for every job."""

from __future__ import annotations

import argparse
import functools
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import codeformer_core
from codeformer_core import storage
from codeformer_core.http import HttpConfig
from codeformer_core.statuses import RETRYABLE
from codeformer_core.video import Sampling
from codeformer_core.weights import WeightsError
from jobs import cli, ledger, listing, memory, pipeline, resources, runner, tracks, video_out
from jobs.cli import UsageError
from jobs.lock import OutputLock, OutputLockedError
from jobs.pipeline import Context, Stage

SYNTHETIC_NOTE = (
    "NOTE: SYNTHETIC WEIGHTS. The networks ran with random weights in the official layout, not the trained "
    "ones: every stage ran for real, but restored faces are noise and detections arbitrary. Outputs are marked synthetic."
)
CONNECT_SECONDS = 10.0
# Lines of Ray's own that are known to be harmless here, dropped from what its workers print:
# Ray Data passes its actors' constructor arguments through the object store, which Ray's core
# worker logs as an error for every actor pool (ray-project/ray#53727). Those objects are owned by
# the task that runs the pipeline and live on its node; losing either fails the run, which the
# driver then starts again.
HARMLESS_RAY_LINES = ("has constructor arguments in the object store and max_restarts > 0",)


@dataclass(frozen=True)
class Common:
    """The flags of every job (jobs.cli.parser)."""

    input: str
    output: str
    aligned: bool
    limit: int | None
    max_pixels: int
    read_attempts: int
    uri_column: str | None
    image_column: str | None
    keep_columns: tuple[str, ...]
    http: HttpConfig
    weights_dir: str | None
    synthetic: bool
    batch_size: int | None
    workers: int | None
    threads: int | None
    device: str
    ray_address: str | None
    shard_size: int
    shared_output: bool
    sampling: Sampling | None  # the frames kept of each video; None for a job without videos
    segment_frames: int | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Common:
        named = [f for f in ("weights", "arcface_weights", "detector_weights") if getattr(args, f, None) not in (None, "codeformer")]
        if args.synthetic_weights and named:
            raise UsageError(f"--synthetic-weights and --{named[0].replace('_', '-')} exclude each other")
        return cls(
            input=args.input, output=args.output.rstrip("/"), aligned=args.aligned, limit=args.limit, max_pixels=args.max_pixels, read_attempts=args.read_attempts,
            uri_column=args.uri_column, image_column=args.image_column, keep_columns=args.keep_columns,
            http=HttpConfig(args.read_attempts, args.http_timeout, args.http_per_host, not args.ignore_optout), weights_dir=args.weights_dir, synthetic=args.synthetic_weights, batch_size=args.batch_size,
            workers=args.workers, threads=args.threads_per_worker, device=args.device, ray_address=args.ray_address,
            shard_size=args.shard_size, shared_output=args.shared_output, sampling=cli.sampling(args),
            segment_frames=getattr(args, "segment_frames", None),
        )


@dataclass(frozen=True)
class Job:
    """What a job declares. `configure` turns its own flags into its config (raising UsageError);
    `preflight` checks what it needs before any work (weights) and returns the run record, which a
    rerun into the same output must match; `stages` lists its stages in order; `tables` are its
    tables, the first one row per input, the second what it counts as `unit`; `finish` runs after
    the run (the audit's report), told whether this run committed anything, and returns extra
    summary lines; before it, the faces of videos are linked into tracks (jobs.tracks)."""

    name: str
    doc: str
    tables: tuple[str, ...]
    unit: str  # what the job makes, as counted in its second table
    verb: str  # what it does to them, for "no faces restored this run"
    add_flags: Callable[[argparse.ArgumentParser], None]
    configure: Callable[[argparse.Namespace, Common], object]
    preflight: Callable[[Common, object, bool], dict]
    stages: Callable[[Common, object, Context], list[Stage]]
    finish: Callable[[Common, object, bool], list[str]] | None = None
    track_crops: tracks.Crops | None = None  # a job that takes videos: the faces/ crops its tracks compare
    writes_video: Callable[[object], video_out.VideoOut | None] | None = None  # from its config: the videos it writes, if any


def build_parser(job: Job) -> argparse.ArgumentParser:
    p = cli.parser(job.name, job.doc)
    job.add_flags(p)
    return p


def record(job: Job, extra: dict) -> dict:
    return {"job": job.name, "code_version": f"codeformer-data {codeformer_core.__version__}", **extra}


def cluster_address(common: Common) -> str | None:
    return common.ray_address or os.environ.get("RAY_ADDRESS")


def check_cluster(common: Common) -> None:
    """Before any work: a cluster to join answers within CONNECT_SECONDS, and a local --output on a
    cluster is declared shared (nodes that join it later would each write to their own disk)."""
    address = cluster_address(common)
    if not address:
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if host and port.isdigit():
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
        except OSError as exc:
            raise UsageError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    if not storage.is_remote(common.output) and not common.shared_output:
        raise UsageError(
            f"--output {common.output} is a local path, and the job runs on the Ray cluster at {address}: each of its nodes "
            "would write to its own disk. Use an s3:// or gs:// output, or --shared-output when the path is storage every node shares."
        )


def check_buckets(common: Common) -> None:
    """The buckets of an s3:// input and output exist and answer, told within seconds."""
    for uri, what in ((common.input, "read input"), (common.output, "write to output")):
        if storage.is_s3(uri):
            try:
                storage.check_bucket(uri)
            except OSError as exc:
                raise UsageError(f"cannot {what} {uri}: {exc}") from None


def start_ray(common: Common) -> None:
    """Join the cluster check_cluster accepted, or start a local Ray."""
    import ray

    if ray.is_initialized():  # started to probe videos while listing
        return
    address = cluster_address(common)
    workers = {"env_vars": resources.WORKER_ENV}
    if not address:
        ray.init(address="local", include_dashboard=False, logging_level="ERROR", runtime_env=workers)
    else:
        try:
            ray.init(address=address, logging_level="ERROR", runtime_env=workers)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UsageError(f"cannot join the Ray cluster at {address}: {str(exc).strip().splitlines()[0]}") from None
    drop_harmless_ray_lines()


def drop_harmless_ray_lines() -> None:
    """Wrap the handler through which Ray prints its workers' output here so that it skips
    HARMLESS_RAY_LINES; everything else is printed as before. Ray has no public hook for this."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return

    def skipping(handle: Callable[[dict], None]) -> Callable[[dict], None]:
        def handle_kept(data: dict) -> None:
            lines = [line for line in data.get("lines", []) if not any(h in line for h in HARMLESS_RAY_LINES)]
            if lines:
                handle({**data, "lines": lines})

        return handle_kept

    for name, handle in list(dispatcher.handlers):
        dispatcher.remove_handler(name)
        dispatcher.add_handler(name, skipping(handle))


def prepare(job: Job, common: Common, cfg: object, lock: OutputLock) -> tuple[listing.Listing, dict, ledger.Resume]:
    """Everything that can stop the job before any work: the listing, the weights, the output's state."""
    inputs = listing.listing(
        common.output, listing.Source(common.input, common.uri_column, common.image_column, common.keep_columns), common.limit, common.shard_size,
        common.segment_frames, functools.partial(probe_videos, common)
    )
    video = {"video": {"every_n": common.sampling.every_n, "fps": common.sampling.fps}} if common.sampling else {}
    run = record(job, {**job.preflight(common, cfg, inputs.needs_detector(common.aligned)), **video})
    if lock.lost.is_set():
        raise OutputLockedError(f"another job took {common.output} over while this one listed its inputs; use another --output")
    resume = ledger.prepare(common.output, run, job.tables, inputs)
    return inputs, run, resume


PROBE_GROUP = 64  # videos probed by one Ray task


def probe_videos(common: Common, uris: list[str]) -> list[dict]:
    """listing.probe_group over `uris` (one listing chunk), in Ray tasks of PROBE_GROUP videos, so
    that the requests are spread over the cluster instead of leaving the driver one by one."""
    import ray

    start_ray(common)
    task = ray.remote(num_cpus=resources.TASK_CPUS, max_retries=3)(listing.probe_group)
    refs = [task.remote(uris[i : i + PROBE_GROUP]) for i in range(0, len(uris), PROBE_GROUP)]
    return [info for ref in refs for info in ray.get(ref)]


def plan_of(job: Job, common: Common, cfg: object, inputs: listing.Listing, run: dict) -> Callable[[dict[int, int]], object]:
    """The function that builds the Ray Data plan of some shards, for runner.run_shards."""
    place = resources.placement(resources.alive_nodes(), common.device, common.workers, common.threads)
    context = Context(place, place.block(common.batch_size), inputs.needs_detector(common.aligned), common.synthetic, run)
    return functools.partial(build_plan, common.output, job.stages(common, cfg, context), place, context.block)


def build_plan(output: str, stages: list[Stage], place: resources.Placement, block: int, shards: dict[int, runner.Work]):
    return pipeline.build(runner.source(output, shards, block), stages, place, block)


def summary(job: Job, common: Common, total: int, statuses: Counter, items: int, new: int, seconds: float) -> list[str]:
    failures = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()) if k != "ok" and v) or "none"
    rate = f"{new / seconds:.3f} {job.unit}/s this run" if new else f"no {job.unit} {job.verb} this run"
    again = sum(statuses.get(s, 0) for s in RETRYABLE)
    retry = [f"{again} inputs failed in a way that may pass ({', '.join(sorted(RETRYABLE))}: storage throttling, resets, timeouts, 5xx "
             "on every try): run the same command again to retry them, and only them"] if again else []
    return [
        f"inputs {total}: ok {statuses.get('ok', 0)}; failures: {failures}",
        *retry,
        f"{job.unit} {items} ({rate}, {seconds:.1f} s)",
        f"output: {common.output}/, tables " + ", ".join(f"{t}/" for t in job.tables) + " (those this run's flags write)",
        f'read: pandas.read_parquet("{common.output}/{job.tables[0]}") / pandas.read_parquet("{common.output}/{job.tables[1]}")',
    ]


def main(job: Job, argv: list[str] | None = None) -> int:
    """Run `job` as its command line says; 0 when done, 2 for a usage error, 1 when the run failed, 130 when interrupted."""
    memory.use_system_allocator()
    lock = None
    committed, done = 0, runner.Totals()
    try:
        try:
            args = build_parser(job).parse_args(argv)
            common = Common.from_args(args)
            cfg = job.configure(args, common)
            check_cluster(common)
            check_buckets(common)
            lock = OutputLock(common.output)
            try:
                lock.acquire()
            except OSError as exc:
                raise UsageError(f"cannot write to output {common.output}: {exc}") from None
            inputs, run, resume = prepare(job, common, cfg, lock)
        except (UsageError, WeightsError, ledger.OutputMismatchError, OutputLockedError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        memory.release_freed_memory()
        committed = resume.inputs
        synthetic = common.synthetic or bool(run.get("weights_synthetic"))
        if synthetic:
            print(SYNTHETIC_NOTE, file=sys.stderr)
        fresh = {k: runner.Work(inputs.shard_rows(k)) for k in range(inputs.shards) if k not in resume.done}
        retry = {k: runner.Work(count, generation + 1) for k, (count, generation) in resume.retry.items()}
        pending = dict(sorted({**fresh, **retry}.items()))
        retrying = sum(w.inputs for w in retry.values())
        print(
            f"{inputs.rows} inputs in {inputs.shards} shards: {resume.inputs - retrying} already done, "
            + (f"{retrying} to retry (they failed in a way that may pass), " if retrying else "")
            + f"{sum(w.inputs for w in fresh.values())} to process"
            + (f" ({resume.removed} files of unfinished work from an earlier run removed)" if resume.removed else ""),
            file=sys.stderr,
        )
        statuses, items = Counter(resume.statuses), resume.items
        start = time.monotonic()
        if pending:
            try:
                start_ray(common)
                plan = plan_of(job, common, cfg, inputs, run)
            except UsageError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            try:
                runner.drive(plan, pending, inputs.digests, common.output, job.name, job.unit, lock.lost.is_set, done)
            except runner.OutputTakenError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            except runner.RunFailedError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            storage.delete_dir(storage.join(common.output, ledger.STAGING))
            final = ledger.markers(common.output)
            ledger.sweep(common.output, job.tables, {rel for marker in final for rel in marker["files"]})
            statuses, items, _ = ledger.totals(final)
        try:
            extra = tracks.track_videos(common.output, inputs, job.track_crops, bool(pending), functools.partial(start_ray, common)) if job.track_crops and inputs.videos else []
            out = job.writes_video(cfg) if job.writes_video and inputs.videos else None
            extra += video_out.write_videos(common.output, inputs, out, bool(pending), functools.partial(start_ray, common)) if out else []
            extra += job.finish(common, cfg, bool(pending)) if job.finish else []
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except runner.RunFailedError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        lines = summary(job, common, inputs.rows, statuses, items, done.items, time.monotonic() - start) + done.busy_line() + extra
        print("\n".join(lines + ([SYNTHETIC_NOTE] if synthetic else [])))
        return 0
    except KeyboardInterrupt:
        print(f"\ninterrupted: {committed + done.inputs} inputs are committed and kept; run the same command again to finish the output", file=sys.stderr)
        return 130
    finally:
        if lock is not None:
            lock.release()
