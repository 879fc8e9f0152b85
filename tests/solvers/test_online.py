"""Online placement policies on hand-built node states, without a database."""

import subprocess
import sys

import numpy as np
import pytest

from allocation.solvers import POLICIES, NodeState, PlacementRequest, TargetWorkload, TaskShape, get_policy
from allocation.solvers.fleet import Fleet
from allocation.solvers.online import (BestFitPolicy, FgdBestFitPolicy, FgdPolicy, GapCounts, GapSquaresPolicy,
                                       GapSquaresWastePolicy, leftover_fraction, unfillable_milli)

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
    assert POLICIES == ("best_fit", "dot_product", "fgd", "fgd_best_fit", "gap_squares", "gap_squares_waste", "gpu_packing",
                        "random")


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


WHOLE_GPUS_WITH_8_CORES = TargetWorkload(shapes=(TaskShape(8000, 1, 1000),), weights=(1.0,))
SHARES_320_TO_650 = TargetWorkload(
    shapes=(TaskShape(1000, 1, 650), TaskShape(1000, 1, 470), TaskShape(1000, 1, 320)), weights=(0.3, 0.4, 0.3),
)


def test_gap_squares_cpu_per_gpu_from_workload():
    mixed = TargetWorkload(shapes=(TaskShape(8000, 1, 1000), TaskShape(4000, 1, 500), TaskShape(32000, 0, 0)),
                           weights=(0.5, 0.25, 0.25))

    # (0.5 * 8000 + 0.25 * 4000) millicores over (0.5 * 1 + 0.25 * 0.5) GPUs. The CPU-only shape is left out.
    assert GapSquaresPolicy(mixed).cpu_per_gpu == pytest.approx(5000 / 0.625)
    assert GapSquaresPolicy(mixed).smallest_share == 500


def test_gap_squares_avoids_stranding_gpus():
    # 10 cores leave node 1 with 14 for two free GPUs, a quarter GPU short of 8 cores per GPU.
    # FGD's fragment stays the same because one whole GPU still fits, and best fit prefers the fuller node 1.
    nodes = [node(1, [1000, 1000], cpu_free=24000), node(2, [1000, 1000])]
    cpu_only = request(gpu_count=0, milli=0, cpu=10000)

    assert FgdBestFitPolicy(WHOLE_GPUS_WITH_8_CORES).rank(cpu_only, nodes)[0].node_id == 1
    assert GapSquaresPolicy(WHOLE_GPUS_WITH_8_CORES).rank(cpu_only, nodes)[0].node_id == 2


def test_gap_squares_stranded_increase():
    fleet = Fleet.from_states([node(1, [1000, 1000], cpu_free=24000), node(2, [1000, 0], cpu_free=4000)])
    policy = GapSquaresPolicy(WHOLE_GPUS_WITH_8_CORES)

    cpu_only = policy.stranded_increase(fleet, np.array([0]), request(gpu_count=0, milli=0, cpu=10000))
    whole = policy.stranded_increase(fleet, np.array([1]), request(cpu=2000))

    assert cpu_only[0] == pytest.approx(2 - 14000 / 8000)
    # Node 2 is half a GPU short (4 cores for one GPU). Taking that GPU removes the shortfall.
    assert whole[0] == pytest.approx(-0.5)


def test_gap_squares_fills_most_common_gap():
    # Three GPUs have a 530-milli gap and one a 350-milli gap. Best fit takes the tighter 350,
    # leaving 30 milli. Gap squares takes a 530 gap: 3^2 + 1^2 = 10 becomes 2^2 + 1^2 + 1^2 = 6.
    nodes = [node(1, [350]), node(2, [530]), node(3, [530]), node(4, [530])]

    assert FgdBestFitPolicy(SHARES_320_TO_650).rank(request(milli=320), nodes)[0].node_id == 1
    ranked = GapSquaresPolicy(SHARES_320_TO_650).rank(request(milli=320), nodes)

    assert ranked[0].node_id == 2
    assert ranked[0].gpu_shares == ((200, 320),)


