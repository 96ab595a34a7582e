"""Resources computed from the cluster's nodes: pools, GPU shares, threads (pure, no Ray started)."""

import pytest

from jobs.cli import UsageError
from jobs.resources import MODEL, PER_CORE, Node, gpu_shares, placement, torch_threads


def test_cpu_cluster_has_one_model_actor_per_node_and_one_single_threaded_actor_per_cpu():
    place = placement([Node(0, 0), Node(4, 0), Node(4, 0), Node(8, 0)], "auto", None, None)
    assert (place.device, place.pool(MODEL), place.pool(PER_CORE)) == ("cpu", 3, 16)
    assert place.workers_per_node(MODEL) == 1 and place.block(None) == 8
    fixed = placement([Node(4, 0), Node(4, 0)], "auto", 5, None)
    assert fixed.pool(MODEL) == fixed.pool(PER_CORE) == 5 and fixed.workers_per_node(MODEL) == 3


def test_gpu_cluster_has_one_actor_per_gpu_and_stages_share_each_gpu_by_weight():
    place = placement([Node(16, 8), Node(16, 8)], "auto", None, None)
    assert (place.device, place.pool(MODEL), place.pool(PER_CORE), place.block(None)) == ("cuda", 16, 16, 64)
    assert gpu_shares([0, 1, 2, 1, 0]) == [0.0, 0.25, 0.5, 0.25, 0.0]
    assert sum(gpu_shares([1, 2, 1, 1, 2])) <= 1.0
    assert placement([Node(16, 8)], "cpu", None, None).device == "cpu"


def test_cuda_without_gpus_is_a_usage_error():
    with pytest.raises(UsageError, match="no GPUs"):
        placement([Node(4, 0)], "cuda", None, None)


def test_threads_come_from_the_node_and_single_threaded_stages_get_one():
    assert torch_threads(PER_CORE, "cpu", 1, None) == 1
    assert torch_threads(MODEL, "cpu", 1, 3) == 3
    assert torch_threads(MODEL, "cuda", 1, None) is None
    assert torch_threads(MODEL, "cpu", 1, None) >= 1


def test_actors_leave_cpus_for_the_tasks_and_never_ask_what_tasks_ask():
    from jobs.resources import TASK_CPUS

    two = placement([Node(2, 0)], "auto", None, None)
    for stages in ([MODEL] * 4, [MODEL] * 3, [MODEL, PER_CORE]):
        each = two.actor_cpus(stages)
        assert each != TASK_CPUS and sum(each * two.workers_per_node(k) for k in stages) <= 0.75 * 2
    assert two.actor_cpus([MODEL, MODEL]) == 0.5
