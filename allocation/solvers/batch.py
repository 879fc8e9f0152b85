"""Batch placement with OR-Tools CP-SAT: place many pending requests at once, not one after another.

The model chooses, for each request, at most one node and the GPUs on it. It maximises, in this
order of weight:

1. the priority-weighted demand placed: ``priority * (GPU milli + 100)`` per placed request, so a
   request without GPUs still counts;
2. minus the price per hour of what is placed, in hundredths of the nodes' currency;
3. minus a fragmentation proxy: each GPU that was whole and gets a share, and each idle node
   that gets work, costs a little, so work packs onto GPUs and nodes already in use.

A greedy plan from an online policy (requests by priority, then in order) seeds the search as a
hint. It is also the fallback: when CP-SAT finds no solution in its time limit, or one worse than
the hint, the greedy plan is returned and the reason logged. Candidate nodes per request are the
online policy's best few on the batch's starting state, plus the greedy plan's choice.
"""

import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from ortools.sat.python import cp_model

from .base import PlacementRequest
from .fleet import Fleet
from .online import OnlinePolicy

logger = logging.getLogger(__name__)

PLACED_WEIGHT = 1000
"""Objective units per unit of placed value; large enough that price and packing never outweigh placing."""
OPENED_GPU_COST = 50
OPENED_NODE_COST = 200
VALUE_FLOOR_MILLI = 100
"""Added to each request's GPU milli in its placed value, so that requests without GPUs count."""


@dataclass(frozen=True)
class BatchRequest:
    """A request in a batch, with its priority (a positive weight) and optional limits."""

    request: PlacementRequest
    priority: int = 1
    gpu_models: tuple[str, ...] = ()
    """Allowed GPU models; empty allows any."""
    max_price_per_gpu_hour: float | None = None
    max_failure_probability: float | None = None
    """The customer's reliability floor: the highest failure probability per period it accepts on a node."""


@dataclass
class BatchPlan:
    """A batch placement: ``assignments`` maps each placed request's index to (fleet row, GPU columns)."""

    assignments: dict[int, tuple[int, tuple[int, ...]]]
    status: str
    """"optimal" or "feasible" (CP-SAT's plan), or "greedy" (the fallback)."""
    solver_status: str
    """CP-SAT's own status name, for the run record."""
    objective: int
    greedy_objective: int
    wall_seconds: float
    variables: int = 0
    price_cents: int = 0
    """Price per hour of the placed requests, in hundredths of the currency."""
    cheapest_cents: int = 0
    """The same requests each on the cheapest node allowed to hold it at the start, ignoring the others: a lower bound."""
    notes: list[str] = field(default_factory=list)

    def placed_milli(self, requests: Sequence[BatchRequest]) -> int:
        """Return the GPU milli of the placed requests."""
        return sum(requests[index].request.gpu_milli_total for index in self.assignments)


def allowed_rows(fleet: Fleet, item: BatchRequest) -> np.ndarray:
    """Return (n,) True where the node's model and price suit ``item``."""
    allowed = fleet.model_mask(item.gpu_models or None)
    if item.max_price_per_gpu_hour is not None:
        allowed &= fleet.price <= item.max_price_per_gpu_hour
    if item.max_failure_probability is not None and fleet.failure_probability is not None:
        allowed &= fleet.failure_probability <= item.max_failure_probability
    return allowed


def placed_value(item: BatchRequest) -> int:
    return item.priority * (item.request.gpu_milli_total + VALUE_FLOOR_MILLI)


def price_cents(fleet: Fleet, row: int, item: BatchRequest) -> int:
    """Return the price per hour of ``item`` on node ``row``, in hundredths of the currency."""
    return int(round(100 * float(fleet.price[row]) * item.request.gpu_milli_total / 1000))


def plan_prices(fleet: Fleet, requests: Sequence[BatchRequest], assignments: dict) -> tuple[int, int]:
    """Return the price per hour of ``assignments`` and the cheapest possible for the same requests, in cents."""
    paid = sum(price_cents(fleet, row, requests[index]) for index, (row, _) in assignments.items())
    cheapest = 0
    for index in assignments:
        rows = fleet.feasible(requests[index].request, allowed_rows(fleet, requests[index]))
        cheapest += min(price_cents(fleet, int(row), requests[index]) for row in rows)
    return paid, cheapest


