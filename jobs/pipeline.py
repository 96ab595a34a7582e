"""Stages as a job declares them, and the one builder that makes a Ray Data plan of them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import torch

from jobs import resources
from jobs.resources import MODEL, TASK, Placement
from jobs.stages.batches import Batch, as_batch


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

    def __call__(self, batch: Batch) -> pa.Table:
        for call in self.calls[:-1]:
            batch = as_batch(call(batch))
        return self.calls[-1](batch)


def build(source, stages: list[Stage], place: Placement, block: int):
    """`source` (a Dataset of input rows) through `stages`, each with the resources its kind asks for."""
    import ray

    shares = resources.gpu_shares([s.gpu if s.kind != TASK else 0.0 for s in stages]) if place.gpus else [0.0] * len(stages)
    actor_cpus = place.actor_cpus([s.kind for s in stages if s.kind != TASK])
    ds = source
    for s, share in zip(stages, shares):
        common = {"batch_format": "numpy", "batch_size": s.rows or block}
        if s.kind == TASK:
            ((fn, args),) = s.parts
            ds = ds.map_batches(fn, fn_kwargs=dict(args), num_cpus=resources.TASK_CPUS, **common)
        else:
            ds = ds.map_batches(
                Actor,
                fn_constructor_kwargs={"parts": s.parts, "kind": s.kind, "device": place.device, "per_node": place.workers_per_node(s.kind), "threads": place.threads},
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=place.pool(s.kind)),
                num_cpus=actor_cpus,
                num_gpus=share,
                **common,
            )
    return ds


@dataclass(frozen=True)
class Context:
    """What the stages of a job depend on besides its flags: where they run and what the inputs need."""

    place: Placement
    block: int
    detecting: bool  # some inputs are whole images without manifest landmarks
    synthetic: bool  # --synthetic-weights: every network has synthetic weights
    record: dict = field(default_factory=dict)  # the run record, as the ledger stores it
