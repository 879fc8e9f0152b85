"""The capacity ledger's bookings and fleet as NumPy columns, so one window's usage takes a few array operations.

Plain Python and NumPy with no Django imports. ``ledger.CapacityLedger`` keeps a ``BookingRows``
beside its dicts of bookings and rebuilds a ``FleetArrays`` whenever a node changes.
``WindowUsage`` reads both for one window: the peak and the sum of CPU, memory and GPU milli by
node and GPU, and which nodes of a search can hold a request.

A reservation request measures one window against every booking that overlaps it. On the bench
fleet, with 600 to 700 bookings in a spread request's window, the Python loop took about 2 ms,
the largest part of the request's CPU, and these arrays about 0.45 ms. The cost here is a scan of
each column and one sort of the rows that overlap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .ledger import Booking, FleetNode, NodeSearch
    from .solvers import PlacementRequest

GPU_MILLI_PER_GPU = 1000
_DEAD = np.iinfo(np.int64).min
"""The start and end of a dropped row, which overlaps no window."""
_INITIAL_ROWS = 1024
LOOKUP_IDS_UP_TO = 2_000_000
"""Node and GPU ids below this are found through a table indexed by id (4 bytes per id), others by binary search.

The table is also skipped for sparse ids: when the highest id reaches 8 times the count of nodes
or GPUs plus 65,536.
"""
SORT_KEY_LIMIT = 2**62
"""``_grouped`` sorts by one integer key below this (about 2,000 years of window per key), else by three."""
COMPACT_AFTER_DEAD_ROWS = 4096
"""``BookingRows`` is rebuilt once it contains more dropped rows than this and than live ones."""


class _Columns:
    """Integer columns of equal length, growing by doubling. ``data[0]`` contains the starts, ``data[1]`` the ends."""

    def __init__(self, width: int) -> None:
        self.data = np.zeros((width, _INITIAL_ROWS), dtype=np.int64)
        self.size = 0
        self.dead = 0

    def append(self, values: tuple[int, ...]) -> int:
        if self.size == self.data.shape[1]:
            grown = np.zeros((self.data.shape[0], 2 * self.size), dtype=np.int64)
            grown[:, :self.size] = self.data[:, :self.size]
            self.data = grown
        self.data[:, self.size] = values
        self.size += 1
        return self.size - 1

    def kill(self, row: int) -> None:
        self.data[0, row] = self.data[1, row] = _DEAD
        self.dead += 1

    def overlapping(self, start: int, end: int) -> np.ndarray:
        """Return the columns of the rows whose ``[start, end)`` overlaps the window, one row per column."""
        starts, ends = self.data[0, :self.size], self.data[1, :self.size]
        return self.data[:, np.flatnonzero((starts < end) & (ends > start))]


class BookingRows:
    """Every booking as rows: one node row (start, end, CPU, memory, node id) and one GPU row per share.

    Only rows with a non-empty window are kept. A dropped booking's rows stay in place with a
    window that overlaps nothing, until ``needs_compaction``.
    """

    def __init__(self, bookings: Iterable[Booking] = ()) -> None:
        self.node_rows = _Columns(5)
        self.gpu_rows = _Columns(4)
        self._rows_of: dict[int, tuple[int | None, tuple[int, ...]]] = {}
        for booking in bookings:
            self.put(booking)

    def put(self, booking: Booking) -> None:
        self.drop(booking.id)
        node_row = None
        if booking.end > booking.start:
            node_row = self.node_rows.append((booking.start, booking.end, booking.cpu_millicores, booking.memory_mib,
                                              booking.node_id))
        gpu_rows = tuple(self.gpu_rows.append((start, end, milli, gpu_id))
                         for gpu_id, (start, end, milli) in booking.gpu_rows)
        self._rows_of[booking.id] = (node_row, gpu_rows)

    def drop(self, booking_id: int) -> None:
        rows = self._rows_of.pop(booking_id, None)
        if rows is None:
            return
        node_row, gpu_rows = rows
        if node_row is not None:
            self.node_rows.kill(node_row)
        for row in gpu_rows:
            self.gpu_rows.kill(row)

    def needs_compaction(self) -> bool:
        dead = self.node_rows.dead + self.gpu_rows.dead
        return dead > COMPACT_AFTER_DEAD_ROWS and dead > self.node_rows.size + self.gpu_rows.size - dead


class FleetArrays:
    """The nodes sorted by id, and every known GPU sorted by id, as arrays of what the shortlist compares."""

    def __init__(self, nodes: Iterable[FleetNode], gpu_node: dict[int, int]) -> None:
        self.nodes = sorted(nodes, key=lambda node: node.id)
        self.ids = np.array([node.id for node in self.nodes], dtype=np.int64)
        self._node_lookup = _lookup_table(self.ids)
        self.position_of = {node.id: position for position, node in enumerate(self.nodes)}
        self.cpu = np.array([node.cpu_millicores for node in self.nodes], dtype=np.int64)
        self.memory = np.array([node.memory_mib for node in self.nodes], dtype=np.int64)
        self.gpu_count = np.array([node.gpu_count for node in self.nodes], dtype=np.int64)
        self.healthy_count = np.array([len(node.healthy_gpu_ids) for node in self.nodes], dtype=np.int64)
        self.model = np.array([node.gpu_model_id for node in self.nodes], dtype=np.int64)
        self.region = np.array([node.region_id for node in self.nodes], dtype=np.int64)
        self.price = np.array([float(node.price_per_gpu_hour) for node in self.nodes], dtype=np.float64)
        self.active = np.array([node.active for node in self.nodes], dtype=bool)
        self.in_maintenance_at = [position for position, node in enumerate(self.nodes) if node.maintenance]
        known = [(gpu_id, node_id) for gpu_id, node_id in sorted(gpu_node.items())]
        self.gpu_ids = np.array([gpu_id for gpu_id, _node_id in known], dtype=np.int64)
        self._gpu_lookup = _lookup_table(self.gpu_ids)
        self.gpu_node = self.node_positions(np.array([node_id for _gpu_id, node_id in known], dtype=np.int64))
        self.gpu_healthy = np.array([position >= 0 and gpu_id in self.nodes[position].healthy
                                     for (gpu_id, _node_id), position in zip(known, self.gpu_node.tolist())],
                                    dtype=bool)
        self._healthy_positions: dict[int, np.ndarray] = {}

    def node_positions(self, node_ids: np.ndarray) -> np.ndarray:
        """Return each id's position in ``nodes``, or -1 for an id the fleet does not have."""
        return _positions(self.ids, self._node_lookup, node_ids)

    def gpu_positions(self, gpu_ids: np.ndarray) -> np.ndarray:
        return _positions(self.gpu_ids, self._gpu_lookup, gpu_ids)

    def healthy_positions(self, position: int) -> np.ndarray:
        """Return the positions in ``gpu_ids`` of the node's healthy GPUs, in its ``healthy_gpu_ids`` order."""
        found = self._healthy_positions.get(position)
        if found is None:
            found = self._healthy_positions[position] = self.gpu_positions(
                np.array(self.nodes[position].healthy_gpu_ids, dtype=np.int64))
        return found


