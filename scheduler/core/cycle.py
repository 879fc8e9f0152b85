"""One scheduling cycle: who runs now, who waits and until when, and whom to preempt.

Order. Requests go by priority, highest first. Within one priority, the organization with the
lowest dominant share goes next (dominant resource fairness: an organization's largest share of
the fleet's GPU, CPU or memory, over a decaying usage window, divided by its weight), and its
requests go in submission order. Each placement raises the organization's share at once, so one
cycle already shares fairly.

Backfill. A request that cannot start now gets the earliest window where it fits, and that
window is held in the timeline. A later request may start now only where it fits around every
held window, so it never delays a request ahead of it. In a strict first-in-first-out queue, a
blocked request blocks the rest of its queue instead.

Preemption. A blocked request whose class may preempt gets the cheapest victim set of
``preemption.find_preemption``; its victims cannot be chosen again in the same cycle.
"""

import heapq
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from allocation.solvers.base import PlacementRequest
from allocation.solvers.online import OnlinePolicy

from .preemption import PreemptionPlan, Running, eligible_victims, find_preemption
from .timeline import Timeline

CANDIDATE_NODES = 8
"""Best-scored nodes checked over the request's whole window before it counts as blocked now."""


@dataclass(frozen=True)
class Waiting:
    """A request in the queue. Times are seconds relative to the cycle's now."""

    key: int
    organization: int
    request: PlacementRequest
    duration: float
    priority: int = 0
    submitted: float = 0.0
    queue: str = "default"
    not_before: float = 0.0
    gpu_models: tuple[str, ...] = ()
    max_price: float | None = None
    can_preempt: bool = False


@dataclass(frozen=True)
class Placed:
    key: int
    row: int
    columns: tuple[int, ...]
    backfilled: bool
    """Whether a request ahead of it was still waiting when it was placed."""


@dataclass(frozen=True)
class WaitingDecision:
    key: int
    position: int
    reason_code: str
    reason: str
    estimated_start: float | None = None
    """Seconds from now of the held window, or None when none was computed or found."""


@dataclass
class CycleConfig:
    strict_fifo_queues: frozenset[str] = frozenset()
    reserve_depth: int = 100
    """Blocked requests that get an estimated start and a held window; the rest only wait."""
    max_preemptions: int = 10
    max_placements: int | None = None
    fair_share_weights: dict[int, float] = field(default_factory=dict)


@dataclass
class CycleResult:
    placed: list[Placed]
    waiting: list[WaitingDecision]
    preemptions: list[PreemptionPlan]
    seconds: float
    order: list[int]
    """Request keys in the order the cycle considered them."""


class FairShare:
    """Dominant shares of the organizations, updated as the cycle places their requests."""

    def __init__(self, usage: dict[int, Sequence[float]], capacity: Sequence[float], weights: dict[int, float]):
        self.capacity = np.maximum(np.asarray(capacity, dtype=float), 1.0)
        self.usage = {org: np.asarray(vector, dtype=float) for org, vector in usage.items()}
        self.weights = weights

    def share(self, organization: int) -> float:
        vector = self.usage.get(organization)
        if vector is None:
            return 0.0
        return float((vector / self.capacity).max()) / self.weights.get(organization, 1.0)

    def add(self, organization: int, request: PlacementRequest) -> None:
        vector = np.array([request.gpu_milli_total, request.cpu_millicores, request.memory_mib], dtype=float)
        self.usage[organization] = self.usage.get(organization, np.zeros(3)) + vector


def fair_order(waiting: Sequence[Waiting], fair_share: FairShare):
    """Yield the waiting requests in cycle order; the caller updates ``fair_share`` after each placement."""
    bands: dict[int, dict[int, deque]] = {}
    for item in sorted(waiting, key=lambda item: (item.submitted, item.key)):
        bands.setdefault(item.priority, {}).setdefault(item.organization, deque()).append(item)
    for priority in sorted(bands, reverse=True):
        queues = bands[priority]
        heap = [(fair_share.share(org), queue[0].submitted, org) for org, queue in queues.items()]
        heapq.heapify(heap)
        while heap:
            _, _, org = heapq.heappop(heap)
            queue = queues[org]
            yield queue.popleft()
            if queue:
                heapq.heappush(heap, (fair_share.share(org), queue[0].submitted, org))


