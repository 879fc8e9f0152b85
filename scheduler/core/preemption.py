"""Choose the running work to preempt so that one higher-priority request fits, at the least cost.

Rules, in the order the search applies them:

- only victims of a strictly lower priority, whose class lets them be preempted, that run on an
  allowed node, have run their minimum guaranteed time and would not end within their grace
  period anyway;
- on each node, victims are added cheapest first (lowest priority, borrowed over-quota usage
  before usage within quota, then least lost work, then fewest GPU milli) until the request
  fits over its whole window; victims that turn out unnecessary are dropped again;
- across nodes, the set with the lowest cost wins: the highest victim priority, then the victims
  within quota, then the GPU milli and the work lost.

A request that no allowed node could hold even when idle preempts nothing. Since a victim always
has a lower priority than its beneficiary, a chain of preemptions cannot loop back.
"""

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from allocation.solvers.base import PlacementRequest

from .timeline import Booking, Timeline


@dataclass(frozen=True)
class Running:
    """Work that uses capacity now, with what the preemption search needs to know about it."""

    booking: Booking
    organization: int
    priority: int
    preemptible: bool
    """Whether its priority class and guarantee allow preempting it at all."""
    borrowed_milli: int = 0
    protected_for: float = 0.0
    """Seconds from now until its minimum guaranteed runtime is over; 0 or less when it is over."""
    elapsed: float = 0.0
    """Seconds it has run, the work lost when it is stopped."""
    grace: float = 0.0
    """Seconds it gets to stop once preempted; work that ends sooner is never chosen."""

    @property
    def lost_work(self) -> float:
        """GPU milli-seconds run so far (CPU-only work counts as 100 milli)."""
        milli = self.booking.gpu_milli_per_gpu * len(self.booking.columns) or 100
        return milli * max(self.elapsed, 0.0)

    @property
    def cost(self) -> tuple:
        return (self.priority, 0 if self.borrowed_milli else 1, self.lost_work, len(self.booking.columns)
                * self.booking.gpu_milli_per_gpu, self.booking.key)


@dataclass(frozen=True)
class PreemptionPlan:
    """The victims that free one node for the beneficiary, and why they were chosen."""

    beneficiary: int
    row: int
    columns: tuple[int, ...]
    victims: tuple[int, ...]
    cost: tuple
    explanation: str


def eligible_victims(running: Sequence[Running], priority: int, already_chosen: set[int]) -> dict[int, list[Running]]:
    """Return, per node row, the work that a request of ``priority`` may preempt, cheapest first."""
    by_row: dict[int, list[Running]] = {}
    for work in running:
        if (work.preemptible and work.priority < priority and work.protected_for <= 0
                and work.booking.key not in already_chosen and work.booking.start <= 0 and work.booking.end > work.grace):
            by_row.setdefault(work.booking.row, []).append(work)
    for victims in by_row.values():
        victims.sort(key=lambda work: work.cost)
    return by_row


def find_preemption(timeline: Timeline, key: int, request: PlacementRequest, allowed_nodes: np.ndarray,
                    duration: float, priority: int, victims_by_row: dict[int, list[Running]]) -> PreemptionPlan | None:
    """Return the cheapest set of victims on one node that lets ``request`` run for ``duration`` now, or None."""
    if not timeline.could_ever_fit(request, allowed_nodes):
        return None
    best: PreemptionPlan | None = None
    for row, candidates in victims_by_row.items():
        if not allowed_nodes[row] or not _could_free_enough(timeline, row, request, candidates):
            continue
        chosen = _victims_on_node(timeline, row, request, duration, candidates)
        if chosen is None:
            continue
        victims, columns = chosen
        cost = (max(work.priority for work in victims), sum(1 for work in victims if not work.borrowed_milli),
                sum(len(work.booking.columns) * work.booking.gpu_milli_per_gpu for work in victims),
                sum(work.lost_work for work in victims), len(victims), row)
        if best is None or cost < best.cost:
            best = PreemptionPlan(beneficiary=key, row=row, columns=columns,
                                  victims=tuple(work.booking.key for work in victims), cost=cost,
                                  explanation=_explain(victims, priority))
    return best


def _could_free_enough(timeline: Timeline, row: int, request: PlacementRequest, candidates: list[Running]) -> bool:
    """Return whether the node's free capacity plus every candidate's could be enough (a quick upper bound)."""
    now = timeline.first[row]
    cpu = timeline.cpu_free[now] + sum(work.booking.cpu_millicores for work in candidates)
    memory = timeline.memory_free[now] + sum(work.booking.memory_mib for work in candidates)
    milli = timeline.gpu_free[now].sum() + sum(len(work.booking.columns) * work.booking.gpu_milli_per_gpu
                                               for work in candidates)
    return cpu >= request.cpu_millicores and memory >= request.memory_mib and milli >= request.gpu_milli_total


def _victims_on_node(timeline: Timeline, row: int, request: PlacementRequest, duration: float,
                     candidates: list[Running]) -> tuple[list[Running], tuple[int, ...]] | None:
    rows = timeline.window(row, 0.0, duration)
    gpu = timeline.gpu_free[rows].copy()
    cpu = timeline.cpu_free[rows].copy()
    memory = timeline.memory_free[rows].copy()
    times = timeline.time[rows]

    def freed(work: Running, sign: int) -> None:
        hit = times < work.booking.end
        cpu[hit] += sign * work.booking.cpu_millicores
        memory[hit] += sign * work.booking.memory_mib
        if work.booking.columns:
            gpu[np.ix_(np.flatnonzero(hit), list(work.booking.columns))] += sign * work.booking.gpu_milli_per_gpu

    def fits() -> tuple[int, ...] | None:
        if cpu.min() < request.cpu_millicores or memory.min() < request.memory_mib:
            return None
        if request.gpu_count == 0:
            return ()
        lowest = gpu.min(axis=0)
        fitting = np.flatnonzero(lowest >= request.gpu_milli_per_gpu)
        if fitting.size < request.gpu_count:
            return None
        return tuple(int(column) for column in fitting[np.argsort(lowest[fitting], kind="stable")[: request.gpu_count]])

    chosen: list[Running] = []
    for work in candidates:
        freed(work, +1)
        chosen.append(work)
        if fits() is not None:
            break
    else:
        return None

    for work in reversed(chosen[:-1]):
        freed(work, -1)
        if fits() is None:
            freed(work, +1)
        else:
            chosen.remove(work)
    columns = fits()
    return (chosen, columns) if columns is not None else None


def _explain(victims: list[Running], priority: int) -> str:
    parts = []
    for work in victims:
        borrowed = ", borrowed over its quota" if work.borrowed_milli else ""
        parts.append(f"reservation {work.booking.key} (priority {work.priority}{borrowed}, "
                     f"{len(work.booking.columns)} GPU, running {work.elapsed / 3600:.1f} h)")
    return (f"Preempting {', '.join(parts)} frees one node for a request of priority {priority}: the cheapest "
            f"set on any allowed node, by lowest priority, borrowed usage first, then least work lost.")