def _lookup_table(sorted_ids: np.ndarray) -> np.ndarray | None:
    """Return an array of each id's position indexed by id (-1 where none), or None when the ids run too high."""
    if (not len(sorted_ids) or sorted_ids[0] < 0 or sorted_ids[-1] >= LOOKUP_IDS_UP_TO
            or sorted_ids[-1] >= 8 * len(sorted_ids) + 65_536):
        return None
    table = np.full(int(sorted_ids[-1]) + 1, -1, dtype=np.int32)
    table[sorted_ids] = np.arange(len(sorted_ids))
    return table


def _positions(sorted_ids: np.ndarray, table: np.ndarray | None, ids: np.ndarray) -> np.ndarray:
    """Return each of ``ids``' position in ``sorted_ids`` as int64, or -1 where it is missing."""
    if table is not None:
        inside = (ids >= 0) & (ids < len(table))
        return np.where(inside, table[np.where(inside, ids, 0)], -1).astype(np.int64)
    positions = np.searchsorted(sorted_ids, ids)
    clipped = np.minimum(positions, max(len(sorted_ids) - 1, 0))
    found = (positions < len(sorted_ids)) & (sorted_ids[clipped] == ids) if len(sorted_ids) else positions < 0
    return np.where(found, clipped, -1)


@dataclass(frozen=True)
class _Grouped:
    """Per key that has rows: the key, and the sum and the peak of each amount column over its rows."""

    keys: np.ndarray
    sums: list[np.ndarray]
    peaks: list[np.ndarray]