def test_gap_squares_closes_gap_over_opening_gpu():
    # Node 1 has a 350-milli gap beside a free GPU. The share closes the gap (30 left, below the
    # smallest typical share) rather than open the free GPU.
    ranked = GapSquaresPolicy(SHARES_320_TO_650).rank(request(milli=320), [node(1, [1000, 350]), node(2, [1000])])

    assert ranked[0].node_id == 1
    assert ranked[0].gpu_shares == ((101, 320),)


def test_gap_squares_without_shares_in_workload():
    # Only whole-GPU shapes: no gap is open, and a share falls back to FGD's score and best fit.
    ranked = GapSquaresPolicy(WHOLE_GPUS_WITH_8_CORES).rank(request(milli=500), [node(1, [1000, 1000]), node(2, [500])])

    assert [placement.node_id for placement in ranked] == [2, 1]


def test_gap_squares_without_gpu_shapes_has_no_penalty():
    policy = GapSquaresPolicy(TargetWorkload(shapes=(TaskShape(4000, 0, 0),), weights=(1.0,)))
    fleet = Fleet.from_states([node(1, [1000], cpu_free=1000)])

    assert policy.cpu_per_gpu is None
    assert policy.stranded_increase(fleet, np.array([0]), request(cpu=1000))[0] == 0


SHARES_220_TO_650 = TargetWorkload(
    shapes=(TaskShape(1000, 1, 650), TaskShape(1000, 1, 320), TaskShape(1000, 1, 230), TaskShape(1000, 1, 220)),
    weights=(0.4, 0.3, 0.2, 0.1),
)


def test_unfillable_milli_of_gaps():
    unfillable = unfillable_milli([650, 320, 230, 220])

    assert unfillable[0] == 0
    assert unfillable[120] == 120
    assert unfillable[350] == 30
    assert unfillable[450] == 0
    # 3 * 230 = 690 is the largest sum up to 700.
    assert unfillable[700] == 10
    # 320 + 230 + 230 + 220 fill a whole GPU exactly.
    assert unfillable[1000] == 0


def test_unfillable_milli_without_shares():
    np.testing.assert_array_equal(unfillable_milli([]), np.arange(1001))


def test_gap_squares_waste_share_cost():
    # On 40,000 GPUs one unfillable milli weighs one unit of squares. Closing a 350 gap with 320
    # leaves 30, which was already unfillable. Closing a 450 gap leaves 130 unfillable, up from 0.
    policy = GapSquaresWastePolicy(SHARES_220_TO_650)
    fleet = Fleet.from_states([node(index, [350] * 4 + [450] * 4 if index == 1 else [1000] * 8)
                               for index in range(1, 5001)])
    state = policy.prepare(fleet)

    cost = policy.share_cost(state, np.array([350, 450]), 320)
    squares = policy.squares_increase(state.counts, np.array([350, 450]), 320)

    assert cost[0] == pytest.approx(squares[0])
    assert cost[1] == pytest.approx(squares[1] + 130)


def test_gap_squares_waste_leaves_fillable_gap():
    # A 230 share closes node 1's 350 gap, leaving 120 that no typical share fills, or leaves
    # exactly one 220 share's room on node 2. Gap squares closes the gap. On 802 GPUs each
    # unfillable milli weighs 0.02 units of squares, so 90 more unfillable milli outweigh the one
    # unit that closing gains.
    full_nodes = [node(index, [0] * 8) for index in range(3, 103)]
    nodes = [node(1, [350]), node(2, [450]), *full_nodes]

    assert GapSquaresPolicy(SHARES_220_TO_650).rank(request(milli=230), nodes)[0].node_id == 1
    assert GapSquaresWastePolicy(SHARES_220_TO_650).rank(request(milli=230), nodes)[0].node_id == 2


def test_gap_counts_follow_placements():
    fleet = Fleet.from_states([node(1, [1000, 1000, 1000]), node(2, [1000])])
    counts = GapCounts(fleet, SHARES_320_TO_650)

    fleet.take(0, np.array([1, 2]), request(gpu_count=2, milli=470))
    counts.refresh(0)

    assert counts.counts[1000] == 2
    assert counts.counts[530] == 2
    assert counts.counts.sum() == 4
    np.testing.assert_array_equal(counts.counts, GapCounts(fleet, SHARES_320_TO_650).counts)


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
