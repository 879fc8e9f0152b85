"""The genetic batch placement: reproducible, always feasible, and a front that trades cost against spread."""

import numpy as np
import pytest

from allocation.solvers import PlacementRequest
from allocation.solvers.batch import BatchRequest, batch_place
from allocation.solvers.fleet import Fleet
from allocation.solvers.genetic import crowding, genetic_place, pareto_ranks
from allocation.solvers.online import BestFitPolicy


def share(milli: int, *, cpu: int = 1000, count: int = 1) -> BatchRequest:
    return BatchRequest(PlacementRequest(count, milli, cpu, 1024))


def two_provider_fleet() -> tuple[Fleet, np.ndarray]:
    fleet = Fleet.build(cpu=[64000] * 4, memory=[262144] * 4, gpu_count=[4] * 4, models=["T4"] * 4,
                        price=[1.0, 1.0, 3.0, 3.0])
    return fleet, np.array([0, 0, 1, 1])


def test_same_seed_gives_the_same_front():
    fleet, provider = two_provider_fleet()
    requests = [share(1000) for _ in range(6)]

    first = genetic_place(fleet, requests, BestFitPolicy(), seed=3, generations=15, provider=provider)
    second = genetic_place(fleet, requests, BestFitPolicy(), seed=3, generations=15, provider=provider)

    assert [plan.assignments for plan in first.front] == [plan.assignments for plan in second.front]


def test_front_trades_price_for_spread():
    fleet, provider = two_provider_fleet()
    requests = [share(1000) for _ in range(4)]

    result = genetic_place(fleet, requests, BestFitPolicy(), seed=1, generations=40, provider=provider)

    placed_all = [plan for plan in result.front if len(plan.assignments) == 4]
    concentrations = {plan.objectives[3] for plan in placed_all}
    assert 1.0 in concentrations  # everything on the cheap provider
    assert min(concentrations) <= 0.75  # some work moved to the other provider, at a price
    cheapest = min(placed_all, key=lambda plan: plan.objectives[1])
    assert {provider[row] for row, _ in cheapest.assignments.values()} == {0}


def test_every_plan_respects_capacity():
    fleet = Fleet.build(cpu=[8000, 8000], memory=[65536] * 2, gpu_count=[2, 2], models=["T4", "T4"], price=[1, 2])
    requests = [share(600, cpu=3000), share(500, cpu=3000), share(500), share(1000, count=2)]

    result = genetic_place(fleet, requests, BestFitPolicy(), seed=0, generations=20)

    for plan in result.front:
        gpu_used = np.zeros_like(fleet.gpu_free)
        cpu_used = np.zeros_like(fleet.cpu_free)
        for index, (row, columns) in plan.assignments.items():
            gpu_used[row, list(columns)] += requests[index].request.gpu_milli_per_gpu
            cpu_used[row] += requests[index].request.cpu_millicores
        assert (gpu_used <= fleet.gpu_free).all()
        assert (cpu_used <= fleet.cpu_free).all()


def test_genetic_matches_cp_sat_small_batch():
    fleet = Fleet.build(cpu=[64000], memory=[262144], gpu_count=[1], models=["T4"], price=[1.0])
    requests = [share(600), share(500), share(500)]

    genetic = genetic_place(fleet, requests, BestFitPolicy(), seed=0, generations=30)
    exact = batch_place(fleet, requests, BestFitPolicy())

    assert genetic.best_weighted().weighted() == exact.objective


def test_pareto_ranks_and_crowding():
    points = np.array([[1, 5], [2, 2], [5, 1], [3, 3], [6, 6]], dtype=float)

    assert pareto_ranks(points).tolist() == [0, 0, 0, 1, 2]
    distance = crowding(points[:3])
    assert np.isinf(distance[0])
    assert np.isinf(distance[2])
    assert np.isfinite(distance[1])


def test_too_small_population_is_refused():
    fleet, _ = two_provider_fleet()

    with pytest.raises(ValueError, match="population is 2"):
        genetic_place(fleet, [share(500)], BestFitPolicy(), population=2)
