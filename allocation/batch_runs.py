"""Batch placement for the scheduler's cycles, with every run recorded as a ``SolverRun``.

The scheduler builds the fleet's free capacity for a window and the pending requests, then calls
``batch_placement_run``. This module picks the solver and runs it. Whatever the outcome, it records
what was solved, the objective, the status and the wall time.
"""

import logging
import time
from typing import Sequence

from django.conf import settings

from marketplace.metrics import solver_run_observe

from .models import SolverRun
from .placement_policy import placement_policy
from .solvers.batch import BatchPlan, BatchRequest, batch_place, plan_objective, plan_prices
from .solvers.fleet import Fleet
from .solvers.genetic import genetic_place

logger = logging.getLogger(__name__)

SOLVERS = ("cp_sat", "genetic")
GENETIC_MAX_GENERATIONS = 10_000
"""The genetic search stops at this many generations or at the time limit, whichever comes first."""


def batch_placement_run(fleet: Fleet, requests: Sequence[BatchRequest], *, solver: str = "cp_sat",
                        time_limit_seconds: float | None = None, seed: int = 0) -> BatchPlan:
    """Place ``requests`` on ``fleet`` with ``solver`` and record the run; raise ``ValueError`` for an unknown solver.

    The genetic search returns its front's best plan by CP-SAT's weights, so both solvers answer
    the same question. ``time_limit_seconds`` defaults to the ``BATCH_TIME_LIMIT_SECONDS`` setting.
    """
    if solver not in SOLVERS:
        raise ValueError(f"Unknown batch solver {solver!r}. Use one of: {', '.join(SOLVERS)}.")
    limit = settings.MARKETPLACE["BATCH_TIME_LIMIT_SECONDS"] if time_limit_seconds is None else time_limit_seconds
    if not limit > 0 or limit == float("inf"):
        raise ValueError(f"time_limit_seconds is {limit}; pass a positive, finite number of seconds.")
    policy = placement_policy()
    logger.info("Batch placement run started: %s on %d requests and %d nodes, %.1f s limit", solver, len(requests),
                fleet.size, limit)

    record = {"kind": SolverRun.Kind.BATCH, "policy": f"{solver}/{policy.name}", "requests": len(requests),
              "nodes": fleet.size}
    started = time.perf_counter()
    try:
        plan, detail = _solve(fleet, requests, policy, solver, limit, seed)
    except Exception as error:  # the run is recorded whatever the solver raised, then the error goes on
        logger.warning("Batch placement run failed: %s: %s: %s", solver, type(error).__name__, error)
        wall_seconds = time.perf_counter() - started
        solver_run_observe(kind=record["kind"], policy=record["policy"], wall_seconds=wall_seconds)
        SolverRun.objects.create(**record, status=f"failed: {type(error).__name__}"[:32],
                                 wall_ms=int(1000 * wall_seconds),
                                 detail={"error": str(error)[:500], "seed": seed})
        raise

    solver_run_observe(kind=record["kind"], policy=record["policy"], wall_seconds=plan.wall_seconds)
    SolverRun.objects.create(
        **record, variables=plan.variables, objective=plan.objective, status=plan.status,
        wall_ms=int(1000 * plan.wall_seconds),
        detail={**detail, "placed": len(plan.assignments), "price_cents": plan.price_cents,
                "cheapest_cents": plan.cheapest_cents, "seed": seed},
    )
    logger.info("Batch placement run finished: %s placed %d of %d, status %s, %.2f s", solver, len(plan.assignments),
                len(requests), plan.status, plan.wall_seconds)
    return plan


def _solve(fleet: Fleet, requests: Sequence[BatchRequest], policy, solver: str, limit: float,
           seed: int) -> tuple[BatchPlan, dict]:
    if solver == "cp_sat":
        plan = batch_place(fleet, requests, policy, time_limit_seconds=limit, seed=seed)
        return plan, {"greedy_objective": plan.greedy_objective, "notes": plan.notes}

    result = genetic_place(fleet, requests, policy, seed=seed, generations=GENETIC_MAX_GENERATIONS,
                           time_limit_seconds=limit)
    best = result.best_weighted()
    objective = plan_objective(fleet, requests, best.assignments)
    paid, cheapest = plan_prices(fleet, requests, best.assignments)
    status = "front_best_time_limit" if result.stopped_by_time else "front_best"
    plan = BatchPlan(assignments=best.assignments, status=status, solver_status=status, objective=objective,
                     greedy_objective=objective, wall_seconds=result.wall_seconds, price_cents=paid,
                     cheapest_cents=cheapest)
    return plan, {"front": len(result.front), "generations": result.generations}