def run_cycle(timeline: Timeline, waiting: Sequence[Waiting], running: Sequence[Running], policy: OnlinePolicy, *,
              usage: dict[int, Sequence[float]] | None = None, config: CycleConfig | None = None) -> CycleResult:
    """Decide one cycle on ``timeline``, which it updates with the placements and held windows."""
    started = time.perf_counter()
    config = config or CycleConfig()
    fleet = timeline.fleet
    capacity = (int((timeline.capacity.gpu_free).sum()), int(timeline.capacity.cpu_free.sum()),
                int(timeline.capacity.memory_free.sum()))
    fair_share = FairShare(usage or {}, capacity, config.fair_share_weights)
    state = policy.prepare(fleet)
    model_masks: dict[tuple[str, ...], np.ndarray] = {}
    blocked_shapes: list[tuple[PlacementRequest, np.ndarray, float]] = []
    blocked_queues: dict[str, int] = {}
    taken_victims: set[int] = set()
    placed: list[Placed] = []
    decisions: list[WaitingDecision] = []
    preemptions: list[PreemptionPlan] = []
    order: list[int] = []
    held = 0

    for item in fair_order(waiting, fair_share):
        order.append(item.key)
        position = len(decisions) + 1

        def wait(code: str, reason: str, estimated: float | None = None) -> None:
            decisions.append(WaitingDecision(item.key, position, code, reason, estimated))

        if item.not_before > 0:
            wait("not_before_start", "Its earliest start has not come yet.", item.not_before)
            continue
        if item.queue in blocked_queues:
            wait("behind_strict_head", f"Queue {item.queue} is first in, first out, and request "
                                       f"{blocked_queues[item.queue]} ahead of it cannot start yet.")
            continue
        if config.max_placements is not None and len(placed) >= config.max_placements:
            wait("cycle_limit", "This cycle placed its maximum number of requests; the next cycle goes on.")
            continue

        allowed = _allowed(timeline, item, model_masks)
        choice = None
        if not _dominated(item, allowed, blocked_shapes):
            choice = _choose_now(timeline, state, policy, item, allowed)
        if choice is not None:
            row, columns = choice
            timeline.take(row, columns, item.request, 0.0, item.duration)
            policy.placed(state, row)
            fair_share.add(item.organization, item.request)
            placed.append(Placed(item.key, row, columns, backfilled=bool(decisions)))
            continue

        blocked_shapes.append((item.request, allowed, item.duration))
        if item.queue in config.strict_fifo_queues:
            blocked_queues[item.queue] = item.key
        if not timeline.could_ever_fit(item.request, allowed):
            wait("never_fits", "No allowed node could hold this shape even when idle; it will not start "
                               "unless larger nodes join.")
            continue

        plan = None
        if item.can_preempt and len(preemptions) < config.max_preemptions:
            victims = eligible_victims(running, item.priority, taken_victims)
            plan = find_preemption(timeline, item.key, item.request, allowed, item.duration, item.priority, victims)
        if plan is not None:
            preemptions.append(plan)
            taken_victims.update(plan.victims)
            wait("preemption_proposed", plan.explanation)
            continue

        estimated = None
        if held < config.reserve_depth:
            slot = timeline.earliest_start(item.request, allowed, item.duration)
            if slot is not None and slot[0] <= 0:
                # A node beyond the policy's best few holds it now.
                _, row, columns = slot
                timeline.take(row, columns, item.request, 0.0, item.duration)
                policy.placed(state, row)
                fair_share.add(item.organization, item.request)
                placed.append(Placed(item.key, row, columns, backfilled=bool(decisions)))
                continue
            if slot is not None:
                start, row, columns = slot
                timeline.take(row, columns, item.request, start, start + item.duration)
                estimated = start
                held += 1
        if estimated is not None:
            wait("no_capacity", "No allowed node has this shape free now without delaying a request ahead of it; "
                                "a window is held for it when running work ends.", estimated)
        else:
            wait("no_capacity", "No allowed node has this shape free now, and no start time is known yet: "
                                "requests ahead of it hold the capacity that frees up.")

    return CycleResult(placed=placed, waiting=decisions, preemptions=preemptions,
                       seconds=time.perf_counter() - started, order=order)


