"""A process's in-memory copy of the fleet and its bookings, for shortlisting nodes and checking quotas fast.

Plain Python with no Django imports: ``ledger_sync`` fills it from the database's change feed.
The ledger is a guess, never the authority. The database triggers check every allocation
against what is committed, so a ledger that missed a change can only offer a node that the
writer then finds taken (and the full path decides), or hide capacity until its next reload.

Instants are integer microseconds since the Unix epoch. Windows are half-open ``[start, end)``,
and usage in a window is the peak over its instants, as the database computes it: a booking that
ends at an instant does not overlap one that starts there.
"""

from bisect import bisect_left
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Iterable

from .solvers import NodeState, PlacementRequest

GPU_MILLI_PER_GPU = 1000
BUCKET_MICROS = 3600 * 1_000_000
"""Bookings are indexed by the hours they touch."""
LONG_BOOKING_BUCKETS = 168
"""A booking or window that touches more hours than this is kept in, or searched over, the long list."""


@dataclass(frozen=True, slots=True)
class FleetNode:
    """A node's placement data: static capacity, price, status, healthy GPUs and maintenance windows."""

    id: int
    gpu_model_id: int
    gpu_model_name: str
    region_id: int
    hostname: str
    gpu_count: int
    cpu_millicores: int
    memory_mib: int
    price_per_gpu_hour: Decimal
    currency: str
    active: bool
    healthy_gpu_ids: tuple[int, ...]
    """In GPU index order."""
    maintenance: tuple[tuple[int, int], ...]
    gpu_ids: tuple[int, ...] = ()
    """Every GPU of the node, healthy or not."""

    def in_maintenance(self, start: int, end: int) -> bool:
        return any(window_start < end and window_end > start for window_start, window_end in self.maintenance)