def greedy_plan(fleet: Fleet, requests: Sequence[BatchRequest], policy: OnlinePolicy) -> dict[int, tuple[int, tuple[int, ...]]]:
    """Place the requests one by one, highest priority first, with ``policy``; ``fleet`` is not changed."""
    scratch = fleet.copy()
    state = policy.prepare(scratch)
    assignments = {}
    for index in sorted(range(len(requests)), key=lambda position: (-requests[position].priority, position)):
        item = requests[index]
        rows = scratch.feasible(item.request, allowed_rows(scratch, item))
        if rows.size == 0:
            continue
        evaluation = policy.evaluate(scratch, state, item.request, rows)
        best = int(np.argmax(evaluation.scores))
        row, columns = int(evaluation.rows[best]), evaluation.columns[best]
        scratch.take(row, columns, item.request)
        policy.placed(state, row)
        assignments[index] = (row, tuple(int(column) for column in columns))
    return assignments


def plan_objective(fleet: Fleet, requests: Sequence[BatchRequest], assignments: dict) -> int:
    """Return the model's objective for ``assignments`` on the starting ``fleet``."""
    whole = fleet.gpu_free == 1000
    idle = (whole.sum(axis=1) == fleet.gpu_count) & (fleet.cpu_free == fleet.cpu_capacity)
    opened_gpus = {(row, column) for row, columns in assignments.values() for column in columns if whole[row, column]}
    opened_nodes = {row for row, _ in assignments.values() if idle[row]}
    total = 0
    for index, (row, _) in assignments.items():
        total += PLACED_WEIGHT * placed_value(requests[index]) - price_cents(fleet, row, requests[index])
    return total - OPENED_GPU_COST * len(opened_gpus) - OPENED_NODE_COST * len(opened_nodes)


def batch_place(
    fleet: Fleet, requests: Sequence[BatchRequest], policy: OnlinePolicy, *, time_limit_seconds: float = 2.0,
    candidates_per_request: int = 16, workers: int = 1, seed: int = 0,
) -> BatchPlan:
    """Return a plan for ``requests`` on ``fleet``'s free capacity; ``fleet`` itself is not changed.

    Raises ``ValueError`` for a non-positive priority or time limit.
    """
    if time_limit_seconds <= 0:
        raise ValueError(f"time_limit_seconds is {time_limit_seconds}; pass a positive number of seconds.")
    for index, item in enumerate(requests):
        if item.priority < 1:
            raise ValueError(f"Request {index} has priority {item.priority}; priorities are positive integers.")

    started = time.perf_counter()
    greedy = greedy_plan(fleet, requests, policy)
    greedy_objective = plan_objective(fleet, requests, greedy)
    logger.info("Batch placement of %d requests on %d nodes: greedy places %d", len(requests), fleet.size, len(greedy))

    model = cp_model.CpModel()
    state = policy.prepare(fleet)
    whole = fleet.gpu_free == 1000
    idle = (whole.sum(axis=1) == fleet.gpu_count) & (fleet.cpu_free == fleet.cpu_capacity)
    choose: dict[tuple[int, int], cp_model.IntVar] = {}
    gpu_use: dict[tuple[int, int, int], cp_model.IntVar] = {}
    objective_terms = []

    for index, item in enumerate(requests):
        rows = fleet.feasible(item.request, allowed_rows(fleet, item))
        if rows.size == 0:
            continue
        scores = policy.evaluate(fleet, state, item.request, rows).scores
        candidates = set(rows[np.argsort(-scores, kind="stable")[:candidates_per_request]].tolist())
        if index in greedy:
            candidates.add(greedy[index][0])
        for row in sorted(candidates):
            chosen = model.new_bool_var(f"x_{index}_{row}")
            choose[index, row] = chosen
            objective_terms.append((PLACED_WEIGHT * placed_value(item) - price_cents(fleet, row, item)) * chosen)
            if item.request.gpu_count:
                columns = np.flatnonzero(fleet.gpu_free[row] >= item.request.gpu_milli_per_gpu)
                uses = []
                for column in columns:
                    used = model.new_bool_var(f"y_{index}_{row}_{column}")
                    gpu_use[index, row, int(column)] = used
                    uses.append(used)
                model.add(sum(uses) == item.request.gpu_count * chosen)
        model.add_at_most_one(choose[index, row] for row in candidates)

    _add_capacity(model, fleet, requests, choose, gpu_use)
    opened_gpu, opened_node = _packing_variables(model, whole, idle, choose, gpu_use)
    objective_terms += [-OPENED_GPU_COST * opened for opened in opened_gpu.values()]
    objective_terms += [-OPENED_NODE_COST * opened for opened in opened_node.values()]
    model.maximize(sum(objective_terms))
    _hint_greedy(model, greedy, choose, gpu_use, opened_gpu, opened_node)

    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_seconds
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = seed
    # Symmetry detection took most of a 2 s limit on 12,000-variable windows before the hint was
    # even loaded. Without it the hint is the first solution, within about a second.
    solver.parameters.symmetry_level = 0
    status = solver.solve(model)
    status_name = solver.status_name(status)
    variables = len(choose) + len(gpu_use)

    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        assignments = {}
        for (index, row), chosen in choose.items():
            if solver.value(chosen):
                columns = tuple(sorted(column for (i, r, column), used in gpu_use.items()
                                       if i == index and r == row and solver.value(used)))
                assignments[index] = (row, columns)
        objective = plan_objective(fleet, requests, assignments)
        if objective >= greedy_objective:
            paid, cheapest = plan_prices(fleet, requests, assignments)
            plan = BatchPlan(assignments=assignments, status=status_name.lower(), solver_status=status_name,
                             objective=objective, greedy_objective=greedy_objective,
                             wall_seconds=time.perf_counter() - started, variables=variables,
                             price_cents=paid, cheapest_cents=cheapest)
            logger.info("CP-SAT %s: places %d of %d requests (greedy %d), objective %d (greedy %d), %.2f s",
                        status_name, len(assignments), len(requests), len(greedy), objective, greedy_objective,
                        plan.wall_seconds)
            return plan
        reason = f"CP-SAT's {status_name.lower()} plan scores {objective}, below the greedy plan's {greedy_objective}"
    else:
        reason = f"CP-SAT ended {status_name} within {time_limit_seconds} s"

    logger.warning("Batch placement falls back to the greedy plan: %s", reason)
    paid, cheapest = plan_prices(fleet, requests, greedy)
    return BatchPlan(assignments=greedy, status="greedy", solver_status=status_name, objective=greedy_objective,
                     greedy_objective=greedy_objective, wall_seconds=time.perf_counter() - started,
                     variables=variables, notes=[reason], price_cents=paid, cheapest_cents=cheapest)


