"""Running a job's inputs through Ray Data in windows, each window in a Ray task of its own.

The process that drives a Ray Data run keeps memory for every block the run has made until the
run ends (ray-project/ray#66016, and native memory of Ray's core worker that outlives the run).
Each window runs as a Ray task whose worker exits after it, so that memory goes with that worker
and the job's driver stays the same size however many inputs there are."""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pyarrow as pa
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from jobs.cli import WINDOW_BATCHES
from jobs.memory import memory_mib, release_freed_memory, reset_peak_memory
from jobs.resources import TASK_CPUS
from jobs.stages.front import take_inputs

PROGRESS_SECONDS = 1.0


class BlockNumbers(Datasource):
    """Blocks of one row each, `id` 0..n-1, read by tasks that ask for TASK_CPUS: `ray.data.range`'s
    read tasks ask for a whole CPU, which actor pools may leave no room for (a deadlock on 2 CPUs)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def estimate_inmemory_data_size(self) -> int:
        return 8 * self.n

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        metadata = BlockMetadata(num_rows=1, size_bytes=8, exec_stats=None, input_files=None)
        return [ReadTask(functools.partial(block_number, i), metadata) for i in range(self.n)]


def block_number(i: int) -> list[pa.Table]:
    return [pa.table({"id": pa.array([i], pa.int64())})]


def source(part: pa.Table, batch_size: int):
    """`part` as a Ray Dataset of blocks of `batch_size` rows, each made by a task as it is needed.
    ray.data.from_arrow would put every block up front from the process running the window, which
    keeps about 40 KB of native memory per block put for the whole run."""
    import ray

    blocks = -(-part.num_rows // batch_size)
    numbers = ray.data.read_datasource(BlockNumbers(blocks), override_num_blocks=blocks, num_cpus=TASK_CPUS)
    return numbers.map_batches(take_inputs, fn_kwargs={"inputs": part, "batch_size": batch_size}, batch_format="numpy", batch_size=1, num_cpus=TASK_CPUS)


def windows(build: Callable[[pa.Table], object], pending: pa.Table, batch_size: int, window: int | None) -> list[Callable[[], object]]:
    """`build` of each consecutive slice of `pending` of `window` inputs (default WINDOW_BATCHES
    batches), for drive() to run, each as one Ray Data run."""
    size = window or WINDOW_BATCHES * batch_size
    return [functools.partial(build, pending.slice(start, size)) for start in range(0, pending.num_rows, size)]


def quiet_ray_data() -> None:
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def run_window(plan: Callable[[], object]) -> Iterator[dict]:
    """Run one window's Ray Data plan to its end in this process; yield what it has done, at most
    every PROGRESS_SECONDS: inputs, items, statuses, and this process's memory in MiB when the
    window started and at its peak since. A Ray worker may have run other tasks before this one."""
    quiet_ray_data()
    reset_peak_memory()
    start_mib = memory_mib("VmRSS")
    done: dict = {"inputs": 0, "items": 0, "statuses": Counter()}
    last = time.monotonic()
    for batch in plan().iter_batches(batch_size=None, batch_format="numpy"):
        for n, k, st in zip(batch["inputs"], batch["items"], batch["statuses"]):
            done["statuses"].update(json.loads(st))
            done["items"] += int(k)
            done["inputs"] += int(n)
        if time.monotonic() - last >= PROGRESS_SECONDS:
            yield {**done, "start_mib": start_mib, "peak_mib": memory_mib("VmHWM")}
            done, last = {"inputs": 0, "items": 0, "statuses": Counter()}, time.monotonic()
    yield {**done, "start_mib": start_mib, "peak_mib": memory_mib("VmHWM")}


def drive(plans: list[Callable[[], object]], inputs: int, statuses: Counter, desc: str, unit: str) -> int:
    """Run each window's plan to its end, one after another, with one progress bar; count statuses
    in; return the `unit`s made this run."""
    import ray
    from tqdm import tqdm

    runner = ray.remote(num_cpus=0, max_calls=1, max_retries=0)(run_window)
    start = time.monotonic()
    made = 0
    with tqdm(total=inputs, unit="img", desc=desc, file=sys.stderr) as bar:
        for number, plan in enumerate(plans, 1):
            window_inputs = 0
            for ref in runner.remote(plan):
                done = ray.get(ref)
                statuses.update(done["statuses"])
                made += done["items"]
                window_inputs += done["inputs"]
                bar.update(done["inputs"])
                bar.set_postfix({unit: made, f"{unit}_per_s": f"{made / max(time.monotonic() - start, 1e-9):.3f}"})
            grown = done["peak_mib"] - done["start_mib"]
            bar.write(f"window {number}/{len(plans)}: inputs {window_inputs}; its Ray worker grew by {grown:.0f} MiB, to {done['peak_mib']:.0f} MiB", file=sys.stderr)
    release_freed_memory()
    return made
