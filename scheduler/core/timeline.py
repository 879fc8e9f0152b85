"""Free capacity of every node now and at each later instant where a booking starts or ends.

Times are seconds relative to the cycle's "now" (0). Each node has a few rows: row ``i`` is the
free capacity over ``[time_i, time_{i+1})``, the last row runs to infinity. Row 0 of every node
is "now". A booking is subtracted from every row its window overlaps, so a row's free capacity
is exact while it covers one step of the bookings, and never too high when rows were merged.

Units as in ``allocation.solvers.fleet``: CPU in millicores, memory in MiB, GPU in milli.
"""

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from allocation.solvers.base import PlacementRequest
from allocation.solvers.fleet import Fleet

INFINITY = math.inf


@dataclass(frozen=True)
class Booking:
    """Capacity held on one node over ``[start, end)`` seconds from now: a running or future allocation."""

    key: int
    row: int
    columns: tuple[int, ...]
    gpu_milli_per_gpu: int
    cpu_millicores: int
    memory_mib: int
    start: float
    end: float

    @property
    def request(self) -> PlacementRequest:
        return PlacementRequest(gpu_count=len(self.columns), gpu_milli_per_gpu=self.gpu_milli_per_gpu,
                                cpu_millicores=self.cpu_millicores, memory_mib=self.memory_mib)