@dataclass(frozen=True, slots=True)
class Booking:
    """One allocation row: the node's CPU and memory it holds, and its GPU shares, each with its own window."""

    id: int
    node_id: int
    customer_id: int
    gpu_model_id: int
    start: int
    end: int
    cpu_millicores: int
    memory_mib: int
    gpu_milli_total: int
    shares: tuple[tuple[int, int, int, int], ...]
    """``(gpu_id, milli, start, end)`` per share."""
    touches: tuple[int, int] = (0, 0)
    """The span of the allocation and all its shares, set from them."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "touches", (min([self.start, *(share[2] for share in self.shares)]),
                                             max([self.end, *(share[3] for share in self.shares)])))


@dataclass(frozen=True, slots=True)
class NodeSearch:
    """The node conditions of a request: its models, its region if any, and the node price cap if any."""

    gpu_model_ids: tuple[int, ...]
    region_id: int | None = None
    max_price_per_gpu_hour: Decimal | None = None

    def admits(self, node: FleetNode) -> bool:
        return (node.active and node.gpu_model_id in self.gpu_model_ids
                and (self.region_id is None or node.region_id == self.region_id)
                and (self.max_price_per_gpu_hour is None or node.price_per_gpu_hour <= self.max_price_per_gpu_hour))


def peak(rows: Iterable[tuple[int, int, int]]) -> int:
    """Return the highest sum of ``amount`` over ``(start, end, amount)`` rows active at one instant.

    Ends sort before starts at the same instant, because windows are half-open.
    """
    rows = list(rows)
    if len(rows) <= 1:
        return rows[0][2] if rows else 0
    events = sorted([(start, 1, amount) for start, _end, amount in rows]
                    + [(end, 0, -amount) for _start, end, amount in rows])
    running = highest = 0
    for _at, _kind, delta in events:
        running += delta
        highest = max(highest, running)
    return highest


def _overlaps(start: int, end: int, window_start: int, window_end: int) -> bool:
    return start < window_end and end > window_start and end > start


@dataclass
class CapacityLedger:
    """The fleet and every booking that matters for future windows, indexed by node, customer and hour."""

    nodes: dict[int, FleetNode] = field(default_factory=dict)
    bookings: dict[int, Booking] = field(default_factory=dict)
    _gpu_node: dict[int, int] = field(default_factory=dict)
    _by_customer: dict[int, set[int]] = field(default_factory=dict)
    _by_hour: dict[int, set[int]] = field(default_factory=dict)
    _long: set[int] = field(default_factory=set)
    _free_order: list[tuple] | None = None

    # Changes.

    def put_node(self, node: FleetNode) -> None:
        self.drop_node(node.id)
        self.nodes[node.id] = node
        for gpu_id in node.gpu_ids or node.healthy_gpu_ids:
            self._gpu_node[gpu_id] = node.id
        self._free_order = None

    def drop_node(self, node_id: int) -> None:
        old = self.nodes.pop(node_id, None)
        if old is not None:
            for gpu_id in old.gpu_ids or old.healthy_gpu_ids:
                if self._gpu_node.get(gpu_id) == node_id:
                    del self._gpu_node[gpu_id]
            self._free_order = None

    def put_booking(self, booking: Booking) -> None:
        self.drop_booking(booking.id)
        self.bookings[booking.id] = booking
        self._by_customer.setdefault(booking.customer_id, set()).add(booking.id)
        hours = self._hours(*booking.touches)
        if hours is None:
            self._long.add(booking.id)
        else:
            for hour in hours:
                self._by_hour.setdefault(hour, set()).add(booking.id)

    def drop_booking(self, booking_id: int) -> None:
        old = self.bookings.pop(booking_id, None)
        if old is None:
            return
        self._by_customer.get(old.customer_id, set()).discard(booking_id)
        hours = self._hours(*old.touches)
        if hours is None:
            self._long.discard(booking_id)
        else:
            for hour in hours:
                bucket = self._by_hour.get(hour)
                if bucket is not None:
                    bucket.discard(booking_id)
                    if not bucket:
                        del self._by_hour[hour]

    def drop_bookings_ended_by(self, instant: int) -> int:
        """Forget bookings whose allocation and shares all end at or before ``instant``; return how many."""
        ended = [booking.id for booking in self.bookings.values() if booking.touches[1] <= instant]
        for booking_id in ended:
            self.drop_booking(booking_id)
        return len(ended)

    @staticmethod
    def _hours(start: int, end: int) -> range | None:
        first, last = start // BUCKET_MICROS, max(end - 1, start) // BUCKET_MICROS
        if last - first >= LONG_BOOKING_BUCKETS:
            return None
        return range(first, last + 1)

    # Reads.

    def bookings_in(self, start: int, end: int) -> list[Booking]:
        """Return the bookings whose allocation or a share overlaps ``[start, end)``."""
        hours = self._hours(start, end)
        if hours is None:
            ids: Iterable[int] = self.bookings
        else:
            ids = set(self._long)
            for hour in hours:
                bucket = self._by_hour.get(hour)
                if bucket:
                    ids |= bucket
        found = []
        for booking_id in ids:
            booking = self.bookings[booking_id]
            touch_start, touch_end = booking.touches
            if touch_start < end and touch_end > start:
                found.append(booking)
        return found

    def customer_usage(self, customer_id: int, start: int, end: int) -> tuple[dict[int, int], int]:
        """Return the customer's peak GPU milli in the window per GPU model id, and over all models together."""
        rows: dict[int, list[tuple[int, int, int]]] = {}
        for booking_id in self._by_customer.get(customer_id, ()):
            booking = self.bookings[booking_id]
            if _overlaps(booking.start, booking.end, start, end):
                rows.setdefault(booking.gpu_model_id, []).append((booking.start, booking.end, booking.gpu_milli_total))
        by_model = {model_id: peak(model_rows) for model_id, model_rows in rows.items()}
        total = peak(row for model_rows in rows.values() for row in model_rows)
        return by_model, total

    def shortlist(self, request: PlacementRequest, start: int, end: int, search: NodeSearch, *,
                  used_limit: int, free_limit: int) -> list[NodeState]:
        """Return the states of nodes that can hold ``request`` in the window: partly used ones first, tightest first.

        The choice matches the database's candidate query with exact usage. First come up to
        ``used_limit`` partly used nodes, ordered by the free share of CPU and GPU left after the
        request, then by price. Then come up to ``free_limit`` nodes with no booking in the
        window, smallest first.
        When no node fits, the list holds one node that would hold the request when idle, if a
        partly used one would, as the database's shortlist does; the policy ranks none of it.
        """
        cpu_rows: dict[int, list[tuple[int, int, int]]] = {}
        memory_rows: dict[int, list[tuple[int, int, int]]] = {}
        gpu_rows: dict[int, list[tuple[int, int, int]]] = {}
        for booking in self.bookings_in(start, end):
            if booking.start < end and booking.end > start and booking.end > booking.start:
                cpu_rows.setdefault(booking.node_id, []).append((booking.start, booking.end, booking.cpu_millicores))
                memory_rows.setdefault(booking.node_id, []).append((booking.start, booking.end, booking.memory_mib))
            for gpu_id, milli, share_start, share_end in booking.shares:
                if share_start < end and share_end > start and share_end > share_start:
                    gpu_rows.setdefault(gpu_id, []).append((share_start, share_end, milli))

        used_node_ids = set(cpu_rows)
        for gpu_id in gpu_rows:
            node_id = self._gpu_node.get(gpu_id)
            if node_id is not None:
                used_node_ids.add(node_id)

        used: list[tuple[float, Decimal, int, FleetNode, tuple]] = []
        full: tuple[FleetNode, tuple] | None = None
        for node_id in used_node_ids:
            node = self.nodes.get(node_id)
            if node is None or not search.admits(node) or node.in_maintenance(start, end):
                continue
            free = _free_on(node, cpu_rows.get(node_id), memory_rows.get(node_id), gpu_rows)
            if _fits(request, free):
                used.append((_tightness(node, free, request), node.price_per_gpu_hour, node.id, node, free))
            elif full is None and _big_enough(node, request):
                full = (node, free)
        used.sort(key=lambda entry: entry[:3])
        states = [_node_state(node, free) for _tightness_, _price, _id, node, free in used[:used_limit]]

        free_found = 0
        for node in self._empty_candidates(request):
            if free_found >= free_limit:
                break
            if (node.id in used_node_ids or not search.admits(node) or node.cpu_millicores < request.cpu_millicores
                    or node.memory_mib < request.memory_mib or node.in_maintenance(start, end)):
                continue
            free = _free_on(node, None, None, gpu_rows)
            if _fits(request, free):
                states.append(_node_state(node, free))
                free_found += 1
        if not states and full is not None:
            states.append(_node_state(*full))
        return states

    def _empty_candidates(self, request: PlacementRequest) -> list[FleetNode]:
        """Return nodes with at least ``request.gpu_count`` GPUs, smallest first, as the ``node_free_order`` index."""
        if self._free_order is None:
            self._free_order = sorted(
                (node.gpu_count, node.cpu_millicores, node.price_per_gpu_hour, node.id, node)
                for node in self.nodes.values())
        first = bisect_left(self._free_order, (request.gpu_count,))
        return [entry[4] for entry in self._free_order[first:]]


