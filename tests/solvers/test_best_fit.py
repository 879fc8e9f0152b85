"""Best-fit placement on hand-built node states, without a database."""

import pytest

from allocation.solvers import NodeState, PlacementRequest, get_policy
from allocation.solvers.best_fit import BestFitPolicy


def node(node_id: int, gpu_free: list[int], *, cpu_free=64000, memory_free=262144, price=1.0, cpu=64000) -> NodeState:
    return NodeState(
        node_id=node_id, gpu_model="T4", gpu_count=len(gpu_free), cpu_capacity_millicores=cpu,
        cpu_free_millicores=cpu_free, memory_capacity_mib=262144, memory_free_mib=memory_free,
        gpu_free_milli=tuple((node_id * 100 + index, free) for index, free in enumerate(gpu_free)),
        price_per_gpu_hour=price,
    )


def request(gpu_count=1, milli=1000, cpu=1000, memory=1024) -> PlacementRequest:
    return PlacementRequest(gpu_count=gpu_count, gpu_milli_per_gpu=milli, cpu_millicores=cpu, memory_mib=memory)


def test_registry_returns_best_fit():
    assert isinstance(get_policy("best_fit"), BestFitPolicy)


def test_unknown_policy_names_valid_ones():
    with pytest.raises(KeyError, match="Use one of: best_fit"):
        get_policy("magic")


def test_fuller_node_ranks_first():
    ranked = BestFitPolicy().rank(request(), [node(1, [1000, 1000]), node(2, [1000, 0])])

    assert [placement.node_id for placement in ranked] == [2, 1]


def test_tightest_gpu_is_chosen_within_node():
    ranked = BestFitPolicy().rank(request(milli=300), [node(1, [1000, 400, 600])])

    assert ranked[0].gpu_shares == ((101, 300),)


def test_infeasible_nodes_are_left_out():
    nodes = [node(1, [200, 200]), node(2, [1000], cpu_free=500), node(3, [1000], memory_free=10)]

    assert BestFitPolicy().rank(request(milli=500), nodes) == []


def test_multi_gpu_needs_enough_fitting_gpus():
    ranked = BestFitPolicy().rank(request(gpu_count=2), [node(1, [1000, 999]), node(2, [1000, 1000, 1000])])

    assert [placement.node_id for placement in ranked] == [2]
    assert len(ranked[0].gpu_shares) == 2


def test_tie_goes_to_cheaper_node():
    ranked = BestFitPolicy().rank(request(), [node(1, [1000], price=2.0), node(2, [1000], price=1.5)])

    assert [placement.node_id for placement in ranked] == [2, 1]


def test_cpu_only_request_takes_no_gpu():
    ranked = BestFitPolicy().rank(request(gpu_count=0, milli=0), [node(1, [0, 0])])

    assert ranked[0].gpu_shares == ()


def test_score_is_mean_leftover_fraction():
    score = BestFitPolicy.score(request(milli=500, cpu=32000), node(1, [1000, 1000]))

    assert score == pytest.approx(0.5 * 0.5 + 0.5 * 0.75)


def test_solvers_do_not_import_django():
    import subprocess
    import sys

    code = "import allocation.solvers, allocation.trace.csv_reader, allocation.trace.overlay, sys; assert not any(m.startswith('django') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
