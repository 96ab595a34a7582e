"""Stages as a job declares them, and the one builder that makes a Ray Data plan of them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import torch

from jobs import resources
from jobs.resources import MODEL, TASK, Placement
from jobs.stages.batches import Block


@dataclass(frozen=True)
class Stage:
    """One `map_batches` step: `parts` run in order in one call (a function with its keyword
    arguments, or a class with its constructor's), as `kind` says (resources.TASK, MODEL, PER_CORE),
    with `gpu` its weight on a GPU among the job's model stages."""

    parts: tuple[tuple[Callable, Mapping], ...]
    kind: str = TASK
    gpu: float = 0.0
    rows: int | None = None  # rows per call; default the job's block


def stage(fn: Callable, kind: str | None = None, gpu: float = 0.0, rows: int | None = None, **args: object) -> Stage:
    """`fn` with its keyword arguments; `kind` by default: a class is an actor stage (MODEL), a function a task."""
    return Stage(((fn, args),), kind or (MODEL if isinstance(fn, type) else TASK), gpu, rows)


def fused(*stages: Stage) -> Stage:
    """One actor stage running `stages` one after the other (one model process per GPU)."""
    return Stage(tuple(p for s in stages for p in s.parts), MODEL, sum(s.gpu for s in stages), stages[0].rows)


class Actor:
    """An actor running a stage's parts: torch threads set from its own node, classes built once."""

    def __init__(self, parts: tuple[tuple[Callable, Mapping], ...], kind: str, device: str, per_node: int, threads: int | None) -> None:
        chosen = resources.torch_threads(kind, device, per_node, threads)
        if chosen:
            torch.set_num_threads(chosen)
        self.calls = [fn(**args) if isinstance(fn, type) else functools.partial(fn, **args) for fn, args in parts]

    def __call__(self, block: pa.Table) -> pa.Table:
        batch = Block(block)
        for call in self.calls[:-1]:
            batch = Block(call(batch))
        return self.calls[-1](batch)


def on_blocks(fn: Callable) -> Callable:
    """`fn`, a task stage's function, called with Ray's Arrow block as a Block."""

    @functools.wraps(fn)
    def call(block: pa.Table, **kwargs: object) -> object:
        return fn(Block(block), **kwargs)

    return call


def name(s: Stage) -> str:
    return "+".join(fn.__name__ for fn, _ in s.parts)


@dataclass(frozen=True)
class Plan:
    """A Ray Data plan and the most actors each of its actor stages (by name) may have."""

    dataset: object
    pools: dict[str, int]


def build(source, stages: list[Stage], place: Placement, block: int) -> Plan:
    """`source` (a Dataset of input rows) through `stages`, each with the resources its kind asks for.
    An actor stage's operator is named after its parts (MapBatches(RestoreFaces)), so that its stats can be found."""
    import ray

    shares = resources.gpu_shares([s.gpu if s.kind != TASK else 0.0 for s in stages]) if place.gpus else [0.0] * len(stages)
    actor_cpus = place.actor_cpus([s.kind for s in stages if s.kind != TASK])
    ds, pools = source, {}
    for s, share in zip(stages, shares):
        common = {"batch_format": "pyarrow", "batch_size": s.rows or block}
        if s.kind == TASK:
            ((fn, args),) = s.parts
            ds = ds.map_batches(on_blocks(fn), fn_kwargs=dict(args), num_cpus=resources.TASK_CPUS, **common)
        else:
            called = name(s)
            pools[called] = place.pool(s.kind)
            ds = ds.map_batches(
                type(called, (Actor,), {}),
                fn_constructor_kwargs={"parts": s.parts, "kind": s.kind, "device": place.device, "per_node": place.workers_per_node(s.kind), "threads": place.threads},
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pools[called]),
                num_cpus=actor_cpus,
                num_gpus=share,
                **common,
            )
    return Plan(ds, pools)


def busy_seconds(plan: Plan) -> dict[str, tuple[float, float]]:
    """After `plan` ran: per actor stage, (seconds its actors spent in its calls, seconds its actors
    had: the most actors it may have times the time from its first call's start to its last call's
    end), from Ray Data's operator stats. The ratio is the stage's busy fraction, a lower bound
    when its pool did not grow to its largest; empty when Ray gives no stats."""
    try:
        summaries = [plan.dataset.get_stats_summary()]
    except Exception:  # stats only inform the summary: a run that committed its work is not failed for them
        return {}
    found, operators = {}, []
    while summaries:  # the last operator's stats, and its inputs' as parents
        summary = summaries.pop()
        operators += summary.operators_stats
        summaries += summary.parents
    for op in operators:
        stage = op.operator_name.removeprefix("MapBatches(").removesuffix(")")
        if stage in plan.pools and op.function_body_time and op.earliest_start_time is not None and op.latest_end_time is not None:
            found[stage] = (op.function_body_time.sum, plan.pools[stage] * (op.latest_end_time - op.earliest_start_time))
    return found


@dataclass(frozen=True)
class Context:
    """What the stages of a job depend on besides its flags: where they run and what the inputs need."""

    place: Placement
    block: int
    detecting: bool  # some inputs are whole images without manifest landmarks
    synthetic: bool  # --synthetic-weights: every network has synthetic weights
    record: dict = field(default_factory=dict)  # the run record, as the ledger stores it