def _allowed(timeline: Timeline, item: Waiting, masks: dict) -> np.ndarray:
    key = (item.gpu_models, item.max_price)
    mask = masks.get(key)
    if mask is None:
        fleet = timeline.capacity
        mask = fleet.model_mask(item.gpu_models or None)
        if item.max_price is not None:
            mask &= fleet.price <= item.max_price
        masks[key] = mask
    return mask


def _dominated(item: Waiting, allowed: np.ndarray, blocked: list[tuple[PlacementRequest, np.ndarray, float]]) -> bool:
    """Whether a request that is no smaller, on no more nodes and no shorter, already failed to fit now.

    Capacity only shrinks during a cycle, so such a request cannot fit either.
    """
    request = item.request
    for other, other_allowed, duration in blocked[-64:]:
        if (request.gpu_count >= other.gpu_count and request.gpu_milli_per_gpu >= other.gpu_milli_per_gpu
                and request.cpu_millicores >= other.cpu_millicores and request.memory_mib >= other.memory_mib
                and item.duration >= duration and (request.gpu_count > 0 or other.gpu_count == 0)
                and not (allowed & ~other_allowed).any()):
            return True
    return False


def _choose_now(timeline: Timeline, state, policy: OnlinePolicy, item: Waiting,
                allowed: np.ndarray) -> tuple[int, tuple[int, ...]] | None:
    """Return the policy's best node whose capacity holds the request over its whole window, or None."""
    fleet = timeline.fleet
    rows = fleet.feasible(item.request, allowed)
    if rows.size == 0:
        return None
    evaluation = policy.evaluate(fleet, state, item.request, rows)
    ranked = np.lexsort((fleet.node_ids[evaluation.rows], fleet.price[evaluation.rows], -evaluation.scores))
    for position in ranked[:CANDIDATE_NODES]:
        row = int(evaluation.rows[position])
        preferred = tuple(int(column) for column in evaluation.columns[position])
        if timeline.counts[row] == 1:
            return row, preferred
        window_rows = timeline.window(row, 0.0, item.duration)
        request = item.request
        if (timeline.cpu_free[window_rows].min() >= request.cpu_millicores
                and timeline.memory_free[window_rows].min() >= request.memory_mib
                and (not preferred or timeline.gpu_free[np.ix_(window_rows, list(preferred))].min()
                     >= request.gpu_milli_per_gpu)):
            return row, preferred
        columns = timeline.fit_in_window(row, request, 0.0, item.duration)
        if columns is not None:
            return row, columns
    return None


def priority_inversions(placed: Sequence[Placed], waiting: Sequence[WaitingDecision], requests: Sequence[Waiting],
                        timeline: Timeline) -> int:
    """Count waiting requests that a lower-priority request placed in the same cycle could have made room for.

    A waiting request counts when it was ready (not held back by its start time or a strict
    queue), and some placed request of lower priority took at least what it needs, for at least
    as long, on a node it allows.
    """
    by_key = {item.key: item for item in requests}
    lower = [(by_key[item.key], item.row) for item in placed]
    if not lower:
        return 0
    shapes = np.array([[p.request.gpu_count, p.request.gpu_milli_per_gpu, p.request.cpu_millicores,
                        p.request.memory_mib, p.duration, p.priority] for p, _ in lower], dtype=float)
    rows = np.array([row for _, row in lower])
    inversions = 0
    for decision in waiting:
        if decision.reason_code in ("not_before_start", "behind_strict_head", "cycle_limit", "never_fits"):
            continue
        item = by_key[decision.key]
        request = item.request
        allowed = timeline.capacity.model_mask(item.gpu_models or None)
        if item.max_price is not None:
            allowed &= timeline.capacity.price <= item.max_price
        room = ((shapes[:, 5] < item.priority) & allowed[rows] & (shapes[:, 0] >= request.gpu_count)
                & ((shapes[:, 1] >= request.gpu_milli_per_gpu) | (request.gpu_count == 0))
                & (shapes[:, 2] >= request.cpu_millicores) & (shapes[:, 3] >= request.memory_mib)
                & (shapes[:, 4] >= item.duration))
        inversions += bool(room.any())
    return inversions
