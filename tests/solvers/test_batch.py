"""CP-SAT batch placement: better than one-by-one placement, always feasible, and a logged greedy fallback."""

import logging

import numpy as np
import pytest
from ortools.sat.python import cp_model

from allocation.solvers import PlacementRequest
from allocation.solvers.batch import BatchRequest, batch_place, greedy_plan
from allocation.solvers.fleet import Fleet
from allocation.solvers.online import BestFitPolicy


def share(milli: int, *, priority: int = 1, cpu: int = 1000, count: int = 1, models=(), max_price=None) -> BatchRequest:
    return BatchRequest(PlacementRequest(count, milli, cpu, 1024), priority=priority, gpu_models=models,
                        max_price_per_gpu_hour=max_price)


def one_gpu_fleet() -> Fleet:
    return Fleet.build(cpu=[64000], memory=[262144], gpu_count=[1], models=["T4"], price=[1.0])


def test_batch_beats_one_by_one_packing():
    requests = [share(600), share(500), share(500)]

    plan = batch_place(one_gpu_fleet(), requests, BestFitPolicy())

    assert greedy_plan(one_gpu_fleet(), requests, BestFitPolicy()).keys() == {0}
    assert plan.status == "optimal"
    assert plan.assignments.keys() == {1, 2}
    assert plan.objective > plan.greedy_objective


def test_higher_priority_wins_the_last_capacity():
    plan = batch_place(one_gpu_fleet(), [share(1000), share(1000, priority=3)], BestFitPolicy())

    assert plan.assignments == {1: (0, (0,))}


def test_batch_does_not_change_the_fleet():
    fleet = one_gpu_fleet()

    batch_place(fleet, [share(500)], BestFitPolicy())

    assert fleet.gpu_free[0, 0] == 1000


def test_cheaper_node_is_chosen_when_both_fit():
    fleet = Fleet.build(cpu=[64000, 64000], memory=[262144] * 2, gpu_count=[1, 1], models=["T4", "T4"],
                        price=[3.0, 1.0])

    plan = batch_place(fleet, [share(1000)], BestFitPolicy())

    assert plan.assignments == {0: (1, (0,))}


def test_random_batches_respect_every_limit():
    random = np.random.default_rng(5)
    model_choices = [(), ("T4",), ("A10", "V100")]
    fleet = Fleet.build(cpu=[16000] * 6, memory=[65536] * 6, gpu_count=[2, 4, 8, 2, 4, 8],
                        models=["T4", "T4", "V100", "V100", "A10", "A10"], price=[1, 2, 3, 1, 2, 3])
    requests = [
        share(int(random.choice([250, 500, 1000])), count=int(random.choice([1, 1, 2])), cpu=int(random.integers(1, 6)) * 1000,
              priority=int(random.integers(1, 4)), models=model_choices[int(random.integers(3))], max_price=[None, 2.0][int(random.integers(2))])
        for _ in range(40)
    ]

    plan = batch_place(fleet, requests, BestFitPolicy(), time_limit_seconds=1)

    gpu_used = np.zeros_like(fleet.gpu_free)
    cpu_used = np.zeros_like(fleet.cpu_free)
    for index, (row, columns) in plan.assignments.items():
        item = requests[index]
        assert len(columns) == item.request.gpu_count
        assert not item.gpu_models or fleet.model_names[fleet.model[row]] in item.gpu_models
        assert item.max_price_per_gpu_hour is None or fleet.price[row] <= item.max_price_per_gpu_hour
        gpu_used[row, list(columns)] += item.request.gpu_milli_per_gpu
        cpu_used[row] += item.request.cpu_millicores
    assert (gpu_used <= fleet.gpu_free).all()
    assert (cpu_used <= fleet.cpu_free).all()
    assert plan.objective >= plan.greedy_objective


def test_solver_without_a_solution_falls_back_to_greedy(monkeypatch, caplog):
    monkeypatch.setattr(cp_model.CpSolver, "solve", lambda self, model: cp_model.UNKNOWN)
    requests = [share(600), share(500)]

    with caplog.at_level(logging.WARNING, logger="allocation.solvers.batch"):
        plan = batch_place(one_gpu_fleet(), requests, BestFitPolicy())

    assert plan.status == "greedy"
    assert plan.solver_status == "UNKNOWN"
    assert plan.assignments.keys() == {0}
    assert "falls back to the greedy plan" in caplog.text


@pytest.mark.parametrize("arguments, message", [
    ({"time_limit_seconds": 0}, "time_limit_seconds is 0"),
    ({"requests": [share(500, priority=0)]}, "priority 0"),
])
def test_invalid_arguments_are_refused(arguments, message):
    options = {"requests": [share(500)], **arguments}
    requests = options.pop("requests")

    with pytest.raises(ValueError, match=message):
        batch_place(one_gpu_fleet(), requests, BestFitPolicy(), **options)


def test_reliability_floor_and_price_against_the_cheapest():
    fleet = Fleet.build(cpu=[64000] * 3, memory=[262144] * 3, gpu_count=[1, 1, 1], models=["T4"] * 3,
                        price=[1.0, 2.0, 3.0])
    fleet.failure_probability = np.array([0.3, 0.01, 0.01])
    careful = BatchRequest(PlacementRequest(1, 1000, 1000, 1024), max_failure_probability=0.05)
    requests = [careful, careful]

    plan = batch_place(fleet, requests, BestFitPolicy())

    assert sorted(row for row, _ in plan.assignments.values()) == [1, 2]
    assert plan.price_cents == 500
    assert plan.cheapest_cents == 400  # each alone would get the 2.00 node