def _big_enough(node: FleetNode, request: PlacementRequest) -> bool:
    """Return whether ``node`` could hold ``request`` when idle."""
    return (node.cpu_millicores >= request.cpu_millicores and node.memory_mib >= request.memory_mib
            and len(node.healthy_gpu_ids) >= request.gpu_count)


def _peak_of(rows: list[tuple[int, int, int]] | None) -> int:
    if not rows:
        return 0
    if len(rows) == 1:
        return rows[0][2]
    return peak(rows)


def _free_on(node: FleetNode, cpu_rows, memory_rows, gpu_rows: dict) -> tuple[int, int, tuple[tuple[int, int], ...]]:
    """Return the node's free CPU, free memory and ``(gpu_id, free_milli)`` per healthy GPU at the window's peak."""
    return (node.cpu_millicores - _peak_of(cpu_rows), node.memory_mib - _peak_of(memory_rows),
            tuple((gpu_id, GPU_MILLI_PER_GPU - _peak_of(gpu_rows.get(gpu_id))) for gpu_id in node.healthy_gpu_ids))


def _fits(request: PlacementRequest, free: tuple) -> bool:
    cpu_free, memory_free, gpu_free = free
    if cpu_free < request.cpu_millicores or memory_free < request.memory_mib:
        return False
    if request.gpu_count == 0:
        return True
    milli = request.gpu_milli_per_gpu
    return sum(1 for _gpu_id, gpu_milli in gpu_free if gpu_milli >= milli) >= request.gpu_count


def _node_state(node: FleetNode, free: tuple) -> NodeState:
    cpu_free, memory_free, gpu_free = free
    return NodeState(
        node_id=node.id, gpu_model=node.gpu_model_name, gpu_count=node.gpu_count,
        cpu_capacity_millicores=node.cpu_millicores, cpu_free_millicores=cpu_free,
        memory_capacity_mib=node.memory_mib, memory_free_mib=memory_free, gpu_free_milli=gpu_free,
        price_per_gpu_hour=float(node.price_per_gpu_hour), hostname=node.hostname,
    )


def _tightness(node: FleetNode, free: tuple, request: PlacementRequest) -> float:
    """Return the share of CPU and GPU milli left on the node after ``request``; smaller is a tighter fit."""
    cpu_free, _memory_free, gpu_free = free
    cpu_left = (cpu_free - request.cpu_millicores) / node.cpu_millicores if node.cpu_millicores else 0
    gpu_capacity = node.gpu_count * GPU_MILLI_PER_GPU
    used_milli = sum(GPU_MILLI_PER_GPU - gpu_milli for _gpu_id, gpu_milli in gpu_free)
    gpu_left = (gpu_capacity - used_milli - request.gpu_milli_total) / gpu_capacity if gpu_capacity else 0
    return 0.5 * cpu_left + 0.5 * gpu_left
