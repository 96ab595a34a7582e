"""Running a job's shards through Ray Data, committing each shard once all of it has come out.

The process that drives a Ray Data run keeps memory for every block the run has made until the
run ends (ray-project/ray#66016, and native memory of Ray's core worker that outlives the run).
So the run goes in a Ray task of its own (`run_shards`), whose worker exits after it, and that
task ends its run early once it has grown by RUN_MEMORY_MIB, handing the shards not yet committed
to a new run. At a few KiB per block that is millions of inputs per run: the actors start once
for nearly every job, and the driver stays the same size however many inputs there are. A run
whose worker dies (its node lost, a kill) is started again for the shards not yet committed."""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from codeformer_core import inputs as kinds
from jobs import ledger, listing, pipeline
from jobs.memory import memory_mib, release_freed_memory, reset_peak_memory
from jobs.resources import TASK_CPUS

PROGRESS_SECONDS = 1.0
RUN_MEMORY_MIB = 2048  # a run's worker grown by this much ends its run; a new one takes the rest
RUN_ATTEMPTS = 3  # runs in a row that may fail without committing a shard before the job stops
RUN_BACKOFF_S = 5.0  # times the failures in a row: the wait before a new run, while Ray notices dead workers and nodes
COMMIT_RETRIES = 3


class RunFailedError(Exception):
    """The run failed RUN_ATTEMPTS times in a row; the message is for the user as it is."""


class OutputTakenError(Exception):
    """Another job took the output's lock over while this one ran."""


@dataclass(frozen=True)
class Work:
    """What a run does with one shard: all its `inputs` (generation 0), or the `inputs` the shard's
    committed generation - 1 left retryable, committed as `generation`."""

    inputs: int
    generation: int = 0


class ShardSource(Datasource):
    """One read task per shard, reading its row group of the listing (for a retry, the rows of its
    retryable inputs). `read_datasource` is asked for one block per batch, so Ray Data splits each
    shard into blocks of about a batch (its `position` column keeps each row's place in the shard);
    read tasks ask for TASK_CPUS, as a whole CPU would not fit beside the actor pools on small nodes."""

    def __init__(self, output: str, shards: dict[int, Work]) -> None:
        self.output = output
        self.shards = shards

    def estimate_inmemory_data_size(self) -> None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        return [
            ReadTask(
                functools.partial(read_shard, self.output, shard, bool(work.generation)),
                BlockMetadata(num_rows=work.inputs, size_bytes=None, exec_stats=None, input_files=None),
            )
            for shard, work in self.shards.items()
        ]


def read_shard(output: str, shard: int, retry: bool) -> list[pa.Table]:
    table = listing.read_shard(output, shard)
    places = ledger.retry_positions(output, shard) if retry else np.arange(table.num_rows)
    table = kinds.read_parquet_images(table.take(pa.array(places)))
    return [table.append_column("shard", pa.array(np.full(len(places), shard), pa.int64())).append_column("position", pa.array(places, pa.int64()))]