class Timeline:
    """Rows of free capacity per node; ``fleet`` mirrors row 0 of each node for the online policies.

    ``capacity`` is the idle fleet (every booking removed), kept to tell whether a request could
    ever fit. ``regions`` gives each node's region id, for requests limited to one region.
    """

    def __init__(self, capacity: Fleet, bookings: Sequence[Booking], *, max_rows_per_node: int = 16,
                 regions: np.ndarray | None = None):
        if max_rows_per_node < 1:
            raise ValueError(f"max_rows_per_node is {max_rows_per_node}; use 1 or more.")
        if regions is not None and len(regions) != capacity.size:
            raise ValueError(f"regions has {len(regions)} entries for {capacity.size} nodes; pass one per node.")
        self.capacity = capacity
        self.regions = regions
        size = capacity.size
        instants: list[set[float]] = [{0.0} for _ in range(size)]
        for booking in bookings:
            for moment in (booking.start, booking.end):
                if 0.0 < moment < INFINITY:
                    instants[booking.row].add(float(moment))

        counts = np.empty(size, dtype=np.int64)
        times: list[float] = []
        for row, moments in enumerate(instants):
            kept = sorted(moments)[:max_rows_per_node]
            counts[row] = len(kept)
            times.extend(kept)
        self.first = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        self.counts = counts
        self.node = np.repeat(np.arange(size), counts)
        self.time = np.asarray(times, dtype=float)
        self.end = np.append(self.time[1:], INFINITY)
        last_rows = self.first + counts - 1
        self.end[last_rows] = INFINITY

        self.gpu_free = capacity.gpu_free[self.node].copy()
        self.cpu_free = capacity.cpu_free[self.node].copy()
        self.memory_free = capacity.memory_free[self.node].copy()
        for booking in bookings:
            self._subtract(booking.row, booking.columns, booking.request, booking.start, booking.end)

        self.fleet = capacity.copy()
        self._sync_now(np.arange(size))

    @property
    def rows(self) -> int:
        return len(self.time)

    def node_rows(self, row: int) -> slice:
        return slice(int(self.first[row]), int(self.first[row] + self.counts[row]))

    def window(self, row: int, start: float, end: float) -> np.ndarray:
        """Return the timeline rows of node ``row`` that overlap ``[start, end)``."""
        span = self.node_rows(row)
        overlap = (self.time[span] < end) & (self.end[span] > start)
        return np.flatnonzero(overlap) + span.start

    def fit_in_window(self, row: int, request: PlacementRequest, start: float, end: float) -> tuple[int, ...] | None:
        """Return the GPU columns that hold ``request`` on node ``row`` over the whole window, or None.

        The tightest GPUs are chosen (least free milli over the window), lower column on ties.
        """
        rows = self.window(row, start, end)
        if rows.size == 0:
            return None
        if self.cpu_free[rows].min() < request.cpu_millicores or self.memory_free[rows].min() < request.memory_mib:
            return None
        if request.gpu_count == 0:
            return ()
        lowest = self.gpu_free[rows].min(axis=0)
        fitting = np.flatnonzero(lowest >= request.gpu_milli_per_gpu)
        if fitting.size < request.gpu_count:
            return None
        order = np.argsort(lowest[fitting], kind="stable")[: request.gpu_count]
        return tuple(int(column) for column in fitting[order])

    def take(self, row: int, columns: Sequence[int], request: PlacementRequest, start: float, end: float) -> None:
        """Hold ``request`` on node ``row`` over ``[start, end)``; the caller checked that it fits.

        The hold is subtracted from every whole row it overlaps, so a row that runs past ``end``
        looks busy after it too. That errs on the safe side. ``hold`` splits the rows first.
        """
        self._subtract(row, columns, request, start, end)
        self._sync_now(np.array([row]))

    def hold(self, row: int, columns: Sequence[int], request: PlacementRequest, start: float, end: float) -> None:
        """Hold ``request`` on node ``row`` over exactly ``[start, end)``, splitting the rows at both instants.

        A held window ahead of a blocked request then leaves the time after it free for the next
        estimate on that node. Each split copies the timeline's arrays, so the cycle uses it only
        for its few held windows.
        """
        for moment in (start, end):
            self._split(row, moment)
        self.take(row, columns, request, start, end)

    def _split(self, row: int, moment: float) -> None:
        """Start a new row of node ``row`` at ``moment``, with the free capacity of the row that contains it."""
        if not 0.0 < moment < INFINITY:
            return
        span = self.node_rows(row)
        times = self.time[span]
        offset = int(np.searchsorted(times, moment))
        if offset < times.size and times[offset] == moment:
            return
        position = span.start + offset
        containing = position - 1
        self.end = np.insert(self.end, position, self.end[containing])
        self.end[containing] = moment
        self.time = np.insert(self.time, position, moment)
        self.node = np.insert(self.node, position, row)
        self.gpu_free = np.insert(self.gpu_free, position, self.gpu_free[containing], axis=0)
        self.cpu_free = np.insert(self.cpu_free, position, self.cpu_free[containing])
        self.memory_free = np.insert(self.memory_free, position, self.memory_free[containing])
        self.counts[row] += 1
        self.first[row + 1:] += 1

    def give_back(self, row: int, columns: Sequence[int], request: PlacementRequest, start: float, end: float) -> None:
        """Return a booking's capacity to node ``row`` over ``[start, end)``, as when it is preempted."""
        rows = self.window(row, start, end)
        self._apply(rows, columns, request, sign=+1)
        self._sync_now(np.array([row]))

    def row_fits(self, request: PlacementRequest, allowed_nodes: np.ndarray) -> np.ndarray:
        """Return the timeline rows where ``request`` fits for that row's own step, on allowed nodes."""
        fits = allowed_nodes[self.node] & (self.cpu_free >= request.cpu_millicores) & (
            self.memory_free >= request.memory_mib)
        if request.gpu_count > 0:
            fits &= (self.gpu_free >= request.gpu_milli_per_gpu).sum(axis=1) >= request.gpu_count
        return np.flatnonzero(fits)

    def earliest_start(self, request: PlacementRequest, allowed_nodes: np.ndarray, duration: float, *,
                       not_before: float = 0.0, max_checks: int = 64) -> tuple[float, int, tuple[int, ...]] | None:
        """Return ``(start, node row, columns)`` of the earliest window where ``request`` fits, or None.

        Candidate starts are the steps where the request fits for the step itself, soonest first;
        each is checked over the whole window, up to ``max_checks`` of them.
        """
        candidates = self.row_fits(request, allowed_nodes)
        candidates = candidates[self.end[candidates] > not_before]
        if candidates.size == 0:
            return None
        starts = np.maximum(self.time[candidates], not_before)
        order = np.lexsort((self.capacity.price[self.node[candidates]], starts))[:max_checks]
        for position in order:
            start = float(starts[position])
            row = int(self.node[candidates[position]])
            columns = self.fit_in_window(row, request, start, start + duration)
            if columns is not None:
                return start, row, columns
        return None

    def could_ever_fit(self, request: PlacementRequest, allowed_nodes: np.ndarray) -> bool:
        """Return whether some allowed node could fit ``request`` when idle."""
        return self.capacity.feasible(request, allowed_nodes).size > 0

    def _subtract(self, row: int, columns: Sequence[int], request: PlacementRequest, start: float, end: float) -> None:
        self._apply(self.window(row, start, end), columns, request, sign=-1)

    def _apply(self, rows: np.ndarray, columns: Sequence[int], request: PlacementRequest, *, sign: int) -> None:
        if rows.size == 0:
            return
        self.cpu_free[rows] += sign * request.cpu_millicores
        self.memory_free[rows] += sign * request.memory_mib
        if len(columns):
            self.gpu_free[np.ix_(rows, np.asarray(columns, dtype=np.int64))] += sign * request.gpu_milli_per_gpu

    def _sync_now(self, nodes: np.ndarray) -> None:
        now_rows = self.first[nodes]
        self.fleet.gpu_free[nodes] = self.gpu_free[now_rows]
        self.fleet.cpu_free[nodes] = self.cpu_free[now_rows]
        self.fleet.memory_free[nodes] = self.memory_free[now_rows]