def _add_capacity(model, fleet: Fleet, requests, choose: dict, gpu_use: dict) -> None:
    """Keep every node's CPU and memory, and every GPU's milli, within what is free."""
    by_row: dict[int, list] = {}
    for (index, row), chosen in choose.items():
        by_row.setdefault(row, []).append((requests[index].request, chosen))
    for row, entries in by_row.items():
        model.add(sum(request.cpu_millicores * chosen for request, chosen in entries) <= int(fleet.cpu_free[row]))
        model.add(sum(request.memory_mib * chosen for request, chosen in entries) <= int(fleet.memory_free[row]))

    by_gpu: dict[tuple[int, int], list] = {}
    for (index, row, column), used in gpu_use.items():
        by_gpu.setdefault((row, column), []).append(requests[index].request.gpu_milli_per_gpu * used)
    for (row, column), terms in by_gpu.items():
        model.add(sum(terms) <= int(fleet.gpu_free[row, column]))


def _packing_variables(model, whole: np.ndarray, idle: np.ndarray, choose: dict, gpu_use: dict) -> tuple[dict, dict]:
    """Return booleans for each whole GPU that gets a share and each idle node that gets work, keyed by position."""
    opened_gpu: dict[tuple[int, int], cp_model.IntVar] = {}
    for (index, row, column), used in gpu_use.items():
        if whole[row, column]:
            if (row, column) not in opened_gpu:
                opened_gpu[row, column] = model.new_bool_var(f"open_gpu_{row}_{column}")
            model.add_implication(used, opened_gpu[row, column])
    opened_node: dict[int, cp_model.IntVar] = {}
    for (index, row), chosen in choose.items():
        if idle[row]:
            if row not in opened_node:
                opened_node[row] = model.new_bool_var(f"open_node_{row}")
            model.add_implication(chosen, opened_node[row])
    return opened_gpu, opened_node


def _hint_greedy(model, greedy: dict, choose: dict, gpu_use: dict, opened_gpu: dict, opened_node: dict) -> None:
    """Give CP-SAT the greedy plan as a complete hint, so its first solution is at least as good."""
    for (index, row), chosen in choose.items():
        model.add_hint(chosen, int(index in greedy and greedy[index][0] == row))
    used_gpus = {(row, column) for row, columns in greedy.values() for column in columns}
    for (index, row, column), used in gpu_use.items():
        placed = greedy.get(index)
        model.add_hint(used, int(placed is not None and placed[0] == row and column in placed[1]))
    for position, opened in opened_gpu.items():
        model.add_hint(opened, int(position in used_gpus))
    used_rows = {row for row, _ in greedy.values()}
    for row, opened in opened_node.items():
        model.add_hint(opened, int(row in used_rows))
