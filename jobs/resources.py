"""What each stage asks of the cluster, computed in one place from the cluster's nodes.

Logical CPUs are for scheduling only (torch threads are set apart, from the node an actor runs
on): two model pools plus the CPU stages must fit on a 2-CPU machine, and CPU stages must ask
for a different amount than the model actors, or Ray fuses them into the actors and they stop
overlapping. On GPUs, every model stage has one actor per GPU, and the stages share each GPU in
proportion to their declared weights."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from codeformer_core.restore import MAX_AUTO_BATCH
from jobs.cli import CPU_BLOCK, UsageError

TASK_CPUS = 0.2
ACTOR_CPUS = 0.5  # at most; less where a node must also hold every other model stage's actors
ACTOR_SHARE = 0.75  # of a node's CPUs, for the actors of all model stages together; the rest runs the tasks
TASK, MODEL, PER_CORE = "task", "model", "per_core"  # stage kinds: a function; an actor holding a network; a single-threaded actor
# The workers' environment. glibc hands allocations over 128 KiB to mmap and gives them back when
# freed, so every batch's pixel buffers (a face is 768 KiB) came from fresh pages, each page a
# fault: 0.3 core-ms a face in the decode stage alone (docs/BENCHMARKS.md). Below 64 MiB they now
# stay in the heap, of which a worker keeps up to 128 MiB free for the next batch.
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}


@dataclass(frozen=True)
class Node:
    cpus: float
    gpus: int


@dataclass(frozen=True)
class Placement:
    """Where the model stages run and how many actors each has."""

    device: str  # "cuda" or "cpu"
    gpus: int
    cpu_nodes: int
    cpus: int
    node_cpus: float  # of the smallest node with CPUs
    workers: int | None  # --workers
    threads: int | None  # --threads-per-worker

    def pool(self, kind: str) -> int:
        if self.gpus:
            return self.workers or self.gpus
        return self.workers or (self.cpus if kind == PER_CORE else self.cpu_nodes)

    def workers_per_node(self, kind: str) -> int:
        return math.ceil(self.pool(kind) / self.cpu_nodes)

    def actor_cpus(self, kinds: list[str]) -> float:
        """Logical CPUs of each actor when the job's actor stages are `kinds`: one actor of every stage
        per node must leave room for the task stages, or the pipeline waits for CPUs forever."""
        per_node = sum(self.workers_per_node(k) for k in kinds)
        cpus = min(ACTOR_CPUS, math.floor(ACTOR_SHARE * self.node_cpus / max(per_node, 1) * 100) / 100)
        return cpus - 0.01 if cpus == TASK_CPUS else cpus

    def block(self, batch_size: int | None) -> int:
        """Rows per batch of the CPU stages: --batch-size, or by default a GPU's or a CPU's usual batch."""
        return batch_size or (MAX_AUTO_BATCH["cuda"] if self.gpus else CPU_BLOCK)


def alive_nodes() -> list[Node]:
    import ray

    return [Node(n["Resources"].get("CPU", 0.0), int(n["Resources"].get("GPU", 0))) for n in ray.nodes() if n["Alive"]]


def placement(nodes: list[Node], device: str, workers: int | None, threads: int | None) -> Placement:
    gpus = sum(n.gpus for n in nodes) if device != "cpu" else 0
    if device == "cuda" and not gpus:
        raise UsageError("--device cuda was asked for, but the Ray cluster has no GPUs")
    cpu_nodes = max(1, sum(1 for n in nodes if n.cpus > 0))
    cpus = max(1, int(sum(n.cpus for n in nodes)))
    smallest = min((n.cpus for n in nodes if n.cpus > 0), default=1.0)
    return Placement("cuda" if gpus else "cpu", gpus, cpu_nodes, cpus, smallest, workers, threads)


def gpu_shares(weights: list[float]) -> list[float]:
    """Each model stage's fraction of a GPU, so that one actor of every stage fits on each GPU."""
    total = sum(weights)
    return [math.floor(w / total * 1e4) / 1e4 if w else 0.0 for w in weights] if total else [0.0] * len(weights)


def node_cpus() -> int:
    """CPUs of the Ray node this process runs on (its logical CPU resource), else of this machine."""
    import ray

    if ray.is_initialized():
        me = ray.get_runtime_context().get_node_id()
        for n in ray.nodes():
            if n["NodeID"] == me and n["Resources"].get("CPU"):
                return int(n["Resources"]["CPU"])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def torch_threads(kind: str, device: str, per_node: int, fixed: int | None) -> int | None:
    """Threads of one actor: one for single-threaded stages; on CPUs --threads-per-worker, or the
    node's CPUs shared among the stage's workers on that node; on GPUs torch's default."""
    if kind == PER_CORE:
        return 1
    if device != "cpu":
        return None
    return fixed or max(1, node_cpus() // per_node)
