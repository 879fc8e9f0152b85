"""Online placement policies on hand-built node states, without a database."""

import subprocess
import sys

import numpy as np
import pytest

from allocation.solvers import POLICIES, NodeState, PlacementRequest, TargetWorkload, TaskShape, get_policy
from allocation.solvers.fleet import Fleet
from allocation.solvers.online import BestFitPolicy, FgdBestFitPolicy, FgdPolicy, leftover_fraction

SHARES_AND_WHOLE = TargetWorkload(
    shapes=(TaskShape(1000, 1, 500), TaskShape(1000, 1, 1000)), weights=(0.5, 0.5),
)


def node(node_id: int, gpu_free: list[int], *, cpu_free=64000, memory_free=262144, price=1.0, cpu=64000,
         model="T4") -> NodeState:
    return NodeState(
        node_id=node_id, gpu_model=model, gpu_count=len(gpu_free), cpu_capacity_millicores=cpu,
        cpu_free_millicores=cpu_free, memory_capacity_mib=262144, memory_free_mib=memory_free,
        gpu_free_milli=tuple((node_id * 100 + index, free) for index, free in enumerate(gpu_free)),
        price_per_gpu_hour=price,
    )


def request(gpu_count=1, milli=1000, cpu=1000, memory=1024) -> PlacementRequest:
    return PlacementRequest(gpu_count=gpu_count, gpu_milli_per_gpu=milli, cpu_millicores=cpu, memory_mib=memory)


def test_registry_lists_every_policy():
    assert POLICIES == ("best_fit", "dot_product", "fgd", "fgd_best_fit", "gpu_packing", "random")


def test_registry_returns_best_fit():
    assert isinstance(get_policy("best_fit"), BestFitPolicy)


def test_unknown_policy_names_valid_ones():
    with pytest.raises(KeyError, match="Use one of: best_fit, dot_product"):
        get_policy("magic")


def test_fgd_without_workload_is_refused():
    with pytest.raises(ValueError, match="needs a target workload"):
        get_policy("fgd")


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_leaves_out_infeasible_nodes(name):
    policy = get_policy(name, workload=SHARES_AND_WHOLE, seed=1)
    nodes = [node(1, [200, 200]), node(2, [1000], cpu_free=500), node(3, [1000], memory_free=10), node(4, [1000])]

    ranked = policy.rank(request(milli=500), nodes)

    assert [placement.node_id for placement in ranked] == [4]
    assert ranked[0].gpu_shares == ((400, 500),)


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_returns_nothing_without_nodes(name):
    assert get_policy(name, workload=SHARES_AND_WHOLE).rank(request(), []) == []


def test_best_fit_ranks_fuller_node_first():
    ranked = BestFitPolicy().rank(request(), [node(1, [1000, 1000]), node(2, [1000, 0])])

    assert [placement.node_id for placement in ranked] == [2, 1]


def test_best_fit_takes_tightest_gpu_within_node():
    ranked = BestFitPolicy().rank(request(milli=300), [node(1, [1000, 400, 600])])

    assert ranked[0].gpu_shares == ((101, 300),)


def test_multi_gpu_request_needs_enough_fitting_gpus():
    ranked = BestFitPolicy().rank(request(gpu_count=2), [node(1, [1000, 999]), node(2, [1000, 1000, 1000])])

    assert [placement.node_id for placement in ranked] == [2]
    assert ranked[0].gpu_shares == ((200, 1000), (201, 1000))


def test_tie_goes_to_cheaper_node():
    ranked = BestFitPolicy().rank(request(), [node(1, [1000], price=2.0), node(2, [1000], price=1.5)])

    assert [placement.node_id for placement in ranked] == [2, 1]


def test_cpu_only_request_takes_no_gpu():
    ranked = BestFitPolicy().rank(request(gpu_count=0, milli=0), [node(1, [0, 0])])

    assert ranked[0].gpu_shares == ()


def test_best_fit_leftover_fraction():
    fleet = Fleet.from_states([node(1, [1000, 1000])])

    leftover = leftover_fraction(fleet, request(milli=500, cpu=32000), np.array([0]))

    assert leftover[0] == pytest.approx(0.5 * 0.5 + 0.5 * 0.75)


def test_fgd_keeps_whole_gpu_free():
    # On the half-used GPU of node 1 the share leaves a whole GPU for the whole-GPU shape.
    # On node 2 it would split the last whole GPU into halves that whole-GPU tasks cannot use.
    nodes = [node(1, [500, 1000]), node(2, [1000, 0])]

    ranked = FgdPolicy(SHARES_AND_WHOLE).rank(request(milli=500), nodes)

    assert ranked[0].node_id == 1
    assert ranked[0].gpu_shares == ((100, 500),)


def test_fgd_best_fit_tie_break():
    # Two idle nodes look the same to FGD; best fit prefers the one with less CPU left.
    nodes = [node(1, [1000, 1000]), node(2, [1000, 1000], cpu_free=8000)]

    ranked = FgdBestFitPolicy(SHARES_AND_WHOLE).rank(request(), nodes)

    assert [placement.node_id for placement in ranked] == [2, 1]


def test_random_policy_is_reproducible_with_seed():
    nodes = [node(index, [1000]) for index in range(1, 20)]

    first = [p.node_id for p in get_policy("random", seed=7).rank(request(), nodes)]
    second = [p.node_id for p in get_policy("random", seed=7).rank(request(), nodes)]

    assert first == second
    assert sorted(first) == list(range(1, 20))


def test_solvers_do_not_import_django():
    code = ("import allocation.solvers, allocation.trace.csv_reader, allocation.trace.overlay, sys; "
            "assert not any(m.startswith('django') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("shape, message", [
    ((3, 0, 1000, 1024), "use 1 to 1000"),
    ((1, 1001, 1000, 1024), "use 1 to 1000"),
    ((-1, 500, 1000, 1024), "negative amount"),
    ((1, 500, -5, 1024), "negative amount"),
])
def test_impossible_request_shapes_are_refused(shape, message):
    with pytest.raises(ValueError, match=message):
        PlacementRequest(*shape)


@pytest.mark.parametrize("arguments, message", [
    ({"node_ids": [1, 1]}, "node ids repeat"),
    ({"price": [1.0, float("nan")]}, "not a finite number"),
    ({"price": [1.0, -2.0]}, "price is negative"),
    ({"models": ["T4"]}, "differ in length"),
])
def test_inconsistent_fleets_are_refused(arguments, message):
    values = {"cpu": [1000, 1000], "memory": [1024, 1024], "gpu_count": [1, 1], "models": ["T4", "T4"], **arguments}

    with pytest.raises(ValueError, match=message):
        Fleet.build(**values)


def test_target_workload_needs_one_weight_per_shape():
    with pytest.raises(ValueError, match="one weight per shape"):
        TargetWorkload(shapes=(TaskShape(1000, 1, 500),), weights=(0.5, 0.5))
