"""Batch placement for the scheduler's cycles, with every run recorded as a ``SolverRun``.

The scheduler builds the fleet's free capacity for a window and the pending requests, and calls
``batch_placement_run``; this module picks the solver, runs it, and records what it solved, the
objective, the status and the wall time, whatever the outcome.
"""

import logging
from typing import Sequence

from django.conf import settings

from .models import SolverRun
from .placement_policy import placement_policy
from .solvers.batch import BatchPlan, BatchRequest, batch_place, plan_objective, plan_prices
from .solvers.fleet import Fleet
from .solvers.genetic import genetic_place

logger = logging.getLogger(__name__)

SOLVERS = ("cp_sat", "genetic")


def batch_placement_run(fleet: Fleet, requests: Sequence[BatchRequest], *, solver: str = "cp_sat",
                        time_limit_seconds: float | None = None, seed: int = 0) -> BatchPlan:
    """Place ``requests`` on ``fleet`` with ``solver`` and record the run; raise ``ValueError`` for an unknown solver.

    The genetic search returns its front's best plan by CP-SAT's weights, so both solvers answer
    the same question. ``time_limit_seconds`` defaults to the ``BATCH_TIME_LIMIT_SECONDS`` setting.
    """
    if solver not in SOLVERS:
        raise ValueError(f"Unknown batch solver {solver!r}. Use one of: {', '.join(SOLVERS)}.")
    limit = time_limit_seconds or settings.MARKETPLACE["BATCH_TIME_LIMIT_SECONDS"]
    policy = placement_policy()
    logger.info("Batch placement run started: %s on %d requests and %d nodes, %.1f s limit", solver, len(requests),
                fleet.size, limit)

    if solver == "cp_sat":
        plan = batch_place(fleet, requests, policy, time_limit_seconds=limit, seed=seed)
        detail = {"greedy_objective": plan.greedy_objective, "notes": plan.notes}
    else:
        result = genetic_place(fleet, requests, policy, seed=seed, generations=10_000, time_limit_seconds=limit)
        best = result.best_weighted()
        objective = plan_objective(fleet, requests, best.assignments)
        paid, cheapest = plan_prices(fleet, requests, best.assignments)
        plan = BatchPlan(assignments=best.assignments, status="front_best", solver_status="front_best",
                         objective=objective, greedy_objective=objective, wall_seconds=result.wall_seconds,
                         price_cents=paid, cheapest_cents=cheapest)
        detail = {"front": len(result.front), "generations": result.generations}

    SolverRun.objects.create(
        kind=SolverRun.Kind.BATCH, policy=f"{solver}/{policy.name}", requests=len(requests), nodes=fleet.size,
        variables=plan.variables, objective=plan.objective, status=plan.status, wall_ms=int(1000 * plan.wall_seconds),
        detail={**detail, "placed": len(plan.assignments), "price_cents": plan.price_cents,
                "cheapest_cents": plan.cheapest_cents, "seed": seed},
    )
    logger.info("Batch placement run finished: %s placed %d of %d, status %s, %.2f s", solver, len(plan.assignments),
                len(requests), plan.status, plan.wall_seconds)
    return plan
