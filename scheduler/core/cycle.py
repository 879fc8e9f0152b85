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

Batch optimization. When one priority has at most ``batch_max_requests`` requests ready and the
greedy plan cannot place them all, CP-SAT
(``allocation.solvers.batch``) places them together on what is free for their longest window,
with the greedy plan as its hint. Its plan is used only when it places strictly more GPU milli
than the greedy plan; then the requests it chose take the nodes it chose, and the ones it left
out are considered after them, still before any lower priority. Otherwise the cycle places that
priority's requests one by one in order.

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
from allocation.solvers.batch import BatchRequest, batch_place, greedy_plan
from allocation.solvers.fleet import Fleet
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
    region: int | None = None
    """The only region allowed (see ``Timeline.regions``); None allows every region."""


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
    batch_solver: bool = False
    """Whether CP-SAT places each priority's ready requests together (see the module docstring)."""
    batch_max_requests: int = 100
    batch_time_limit_seconds: float = 1.0


@dataclass
class CycleResult:
    placed: list[Placed]
    waiting: list[WaitingDecision]
    preemptions: list[PreemptionPlan]
    seconds: float
    order: list[int]
    """Request keys in the order the cycle considered them."""
    batch_runs: list[dict] = field(default_factory=list)
    """One entry per CP-SAT run: priority, requests, status, placed milli of CP-SAT and of the greedy plan, seconds."""


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
    cycle = _Cycle(timeline, running, policy, config or CycleConfig())
    capacity = (int(timeline.capacity.gpu_free.sum()), int(timeline.capacity.cpu_free.sum()),
                int(timeline.capacity.memory_free.sum()))
    fair_share = FairShare(usage or {}, capacity, cycle.config.fair_share_weights)
    cycle.fair_share = fair_share
    band, deferred = None, []

    for item in fair_order(waiting, fair_share):
        if cycle.config.batch_solver and item.priority != band:
            for later in deferred:
                cycle.consider(later)
            deferred = []
            band = item.priority
            cycle.batch_band(waiting, band)
        if item.key in cycle.batch_left_out:
            # Considered after the requests that CP-SAT chose, so it still gets what they leave.
            deferred.append(item)
            continue
        cycle.consider(item)
    for later in deferred:
        cycle.consider(later)

    return CycleResult(placed=cycle.placed, waiting=cycle.decisions, preemptions=cycle.preemptions,
                       seconds=time.perf_counter() - started, order=cycle.order, batch_runs=cycle.batch_runs)