def source(output: str, shards: dict[int, Work], batch_size: int):
    import ray

    blocks = sum(-(-work.inputs // batch_size) for work in shards.values())
    return ray.data.read_datasource(ShardSource(output, shards), override_num_blocks=blocks, num_cpus=TASK_CPUS)


def quiet_ray_data() -> None:
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


# What the writer reports of each piece it staged, beside its "shard" and "first" (JSON cells, as ledger.stage makes them).
PIECE = ("inputs", "segments", "items", "statuses", "written", "rows")


@dataclass
class OpenShard:
    pieces: dict[tuple[int, int], tuple[list[str], list[int]]] = field(default_factory=dict)  # (first input, its frame) -> staged files, inputs of its images/ rows
    segments: dict[int, list] = field(default_factory=dict)  # a video segment's place -> [its rows come out, all its rows once known]
    inputs: int = 0
    items: int = 0
    statuses: Counter = field(default_factory=Counter)

    def add(self, first: tuple[int, int], inputs: int, segments: str, items: int, statuses: str, written: str, rows: str) -> int:
        """Count one staged piece (the writer's PIECE cells); how many of the shard's inputs it finished.
        A piece comes out once; should it come again, it is not counted twice."""
        if first in self.pieces:
            return 0
        self.pieces[first] = (json.loads(written), json.loads(rows))
        done = int(inputs) + self.count_segments(json.loads(segments))
        self.inputs += done
        self.items += int(items)
        self.statuses.update(json.loads(statuses))
        return done

    def commit_args(self) -> tuple[list, int, dict[str, int], int]:
        """ledger.commit_shard's pieces, inputs, statuses and items for what has been added."""
        pieces = [(list(first), written, rows) for first, (written, rows) in sorted(self.pieces.items())]
        return pieces, self.inputs, dict(self.statuses), self.items

    def count_segments(self, rows: dict[str, list]) -> int:
        """Add a piece's rows of video segments; how many segments have now come out whole."""
        whole = 0
        for position, (count, total) in rows.items():
            counted = self.segments.setdefault(int(position), [0, None])
            counted[0] += count
            counted[1] = total if total is not None else counted[1]
            if counted[0] == counted[1]:
                whole += 1
                del self.segments[int(position)]
        return whole


def run_shards(plan: Callable[[dict[int, Work]], object], shards: dict[int, Work], digests: tuple[str, ...], output: str) -> Iterator[dict]:
    """Run `plan` of `shards` to its end in this process, committing each shard once its pieces hold
    all its work's inputs; yield, at most every PROGRESS_SECONDS, the inputs that came out and what
    the commits added, and at the end this process's memory when the run started and at its peak.
    A Ray worker may have run other tasks before this one."""
    import ray

    quiet_ray_data()
    reset_peak_memory()
    start_mib = memory_mib("VmRSS")
    commit = ray.remote(num_cpus=TASK_CPUS, max_retries=COMMIT_RETRIES, retry_exceptions=True)(ledger.commit_shard)
    open_shards: dict[int, OpenShard] = {}
    closed: set[int] = set()  # shards whose commit has started
    committing: dict = {}
    update: dict = {"processed": 0, "committed": []}
    last, recycled = time.monotonic(), False
    built = plan(shards)
    batches = iter(built.dataset.iter_batches(batch_size=None, batch_format="numpy"))
    for batch in batches:
        for shard, first, *piece in zip(batch["shard"], batch["first"], *(batch[k] for k in PIECE)):
            shard, first = int(shard), tuple(json.loads(first))
            if shard in closed:
                continue
            state = open_shards.setdefault(shard, OpenShard())
            update["processed"] += state.add(first, *piece)
            if state.inputs == shards[shard].inputs:
                args = (output, shard, digests[shard], *state.commit_args(), shards[shard].generation)
                committing[commit.remote(*args)] = shard
                del open_shards[shard]
                closed.add(shard)
        update["committed"] += collect(committing, wait=False)
        if time.monotonic() - last >= PROGRESS_SECONDS:
            yield update
            update, last = {"processed": 0, "committed": []}, time.monotonic()
        if memory_mib("VmRSS") - start_mib > RUN_MEMORY_MIB:
            recycled = True
            batches.close()  # ends the Ray Data run before its shards go to another
            break
    update["committed"] += collect(committing, wait=True)
    yield {**update, "start_mib": start_mib, "peak_mib": memory_mib("VmHWM"), "recycled": recycled, "busy": pipeline.busy_seconds(built)}


def collect(committing: dict, wait: bool) -> list[dict]:
    """What the commits that have finished added (all of them with `wait`): {"shard", "inputs", "items"}."""
    import ray

    if not committing:
        return []
    ready, _ = ray.wait(list(committing), num_returns=len(committing), timeout=None if wait else 0)
    added = ray.get(ready)
    for ref in ready:
        del committing[ref]
    return added


@dataclass
class Totals:
    """What this job's runs committed: inputs newly committed, items (faces, pairs) added; and per
    actor stage, the seconds its actors were busy and the seconds they had (pipeline.busy_seconds)."""

    inputs: int = 0
    items: int = 0
    busy: dict[str, list[float]] = field(default_factory=dict)

    def add_busy(self, found: dict[str, tuple[float, float]]) -> None:
        for stage, seconds in found.items():
            total = self.busy.setdefault(stage, [0.0, 0.0])
            total[0], total[1] = total[0] + seconds[0], total[1] + seconds[1]

    def busy_line(self) -> list[str]:
        shares = [f"{stage} {used / had:.2f}" for stage, (used, had) in self.busy.items() if had > 0]
        return [f"busy fraction of the actor stages (Ray Data's operator stats; 1.00: never waiting for input): {', '.join(shares)}"] if shares else []


def drive(
    plan: Callable[[dict[int, Work]], object], shards: dict[int, Work], digests: tuple[str, ...], output: str, desc: str, unit: str,
    lost: Callable[[], bool], done: Totals,
) -> None:
    """Run every shard, in as few runs as memory allows, with one progress bar, adding what is
    committed to `done`; start a failed run again for the shards not yet committed, until
    RUN_ATTEMPTS runs in a row have failed without committing a shard."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from tqdm import tqdm

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)  # a worker node lost leaves the run alive
    runner = ray.remote(num_cpus=0, max_calls=1, max_retries=0)(run_shards).options(scheduling_strategy=here)
    pending = dict(shards)
    failures, runs, finished, start = 0, 0, 0, time.monotonic()
    with tqdm(total=sum(w.inputs for w in shards.values()), unit="img", desc=desc, file=sys.stderr) as bar:
        while pending:
            runs += 1
            before = len(pending)
            try:
                for ref in runner.remote(plan, dict(pending), digests, output):
                    update = ray.get(ref)
                    bar.update(update["processed"])
                    for added in update["committed"]:
                        finished += pending.pop(added["shard"]).inputs
                        done.inputs += added["inputs"]
                        done.items += added["items"]
                    bar.set_postfix({unit: done.items, "committed": finished, f"{unit}_per_s": f"{done.items / max(time.monotonic() - start, 1e-9):.3f}"})
                    if lost():
                        raise OutputTakenError(f"another job took over {output} while this one ran; what this one committed is kept")
                done.add_busy(update["busy"])
                grown = update["peak_mib"] - update["start_mib"]
                bar.write(f"run {runs}: {len(shards) - len(pending)} of {len(shards)} shards committed; its Ray worker grew by {grown:.0f} MiB, to {update['peak_mib']:.0f} MiB", file=sys.stderr)
                if not pending or (update["recycled"] and len(pending) < before):
                    failures = 0
                    continue
                reason = "it grew by its memory limit before committing a shard" if update["recycled"] else "it ended with shards whose inputs did not all come out"
            except ray.exceptions.RayError as exc:
                reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
            # A retry's read takes the inputs its shard's marker still has retryable: once that shard
            # is committed (by a run that died before it was heard), a run given it would wait for inputs that never come.
            for shard in ledger.already_committed(output, {k: w.generation for k, w in pending.items() if w.generation}, digests):
                finished += pending.pop(shard).inputs
            if pending:
                failures = (0 if len(pending) < before else failures) + 1
                if failures >= RUN_ATTEMPTS:
                    raise RunFailedError(
                        f"{failures} runs in a row failed without committing a shard (the last: {reason}); {len(pending)} shards are not "
                        "committed: run the same command again"
                    ) from None
                bar.write(f"run {runs} stopped ({reason}); a new run takes the {len(pending)} shards not yet committed", file=sys.stderr)
                bar.n = finished
                bar.refresh()
                time.sleep(RUN_BACKOFF_S * failures)
    release_freed_memory()