def _grouped(keys: np.ndarray, starts: np.ndarray, ends: np.ndarray, amounts: list[np.ndarray],
             window: tuple[int, int]) -> _Grouped:
    """Return the sum and the peak of each of ``amounts`` per key, over rows ``[start, end)`` that overlap ``window``.

    Each row becomes a start event and an end event. Sorted by key, then instant, with ends before
    starts at one instant (the windows are half-open), the running total of one key's events is
    its usage at each instant. Each key's events add up to zero, so one running total over all
    keys restarts at zero where a key's events begin.

    The rows are clipped to the window first, which leaves each peak as it is: rows that all
    overlap the window and each other overlap inside it. Then key, instant and kind fit one
    integer, and one sort of it replaces a sort by three keys.
    """
    count = len(keys)
    if count == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Grouped(keys=empty, sums=[empty for _ in amounts], peaks=[empty for _ in amounts])
    window_start, window_end = window
    span = window_end - window_start + 1
    event_keys = np.concatenate((keys, keys))
    offsets = np.concatenate((np.maximum(starts, window_start), np.minimum(ends, window_end))) - window_start
    kinds = np.concatenate((np.ones(count, np.int64), np.zeros(count, np.int64)))  # Ends sort first.
    if (int(keys.max()) + 1) * span * 2 < SORT_KEY_LIMIT:
        order = np.argsort((event_keys * span + offsets) * 2 + kinds)
    else:
        order = np.lexsort((kinds, offsets, event_keys))
    sorted_keys = event_keys[order]
    first = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    row_order = order[order < count]  # The start events, in key order: one per row.
    row_first = np.flatnonzero(np.concatenate(([True], keys[row_order][1:] != keys[row_order][:-1])))
    sums, peaks = [], []
    for amount in amounts:
        running = np.cumsum(np.concatenate((amount, -amount))[order])
        peaks.append(np.maximum.reduceat(running, first))
        sums.append(np.add.reduceat(amount[row_order], row_first))
    return _Grouped(keys=sorted_keys[first], sums=sums, peaks=peaks)