class _Cycle:
    """State of one cycle while it considers the waiting requests one by one."""

    def __init__(self, timeline: Timeline, running: Sequence[Running], policy: OnlinePolicy, config: CycleConfig):
        self.timeline, self.running, self.policy, self.config = timeline, running, policy, config
        self.state = policy.prepare(timeline.fleet)
        self.fair_share: FairShare | None = None
        self.model_masks: dict[tuple, np.ndarray] = {}
        self.blocked_shapes: list[tuple[PlacementRequest, np.ndarray, float]] = []
        self.blocked_queues: dict[str, int] = {}
        self.taken_victims: set[int] = set()
        self.placed: list[Placed] = []
        self.decisions: list[WaitingDecision] = []
        self.preemptions: list[PreemptionPlan] = []
        self.order: list[int] = []
        self.held_windows = 0
        self.batch_choice: dict[int, tuple[int, tuple[int, ...]]] = {}
        self.batch_left_out: set[int] = set()
        self.batch_runs: list[dict] = []

    def batch_band(self, waiting: Sequence[Waiting], priority: int) -> None:
        self.batch_choice, left_out = _batch_band(self.timeline, waiting, priority, self.policy, self.config,
                                                  self.batch_runs)
        self.batch_left_out = left_out

    def consider(self, item: Waiting) -> None:
        """Place ``item`` now, or record why it waits (with a held window or a preemption when possible)."""
        self.order.append(item.key)
        timeline, config = self.timeline, self.config
        if item.not_before > 0:
            return self.wait_for_start(item)
        if item.queue in self.blocked_queues:
            return self.wait(item, "behind_strict_head", f"Queue {item.queue} is first in, first out, and request "
                                                         f"{self.blocked_queues[item.queue]} ahead of it cannot start yet.")
        if config.max_placements is not None and len(self.placed) >= config.max_placements:
            return self.wait(item, "cycle_limit", "This cycle placed its maximum number of requests; the next "
                                                  "cycle goes on.")

        allowed = allowed_nodes(timeline, item, self.model_masks)
        choice = None
        if item.key in self.batch_choice:
            choice = _batch_choice(timeline, item, *self.batch_choice[item.key])
        if choice is None and not _dominated(item, allowed, self.blocked_shapes):
            choice = _choose_now(timeline, self.state, self.policy, item, allowed)
        if choice is not None:
            return self.place(item, *choice)

        self.blocked_shapes.append((item.request, allowed, item.duration))
        if item.queue in config.strict_fifo_queues:
            self.blocked_queues[item.queue] = item.key
        if not timeline.could_ever_fit(item.request, allowed):
            return self.wait(item, "never_fits", "No allowed node could hold this shape even when idle; it will "
                                                 "not start unless larger nodes join.")

        if item.can_preempt and len(self.preemptions) < config.max_preemptions:
            victims = eligible_victims(self.running, item.priority, self.taken_victims)
            plan = find_preemption(timeline, item.key, item.request, allowed, item.duration, item.priority, victims)
            if plan is not None:
                self.preemptions.append(plan)
                self.taken_victims.update(plan.victims)
                # The plan's explanation names other organizations' work; the customer's reason does not.
                return self.wait(item, "preemption_proposed", "Lower-priority work on one node is being "
                                                              "preempted so that this request can start there.")

        if self.held_windows >= config.reserve_depth:
            return self.wait(item, "no_capacity", "No allowed node has this shape free now, and no start time is "
                                                  "known yet: requests ahead of it hold the capacity that frees up.")
        slot = timeline.earliest_start(item.request, allowed, item.duration)
        if slot is None:
            return self.wait(item, "no_capacity", "No allowed node has this shape free now, and no start time is "
                                                  "known yet: requests ahead of it hold the capacity that frees up.")
        start, row, columns = slot
        if start <= 0:
            # A node beyond the policy's best few can take it now.
            return self.place(item, row, columns)
        timeline.hold(row, columns, item.request, start, start + item.duration)
        self.held_windows += 1
        return self.wait(item, "no_capacity", "No allowed node has this shape free for its whole run time now; a "
                                              "window is held for it from the estimated start.", start)

    def wait_for_start(self, item: Waiting) -> None:
        """Record why ``item``, whose earliest start is still ahead, waits, and when it could start.

        The estimate is the first start at or after its earliest start where an allowed node has
        the shape free for the whole run time, from the bookings known now. That window is held,
        within the cycle's ``reserve_depth``, so requests behind it get later estimates.
        """
        allowed = allowed_nodes(self.timeline, item, self.model_masks)
        slot = self.timeline.earliest_start(item.request, allowed, item.duration, not_before=item.not_before)
        if slot is not None and self.held_windows < self.config.reserve_depth:
            start, row, columns = slot
            self.timeline.hold(row, columns, item.request, start, start + item.duration)
            self.held_windows += 1
        if slot is not None and slot[0] <= item.not_before:
            return self.wait(item, "not_before_start", "Its earliest start has not come yet.", item.not_before)
        if not self.timeline.could_ever_fit(item.request, allowed):
            return self.wait(item, "never_fits", "No allowed node could hold this shape even when idle; it will "
                                                 "not start unless larger nodes join.")
        if slot is None:
            return self.wait(item, "no_capacity", "Its earliest start has not come yet, and no allowed node has "
                                                  "this shape free then; no start time is known yet.")
        return self.wait(item, "no_capacity", "Its earliest start has not come yet, and no allowed node has this "
                                              "shape free then; the estimate is the first start where one has.",
                         slot[0])

    def place(self, item: Waiting, row: int, columns: tuple[int, ...]) -> None:
        # Splitting rows keeps later estimates on this node exact, but costs a copy of the timeline's
        # arrays, so it stops once the cycle estimates no more starts.
        estimating = self.held_windows < self.config.reserve_depth
        (self.timeline.hold if estimating else self.timeline.take)(row, columns, item.request, 0.0, item.duration)
        self.policy.placed(self.state, row)
        self.fair_share.add(item.organization, item.request)
        self.placed.append(Placed(item.key, row, tuple(columns), backfilled=bool(self.decisions)))

    def wait(self, item: Waiting, code: str, reason: str, estimated: float | None = None) -> None:
        self.decisions.append(WaitingDecision(item.key, len(self.decisions) + 1, code, reason, estimated))


