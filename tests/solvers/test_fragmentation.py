"""FGD's fragmentation measure on small fleets, checked against hand-computed values."""

import numpy as np
import pytest

from allocation.solvers import PlacementRequest, TargetWorkload, TaskShape
from allocation.solvers.fleet import Fleet
from allocation.solvers.fragmentation import FragmentationTracker


def fleet_of(gpu_free_rows: list[list[int]], cpu=(8000,), models=("T4",)) -> Fleet:
    fleet = Fleet.build(cpu=list(cpu) * len(gpu_free_rows) if len(cpu) == 1 else list(cpu),
                        memory=[65536] * len(gpu_free_rows), gpu_count=[len(row) for row in gpu_free_rows],
                        models=list(models) * len(gpu_free_rows) if len(models) == 1 else list(models))
    for index, row in enumerate(gpu_free_rows):
        fleet.gpu_free[index, : len(row)] = row
    return fleet


def test_typical_shapes_cover_the_threshold_and_renormalise():
    tasks = [TaskShape(1000, 1, 500)] * 60 + [TaskShape(2000, 1, 1000)] * 36 + [TaskShape(0, 0, 0)] * 4

    workload = TargetWorkload.typical(tasks, coverage=0.95)

    assert workload.shapes == (TaskShape(1000, 1, 500), TaskShape(2000, 1, 1000))
    assert workload.weights == pytest.approx((60 / 96, 36 / 96))


def test_typical_shapes_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="at least one task shape"):
        TargetWorkload.typical([])


def test_fragment_of_satisfied_shape():
    # GPUs with 300 and 1000 free: a 500 share fits, so only the 300 is fragment for it.
    workload = TargetWorkload(shapes=(TaskShape(1000, 1, 500),), weights=(1.0,))

    tracker = FragmentationTracker(fleet_of([[300, 1000]]), workload)

    assert tracker.node_fragment[0] == pytest.approx(300)


def test_fragment_of_unsatisfied_shapes():
    # Lacks CPU for the first shape, GPUs for the second, and a CPU-only shape never uses GPUs.
    workload = TargetWorkload(
        shapes=(TaskShape(9000, 1, 500), TaskShape(1000, 2, 1000), TaskShape(1000, 0, 0)), weights=(0.5, 0.25, 0.25),
    )

    tracker = FragmentationTracker(fleet_of([[300, 1000]]), workload)

    assert tracker.node_fragment[0] == pytest.approx(1300)


def test_model_mismatch_makes_everything_fragment():
    workload = TargetWorkload(shapes=(TaskShape(1000, 1, 500, gpu_model="A100"),), weights=(1.0,))

    tracker = FragmentationTracker(fleet_of([[1000]]), workload)

    assert tracker.node_fragment[0] == pytest.approx(1000)


def test_fragment_after_matches_a_recount_after_the_placement():
    workload = TargetWorkload(
        shapes=(TaskShape(2000, 1, 470), TaskShape(4000, 1, 1000), TaskShape(1000, 2, 1000), TaskShape(500, 0, 0)),
        weights=(0.4, 0.3, 0.2, 0.1),
    )
    fleet = fleet_of([[1000, 530, 1000, 100], [1000, 1000, 0, 0]], cpu=(8000, 6000))
    tracker = FragmentationTracker(fleet, workload)
    request = PlacementRequest(gpu_count=1, gpu_milli_per_gpu=470, cpu_millicores=3000, memory_mib=1)

    predicted = tracker.fragment_after(np.array([0, 0, 1]), 3000, np.array([[1000], [530], [1000]]), 470)
    recounted = []
    for row, column in ((0, 0), (0, 1), (1, 0)):
        copy = fleet_of([list(fleet.gpu_free[0]), list(fleet.gpu_free[1])], cpu=(8000, 6000))
        copy.take(row, np.array([column]), request)
        recounted.append(FragmentationTracker(copy, workload).node_fragment[row])

    assert predicted == pytest.approx(recounted)


def test_refresh_after_take_updates_one_node():
    workload = TargetWorkload(shapes=(TaskShape(1000, 1, 1000),), weights=(1.0,))
    fleet = fleet_of([[1000, 1000], [1000, 1000]])
    tracker = FragmentationTracker(fleet, workload)

    fleet.take(1, np.array([0]), PlacementRequest(1, 600, 1000, 1))
    tracker.refresh(1)

    assert tracker.node_fragment.tolist() == [0.0, 400.0]
    assert tracker.cluster_fragment() == pytest.approx(400)