class WindowUsage:
    """The usage of ``[start, end)`` by node and GPU, and the nodes of ``search`` that have a booking in it."""

    def __init__(self, fleet: FleetArrays, rows: BookingRows, start: int, end: int, search: NodeSearch) -> None:
        self.fleet, self.start, self.end, self.search = fleet, start, end, search
        node_columns = rows.node_rows.overlapping(start, end)
        gpu_columns = rows.gpu_rows.overlapping(start, end)
        node_at = fleet.node_positions(node_columns[4])
        gpu_at = fleet.gpu_positions(gpu_columns[3])
        node_columns, node_at = node_columns[:, node_at >= 0], node_at[node_at >= 0]
        gpu_columns, gpu_at = gpu_columns[:, gpu_at >= 0], gpu_at[gpu_at >= 0]

        size = len(fleet.nodes)
        by_node = _grouped(node_at, node_columns[0], node_columns[1], [node_columns[2], node_columns[3]],
                           (start, end))
        self.cpu_sum, self.memory_sum = (_dense(by_node.keys, values, size) for values in by_node.sums)
        self.cpu_peak, self.memory_peak = (_dense(by_node.keys, values, size) for values in by_node.peaks)
        by_gpu = _grouped(gpu_at, gpu_columns[0], gpu_columns[1], [gpu_columns[2]], (start, end))
        self.gpu_at, self.gpu_sum, self.gpu_peak = by_gpu.keys, by_gpu.sums[0], by_gpu.peaks[0]

        used = np.zeros(size, dtype=bool)
        used[by_node.keys] = True
        used[fleet.gpu_node[by_gpu.keys]] = True
        self.used = used
        admitted = used & fleet.active & np.isin(fleet.model, search.gpu_model_ids)
        if search.region_id is not None:
            admitted &= fleet.region == search.region_id
        if search.max_price_per_gpu_hour is not None:
            admitted &= _price_at_most(fleet, search.max_price_per_gpu_hour)
        for position in fleet.in_maintenance_at:
            if admitted[position] and fleet.nodes[position].in_maintenance(start, end):
                admitted[position] = False
        self.admitted = np.flatnonzero(admitted)

    def used_ids(self) -> set[int]:
        """Return the ids of the nodes with a booking in the window, whatever the search."""
        return set(self.fleet.ids[self.used].tolist())

    def admitted_nodes(self) -> list[FleetNode]:
        return [self.fleet.nodes[position] for position in self.admitted.tolist()]

    def fitting(self, request: PlacementRequest) -> list[tuple[float, Decimal, int, FleetNode]]:
        """Return ``(share left, price, id, node)`` for each admitted node that can hold ``request``, in no order.

        The same rules as ``ledger._WindowUsage.fitting``, over arrays.
        """
        positions, share_left = self._fits(request)
        nodes = self.fleet.nodes
        return [(left, nodes[position].price_per_gpu_hour, nodes[position].id, nodes[position])
                for position, left in zip(positions.tolist(), share_left.tolist())]

    def _fits(self, request: PlacementRequest) -> tuple[np.ndarray, np.ndarray]:
        fleet, at = self.fleet, self.admitted
        cpu_capacity, memory_capacity = fleet.cpu[at], fleet.memory[at]
        cpu_free = cpu_capacity - _used(self.cpu_sum[at], self.cpu_peak[at], cpu_capacity - request.cpu_millicores)
        memory_free = memory_capacity - _used(self.memory_sum[at], self.memory_peak[at],
                                              memory_capacity - request.memory_mib)

        room = GPU_MILLI_PER_GPU - request.gpu_milli_per_gpu
        gpu_used = _used(self.gpu_sum, self.gpu_peak, room)
        healthy = self.fleet.gpu_healthy[self.gpu_at]
        owners = self.fleet.gpu_node[self.gpu_at][healthy]
        size = len(fleet.nodes)
        used_milli = np.bincount(owners, weights=gpu_used[healthy], minlength=size).astype(np.int64)[at]
        blocked = np.bincount(owners[gpu_used[healthy] > room], minlength=size)[at]

        healthy_count = fleet.healthy_count[at]
        fits = ((healthy_count >= request.gpu_count) & (cpu_free >= request.cpu_millicores)
                & (memory_free >= request.memory_mib))
        if request.gpu_count:
            fits &= healthy_count - blocked >= request.gpu_count
        gpu_capacity = fleet.gpu_count[at] * GPU_MILLI_PER_GPU
        cpu_left = _share(cpu_free - request.cpu_millicores, cpu_capacity)
        gpu_left = _share(gpu_capacity - used_milli - request.gpu_milli_total, gpu_capacity)
        return at[fits], (0.5 * cpu_left + 0.5 * gpu_left)[fits]

    def free_at_peak(self, node: FleetNode) -> tuple[int, int, tuple[tuple[int, int], ...]]:
        """Return the node's free CPU, free memory and ``(gpu_id, free_milli)`` per healthy GPU at the window's peak."""
        fleet = self.fleet
        position = fleet.position_of[node.id]
        gpu_positions = fleet.healthy_positions(position)
        found = np.searchsorted(self.gpu_at, gpu_positions)
        found = np.minimum(found, max(len(self.gpu_at) - 1, 0))
        has_rows = (self.gpu_at[found] == gpu_positions) if len(self.gpu_at) else np.zeros(len(found), dtype=bool)
        peaks = np.where(has_rows, self.gpu_peak[found] if len(self.gpu_at) else 0, 0)
        return (node.cpu_millicores - int(self.cpu_peak[position]),
                node.memory_mib - int(self.memory_peak[position]),
                tuple(zip(node.healthy_gpu_ids, (GPU_MILLI_PER_GPU - peaks).tolist())))


def _dense(keys: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    dense = np.zeros(size, dtype=np.int64)
    dense[keys] = values
    return dense


def _used(sums: np.ndarray, peaks: np.ndarray, allowed) -> np.ndarray:
    """Return the sum where it is at most ``allowed``, else the peak; either way exact about the fit."""
    return np.where(sums <= allowed, sums, peaks)


def _share(left: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Return ``left / capacity`` as Python divides, and 0 where the capacity is 0."""
    share = np.zeros(len(capacity), dtype=np.float64)
    np.divide(left, capacity, out=share, where=capacity != 0)
    return share


def _price_at_most(fleet: FleetArrays, cap: Decimal) -> np.ndarray:
    """Return which nodes cost at most ``cap`` per GPU-hour, compared as Decimals where the floats tie."""
    cap_float = float(cap)
    within = fleet.price <= cap_float
    for position in np.flatnonzero(fleet.price == cap_float).tolist():
        within[position] = fleet.nodes[position].price_per_gpu_hour <= cap
    return within
