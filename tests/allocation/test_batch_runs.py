"""Batch placement runs for the scheduler: both solvers return plans, and every run is recorded."""

import pytest

from allocation.batch_runs import batch_placement_run
from allocation.models import SolverRun
from allocation.solvers import PlacementRequest
from allocation.solvers.batch import BatchRequest
from allocation.solvers.fleet import Fleet

pytestmark = pytest.mark.django_db


def batch():
    fleet = Fleet.build(cpu=[64000], memory=[262144], gpu_count=[1], models=["T4"], price=[1.0])
    requests = [BatchRequest(PlacementRequest(1, milli, 1000, 1024)) for milli in (600, 500, 500)]
    return fleet, requests


@pytest.mark.parametrize("solver", ["cp_sat", "genetic"])
def test_each_solver_records_its_run(solver):
    fleet, requests = batch()

    plan = batch_placement_run(fleet, requests, solver=solver, time_limit_seconds=1)

    assert plan.assignments.keys() == {1, 2}
    run = SolverRun.objects.get()
    assert (run.kind, run.policy.split("/")[0], run.requests, run.nodes) == (SolverRun.Kind.BATCH, solver, 3, 1)
    assert run.detail["placed"] == 2
    assert run.objective == plan.objective


def test_unknown_solver_is_refused():
    fleet, requests = batch()

    with pytest.raises(ValueError, match="Use one of: cp_sat, genetic"):
        batch_placement_run(fleet, requests, solver="annealing")


def test_failing_solver_is_recorded_and_raised():
    fleet, _ = batch()
    requests = [BatchRequest(PlacementRequest(1, 500, 1000, 1024), priority=0)]

    with pytest.raises(ValueError, match="priority 0"):
        batch_placement_run(fleet, requests, solver="cp_sat", time_limit_seconds=1)

    run = SolverRun.objects.get()
    assert run.status == "failed: ValueError"
    assert "priority 0" in run.detail["error"]


@pytest.mark.parametrize("limit", [0, -1, float("nan"), float("inf")])
def test_time_limit_must_be_positive_and_finite(limit):
    fleet, requests = batch()

    with pytest.raises(ValueError, match="positive, finite number"):
        batch_placement_run(fleet, requests, time_limit_seconds=limit)


def test_genetic_returns_at_once_when_nothing_fits():
    fleet, _ = batch()
    too_big = [BatchRequest(PlacementRequest(4, 1000, 1000, 1024))]

    plan = batch_placement_run(fleet, too_big, solver="genetic", time_limit_seconds=30)

    assert plan.assignments == {}
    assert plan.wall_seconds < 5
    assert SolverRun.objects.get().detail["generations"] == 0