def _batch_band(timeline: Timeline, waiting: Sequence[Waiting], priority: int, policy: OnlinePolicy,
                config: CycleConfig, runs: list[dict]) -> tuple[dict, set]:
    """Return CP-SAT's choices for the ready requests of ``priority`` and those it leaves out, when it beats greedy."""
    items = [item for item in waiting if item.priority == priority and item.not_before <= 0
             and item.queue not in config.strict_fifo_queues]
    if not 2 <= len(items) <= config.batch_max_requests:
        return {}, set()
    fleet = _window_fleet(timeline, max(item.duration for item in items))
    requests = [BatchRequest(request=item.request, priority=1, gpu_models=item.gpu_models,
                             max_price_per_gpu_hour=item.max_price) for item in items]
    if any(item.region is not None for item in items):
        return {}, set()  # NOTE: the batch model has no regions, so a priority with a regional request is placed in order
    greedy = greedy_plan(fleet, requests, policy)
    if len(greedy) == len(requests):
        return {}, set()  # the order places them all; CP-SAT cannot place more
    greedy_milli = sum(requests[index].request.gpu_milli_total for index in greedy)
    plan = batch_place(fleet, requests, policy, time_limit_seconds=config.batch_time_limit_seconds)
    runs.append({"priority": priority, "requests": len(items), "status": plan.status,
                 "placed_milli": plan.placed_milli(requests), "greedy_milli": greedy_milli,
                 "objective": plan.objective, "seconds": round(plan.wall_seconds, 3), "variables": plan.variables})
    if plan.status == "greedy" or plan.placed_milli(requests) <= greedy_milli:
        return {}, set()
    choices = {items[index].key: (row, columns) for index, (row, columns) in plan.assignments.items()}
    return choices, {item.key for item in items} - set(choices)


def _window_fleet(timeline: Timeline, horizon: float) -> Fleet:
    """Return the fleet with each node's capacity free over ``[0, horizon)``: the minimum over its rows."""
    fleet = timeline.fleet.copy()
    overlaps = timeline.time < horizon
    rows = np.flatnonzero(overlaps)
    nodes = timeline.node[rows]
    np.minimum.at(fleet.gpu_free, nodes, timeline.gpu_free[rows])
    np.minimum.at(fleet.cpu_free, nodes, timeline.cpu_free[rows])
    np.minimum.at(fleet.memory_free, nodes, timeline.memory_free[rows])
    return fleet


def _batch_choice(timeline: Timeline, item: Waiting, row: int, columns: tuple[int, ...]) -> tuple[int, tuple] | None:
    """Return CP-SAT's choice if that node still fits ``item`` over its window, else None."""
    rows = timeline.window(row, 0.0, item.duration)
    request = item.request
    if timeline.cpu_free[rows].min() < request.cpu_millicores or timeline.memory_free[rows].min() < request.memory_mib:
        return None
    if columns and timeline.gpu_free[np.ix_(rows, list(columns))].min() < request.gpu_milli_per_gpu:
        return None
    return row, tuple(columns)


def allowed_nodes(timeline: Timeline, item: Waiting, masks: dict | None = None) -> np.ndarray:
    """Return (n,) True for the nodes whose GPU model, price and region ``item`` accepts."""
    key = (item.gpu_models, item.max_price, item.region)
    mask = masks.get(key) if masks is not None else None
    if mask is None:
        fleet = timeline.capacity
        mask = fleet.model_mask(item.gpu_models or None)
        if item.max_price is not None:
            mask &= fleet.price <= item.max_price
        if item.region is not None:
            if timeline.regions is None:
                raise ValueError(f"Request {item.key} names region {item.region}, but the timeline has no regions; "
                                 "pass regions= to Timeline.")
            mask &= timeline.regions == item.region
        if masks is not None:
            masks[key] = mask
    return mask


def _dominated(item: Waiting, allowed: np.ndarray, blocked: list[tuple[PlacementRequest, np.ndarray, float]]) -> bool:
    """Return whether a request that is no smaller, on no more nodes and no shorter, already failed to fit now.

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
    """Return the policy's best node where the request fits over its whole window, or None."""
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
        item = by_key[decision.key]
        if item.not_before > 0 or decision.reason_code in ("behind_strict_head", "cycle_limit", "never_fits"):
            continue
        request = item.request
        allowed = allowed_nodes(timeline, item)
        room = ((shapes[:, 5] < item.priority) & allowed[rows] & (shapes[:, 0] >= request.gpu_count)
                & ((shapes[:, 1] >= request.gpu_milli_per_gpu) | (request.gpu_count == 0))
                & (shapes[:, 2] >= request.cpu_millicores) & (shapes[:, 3] >= request.memory_mib)
                & (shapes[:, 4] >= item.duration))
        inversions += bool(room.any())
    return inversions
