"""A web thread's in-memory copy of the fleet and its bookings, for shortlisting nodes and checking quotas fast.

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
from heapq import merge
from typing import Iterable

from .ledger_arrays import BookingRows, FleetArrays, WindowUsage
from .solvers import NodeState, PlacementRequest

GPU_MILLI_PER_GPU = 1000
HOUR_MICROS = 3600 * 1_000_000
DAY_MICROS = 24 * HOUR_MICROS
HOURLY_UP_TO = 24
"""A booking that touches at most this many hours is indexed by hour, a longer one by day."""
DAILY_UP_TO = 62
"""A booking that touches more days than this is indexed under ``LONG``."""
LONG = ("long",)
IDLE_NODES_CHECKED = 64
"""``has_room`` looks for an idle node among this many candidates before it measures the window."""
ARRAYS_FROM_BOOKINGS = 128
"""A window whose index buckets contain at least this many booking ids is measured with NumPy arrays."""
WINDOW_SLOTS_UP_TO = 168
"""A window that touches more hours than this scans every booking instead of the index."""


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
    region_code: str = ""
    healthy: frozenset[int] = frozenset()
    """The healthy GPU ids as a set, set from ``healthy_gpu_ids``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "healthy", frozenset(self.healthy_gpu_ids))

    def in_maintenance(self, start: int, end: int) -> bool:
        return any(window_start < end and window_end > start for window_start, window_end in self.maintenance)


@dataclass(frozen=True, slots=True)
class Booking:
    """One allocation row: the CPU and memory it takes on its node, and its GPU shares, each with its own window."""

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
    cpu_row: tuple[int, int, int] = (0, 0, 0)
    """``(start, end, cpu_millicores)``, set from the fields; likewise ``memory_row``."""
    memory_row: tuple[int, int, int] = (0, 0, 0)
    gpu_rows: tuple[tuple[int, tuple[int, int, int]], ...] = ()
    """``(gpu_id, (start, end, milli))`` per share with a non-empty window, set from ``shares``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "touches", (min([self.start, *(share[2] for share in self.shares)]),
                                             max([self.end, *(share[3] for share in self.shares)])))
        object.__setattr__(self, "cpu_row", (self.start, self.end, self.cpu_millicores))
        object.__setattr__(self, "memory_row", (self.start, self.end, self.memory_mib))
        object.__setattr__(self, "gpu_rows", tuple((gpu_id, (start, end, milli))
                                                   for gpu_id, milli, start, end in self.shares if end > start))


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

    Ends sort before starts at the same instant, because windows are half-open. The sum is
    highest at some row's start, so a few rows are compared pairwise instead of sorted.
    """
    rows = rows if isinstance(rows, list) else list(rows)
    if len(rows) <= 1:
        return rows[0][2] if rows else 0
    if len(rows) == 2:
        (start, end, amount), (other_start, other_end, other_amount) = rows
        if start < end and other_start < other_end:  # Both non-empty: they overlap or one is the peak.
            return amount + other_amount if start < other_end and other_start < end else max(amount, other_amount)
    if len(rows) <= 8:
        return max(sum(amount for start, end, amount in rows if start <= at < end) for at, _end, _amount in rows)
    events = sorted([(start, 1, amount) for start, _end, amount in rows]
                    + [(end, 0, -amount) for _start, end, amount in rows])
    running = highest = 0
    for _at, _kind, delta in events:
        running += delta
        highest = max(highest, running)
    return highest


def _booking_slots(start: int, end: int) -> list[tuple]:
    """Return the slots a booking touching ``[start, end)`` is indexed under: its hours, its days, or ``LONG``."""
    last = max(end - 1, start)
    if last // HOUR_MICROS - start // HOUR_MICROS < HOURLY_UP_TO:
        return [("hour", hour) for hour in range(start // HOUR_MICROS, last // HOUR_MICROS + 1)]
    if last // DAY_MICROS - start // DAY_MICROS < DAILY_UP_TO:
        return [("day", day) for day in range(start // DAY_MICROS, last // DAY_MICROS + 1)]
    return [LONG]


def _window_slots(start: int, end: int) -> list[tuple] | None:
    """Return every slot a booking overlapping ``[start, end)`` can be indexed under, or None for a long window."""
    last = max(end - 1, start)
    if last // HOUR_MICROS - start // HOUR_MICROS >= WINDOW_SLOTS_UP_TO:
        return None
    return [LONG, *(("day", day) for day in range(start // DAY_MICROS, last // DAY_MICROS + 1)),
            *(("hour", hour) for hour in range(start // HOUR_MICROS, last // HOUR_MICROS + 1))]


def _overlaps(start: int, end: int, window_start: int, window_end: int) -> bool:
    return start < window_end and end > window_start and end > start


@dataclass
class CapacityLedger:
    """The fleet and every booking that matters for future windows, indexed by customer, GPU model and time."""

    nodes: dict[int, FleetNode] = field(default_factory=dict)
    bookings: dict[int, Booking] = field(default_factory=dict)
    _gpu_node: dict[int, int] = field(default_factory=dict)
    _buckets: dict[tuple, set[int]] = field(default_factory=dict)
    """Booking ids by ``(scope, slot)``.

    A scope is ``()`` for every booking, ``("customer", id)`` or ``("model", id)``. A slot is
    ``("hour", n)`` or ``("day", n)`` since the epoch, or ``LONG``. Each booking is indexed under
    each slot it touches at one granularity, so a week-long booking takes 8 day keys per scope,
    not 168 hour keys.
    """
    _booking_scopes: dict[int, tuple[tuple, ...]] = field(default_factory=dict)
    _node_bookings: dict[int, set[int]] = field(default_factory=dict)
    """Booking ids by node: the node of their CPU and memory, and the nodes of their shares."""
    _booking_nodes: dict[int, tuple[int, ...]] = field(default_factory=dict)
    _free_order: dict[int | None, list[tuple]] | None = None
    """Nodes smallest first, per GPU model id and for all models (``None``)."""
    _by_price: dict[int, tuple[list[FleetNode], set[tuple[int, str]]]] | None = None
    """Nodes cheapest first per GPU model id, with their (region id, currency) groups."""
    _rows: BookingRows = field(default_factory=BookingRows)
    """The bookings as array rows, for measuring a window's usage (``ledger_arrays``)."""
    _fleet: FleetArrays | None = None
    """The nodes and GPUs as arrays, rebuilt after a node changes."""

    # Changes.

    def put_node(self, node: FleetNode) -> None:
        old = self.nodes.get(node.id)
        self.drop_node(node.id)
        self.nodes[node.id] = node
        for gpu_id in node.gpu_ids or node.healthy_gpu_ids:
            self._gpu_node[gpu_id] = node.id
        self._free_order = self._by_price = self._fleet = None
        if old is None or old.gpu_model_id != node.gpu_model_id or old.gpu_ids != node.gpu_ids:
            # The scopes and node index of the bookings on this node or its GPUs changed. A node that
            # is new here can already have bookings: one feed read applies allocations before nodes.
            gpus = set(node.gpu_ids or node.healthy_gpu_ids)
            if old is not None:
                gpus |= set(old.gpu_ids or old.healthy_gpu_ids)
            for booking in [booking for booking in self.bookings.values() if booking.node_id == node.id
                            or any(share[0] in gpus for share in booking.shares)]:
                self.put_booking(booking)

    def drop_node(self, node_id: int) -> None:
        old = self.nodes.pop(node_id, None)
        if old is not None:
            for gpu_id in old.gpu_ids or old.healthy_gpu_ids:
                if self._gpu_node.get(gpu_id) == node_id:
                    del self._gpu_node[gpu_id]
            self._free_order = self._by_price = self._fleet = None

    def put_booking(self, booking: Booking) -> None:
        self.drop_booking(booking.id)
        self.bookings[booking.id] = booking
        scopes = self._booking_scopes[booking.id] = self._scopes(booking)
        for slot in _booking_slots(*booking.touches):
            for scope in scopes:
                self._buckets.setdefault((scope, slot), set()).add(booking.id)
        node_ids = {booking.node_id, *(self._gpu_node.get(share[0]) for share in booking.shares)} - {None}
        self._booking_nodes[booking.id] = tuple(node_ids)
        for node_id in node_ids:
            self._node_bookings.setdefault(node_id, set()).add(booking.id)
        self._rows.put(booking)

    def drop_booking(self, booking_id: int) -> None:
        old = self.bookings.pop(booking_id, None)
        if old is None:
            return
        scopes = self._booking_scopes.pop(booking_id)
        self._rows.drop(booking_id)
        if self._rows.needs_compaction():
            self._rows = BookingRows(self.bookings.values())
        for node_id in self._booking_nodes.pop(booking_id):
            self._node_bookings[node_id].discard(booking_id)
        for slot in _booking_slots(*old.touches):
            for scope in scopes:
                bucket = self._buckets.get((scope, slot))
                if bucket is not None:
                    bucket.discard(booking_id)
                    if not bucket:
                        del self._buckets[(scope, slot)]

    def _scopes(self, booking: Booking) -> tuple[tuple, ...]:
        """Return the scopes ``booking`` is indexed under: all, its customer, and each GPU model it uses.

        The models it uses are its own, its node's current one and those of its shares' nodes.
        """
        models = {booking.gpu_model_id}
        node = self.nodes.get(booking.node_id)
        if node is not None:
            models.add(node.gpu_model_id)
        for gpu_id, _milli, _start, _end in booking.shares:
            node = self.nodes.get(self._gpu_node.get(gpu_id))
            if node is not None:
                models.add(node.gpu_model_id)  # A migrated share can sit on another model's node.
        return ((), ("customer", booking.customer_id), *(("model", model_id) for model_id in sorted(models)))

    def drop_bookings_ended_by(self, instant: int) -> int:
        """Forget bookings whose allocation and shares all end at or before ``instant``; return how many."""
        ended = [booking.id for booking in self.bookings.values() if booking.touches[1] <= instant]
        for booking_id in ended:
            self.drop_booking(booking_id)
        return len(ended)

    # Reads.

    def bookings_in(self, start: int, end: int, *, customer_id: int | None = None,
                    gpu_model_ids: tuple[int, ...] | None = None) -> list[Booking]:
        """Return the bookings whose allocation or a share overlaps ``[start, end)``.

        With ``customer_id``, only that customer's; with ``gpu_model_ids``, only those that use a
        node of one of those models.
        """
        if customer_id is not None:
            scopes = [("customer", customer_id)]
        elif gpu_model_ids is not None:
            scopes = [("model", model_id) for model_id in gpu_model_ids]
        else:
            scopes = [()]
        slots = _window_slots(start, end)
        ids: set[int] = set()
        if slots is None:  # A long window: any booking may overlap it.
            scope_set = set(scopes)
            ids = {booking_id for booking_id, booking_scopes in self._booking_scopes.items()
                   if not scope_set.isdisjoint(booking_scopes)}
        else:
            for slot in slots:
                for scope in scopes:
                    bucket = self._buckets.get((scope, slot))
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
        for booking in self.bookings_in(start, end, customer_id=customer_id):
            if _overlaps(booking.start, booking.end, start, end):
                rows.setdefault(booking.gpu_model_id, []).append((booking.start, booking.end, booking.gpu_milli_total))
        by_model = {model_id: peak(model_rows) for model_id, model_rows in rows.items()}
        total = peak(row for model_rows in rows.values() for row in model_rows)
        return by_model, total

    def shortlist(self, request: PlacementRequest, start: int, end: int, search: NodeSearch, *,
                  used_limit: int, free_limit: int) -> list[NodeState]:
        """Return the states of nodes that can hold ``request`` in the window: partly used ones first, tightest first.

        The choice follows the database's candidate query. First come up to ``used_limit`` partly
        used nodes that fit exactly, ordered by the share of CPU and GPU left after the request,
        then by price. Then come up to ``free_limit`` nodes with no booking in the window,
        smallest first.
        When no node fits, the list contains one partly used node that could take the request when
        idle, if there is one, as the database's shortlist does. The policy ranks none of it.
        """
        usage = self._window_usage(start, end, search)
        fitting = usage.fitting(request)
        fitting.sort(key=lambda entry: entry[:3])
        states = [_node_state(node, usage.free_at_peak(node)) for _tightness, _price, _id, node in fitting[:used_limit]]

        free_found = 0
        used_ids = usage.used_ids()
        for node in self._empty_candidates(request, search.gpu_model_ids):
            if free_found >= free_limit:
                break
            if node.id not in used_ids and _empty_fit(node, request, start, end, search):
                states.append(_node_state(node, _free_when_idle(node)))
                free_found += 1
        if not states:
            full = min((node for node in usage.admitted_nodes() if _big_enough(node, request)),
                       key=lambda node: node.id, default=None)
            if full is not None:
                states.append(_node_state(full, usage.free_at_peak(full)))
        return states

    def has_room(self, request: PlacementRequest, start: int, end: int, search: NodeSearch) -> bool:
        """Return whether a node of ``search`` can hold ``request`` in the window.

        The first nodes by size are checked for having no booking in the window, which settles
        most searches without measuring the window's bookings.
        """
        for checked, node in enumerate(self._empty_candidates(request, search.gpu_model_ids)):
            if checked >= IDLE_NODES_CHECKED:
                break
            if (search.admits(node) and node.cpu_millicores >= request.cpu_millicores
                    and node.memory_mib >= request.memory_mib and len(node.healthy_gpu_ids) >= request.gpu_count
                    and not node.in_maintenance(start, end) and self._idle(node.id, start, end)):
                return True
        states = self.shortlist(request, start, end, search, used_limit=1, free_limit=1)
        return any(state.can_hold(request) for state in states)

    def _idle(self, node_id: int, start: int, end: int) -> bool:
        """Return whether no booking uses the node in ``[start, end)``."""
        for booking_id in self._node_bookings.get(node_id, ()):
            booking = self.bookings[booking_id]
            if booking.touches[0] < end and booking.touches[1] > start:
                if booking.node_id == node_id and _overlaps(booking.start, booking.end, start, end):
                    return False
                if any(_overlaps(share_start, share_end, start, end) for gpu_id, _milli, share_start, share_end
                       in booking.shares if self._gpu_node.get(gpu_id) == node_id):
                    return False
        return True

    def lowest_prices(self, request: PlacementRequest, start: int, end: int,
                      search: NodeSearch) -> list[tuple[int, str, Decimal, str]]:
        """Return ``(gpu_model_id, region code, lowest price, currency)`` over every node that can hold ``request``.

        The rows match the database's option rows: every partly used node that fits, and every
        empty one.
        """
        usage = self._window_usage(start, end, search)
        used_ids = usage.used_ids()
        lowest: dict[tuple[int, str, str], Decimal] = {}

        def offer(node: FleetNode) -> None:
            key = (node.gpu_model_id, node.region_code, node.currency)
            if key not in lowest or node.price_per_gpu_hour < lowest[key]:
                lowest[key] = node.price_per_gpu_hour

        for _tightness, _price, _id, node in usage.fitting(request):
            offer(node)
        # Per model, nodes come cheapest first, so the first empty node that fits in each region
        # and currency sets that group's empty price, and the walk stops once every group has one.
        for model_id in set(search.gpu_model_ids):
            by_price, groups = self._price_order().get(model_id, ([], set()))
            found: set[tuple[int, str]] = set()
            for node in by_price:
                group = (node.region_id, node.currency)
                if group not in found and node.id not in used_ids and _empty_fit(node, request, start, end,
                                                                                  search):
                    offer(node)
                    found.add(group)
                    if len(found) == len(groups):
                        break
        return [(model_id, region, price, currency) for (model_id, region, currency), price in lowest.items()]

    def _window_usage(self, start: int, end: int, search: NodeSearch) -> "_WindowUsage | WindowUsage":
        """Return the window's usage, measured in Python over few bookings, else with the ledger's arrays.

        The arrays cost a fixed 0.2 ms or so and little per booking, and the Python loop about 2.5
        microseconds per booking (measured on the bench fleet). The count of booking ids in the
        index buckets the window reads, duplicates included, decides.
        """
        slots = _window_slots(start, end)
        if slots is not None:
            scopes = [("model", model_id) for model_id in search.gpu_model_ids]
            indexed = sum(len(self._buckets.get((scope, slot), ())) for slot in slots for scope in scopes)
            if indexed < ARRAYS_FROM_BOOKINGS:
                return _WindowUsage(self, start, end, search)
        if self._fleet is None:
            self._fleet = FleetArrays(self.nodes.values(), self._gpu_node)
        return WindowUsage(self._fleet, self._rows, start, end, search)

    def _price_order(self) -> dict[int, tuple[list[FleetNode], set[tuple[int, str]]]]:
        """Return each model's nodes cheapest first, and the (region, currency) groups they fall in."""
        if self._by_price is None:
            self._by_price = {}
            for node in sorted(self.nodes.values(), key=lambda node: (node.price_per_gpu_hour, node.id)):
                nodes, groups = self._by_price.setdefault(node.gpu_model_id, ([], set()))
                nodes.append(node)
                groups.add((node.region_id, node.currency))
        return self._by_price

    def _empty_candidates(self, request: PlacementRequest, gpu_model_ids: tuple[int, ...]) -> Iterable[FleetNode]:
        """Return nodes of ``gpu_model_ids`` with at least ``request.gpu_count`` GPUs, smallest first.

        The order of the ``node_free_order`` index: GPU count, CPU, price, id.
        """
        if self._free_order is None:
            everything = sorted((node.gpu_count, node.cpu_millicores, node.price_per_gpu_hour, node.id, node)
                                for node in self.nodes.values())
            self._free_order = {None: everything}
            for entry in everything:
                self._free_order.setdefault(entry[4].gpu_model_id, []).append(entry)
        models = set(gpu_model_ids)
        if len(models) == 1:
            orders = [self._free_order.get(next(iter(models)), [])]
        elif models >= set(self._free_order) - {None}:
            orders = [self._free_order[None]]
        else:
            orders = [self._free_order.get(model_id, []) for model_id in models]
        chosen = [order[bisect_left(order, (request.gpu_count,)):] for order in orders]
        return (entry[4] for entry in (chosen[0] if len(chosen) == 1 else merge(*chosen)))


def _big_enough(node: FleetNode, request: PlacementRequest) -> bool:
    """Return whether ``node`` could hold ``request`` when idle."""
    return (node.cpu_millicores >= request.cpu_millicores and node.memory_mib >= request.memory_mib
            and len(node.healthy_gpu_ids) >= request.gpu_count)


class _WindowUsage:
    """The usage of one window by node and GPU, from the bookings that overlap it, for the nodes a search admits.

    It has the methods of ``ledger_arrays.WindowUsage``, which measures the same from arrays.
    """

    def __init__(self, ledger: CapacityLedger, start: int, end: int, search: NodeSearch) -> None:
        self.start, self.end = start, end
        cpu_rows: dict[int, list[tuple[int, int, int]]] = {}
        memory_rows: dict[int, list[tuple[int, int, int]]] = {}
        gpu_rows: dict[int, list[tuple[int, int, int]]] = {}
        used_node_ids: set[int | None] = set()
        gpu_node = ledger._gpu_node
        for booking in ledger.bookings_in(start, end, gpu_model_ids=search.gpu_model_ids):
            if booking.start < end and booking.end > start and booking.end > booking.start:
                cpu_rows.setdefault(booking.node_id, []).append(booking.cpu_row)
                memory_rows.setdefault(booking.node_id, []).append(booking.memory_row)
            for gpu_id, row in booking.gpu_rows:
                if row[0] < end and row[1] > start:
                    gpu_rows.setdefault(gpu_id, []).append(row)
                    used_node_ids.add(gpu_node.get(gpu_id))
        used_node_ids.update(cpu_rows)
        self.cpu_rows, self.memory_rows, self.gpu_rows = cpu_rows, memory_rows, gpu_rows
        self._used_ids = used_node_ids
        self._admitted = [node for node in map(ledger.nodes.get, used_node_ids)
                          if node is not None and search.admits(node) and not node.in_maintenance(start, end)]

    def used_ids(self) -> set[int | None]:
        return self._used_ids

    def admitted_nodes(self) -> list[FleetNode]:
        return self._admitted

    def fitting(self, request: PlacementRequest) -> list[tuple[float, Decimal, int, FleetNode]]:
        """Return ``(share left, price, id, node)`` for each admitted node that can hold ``request``, in no order.

        Whether a node fits is exact. The share left (smaller is tighter) averages the CPU and GPU
        left, counting the sum of the overlapping rows where that sum fits, as the database's
        summed pass orders its candidates, and the peak where it does not.
        """
        found = []
        room = GPU_MILLI_PER_GPU - request.gpu_milli_per_gpu
        for node in self._admitted:
            healthy_count = len(node.healthy_gpu_ids)
            if healthy_count < request.gpu_count:
                continue
            cpu_free = node.cpu_millicores - _used(self.cpu_rows.get(node.id),
                                                   node.cpu_millicores - request.cpu_millicores)
            memory_free = node.memory_mib - _used(self.memory_rows.get(node.id), node.memory_mib - request.memory_mib)
            if cpu_free < request.cpu_millicores or memory_free < request.memory_mib:
                continue
            used_milli = blocked = 0
            for gpu_id in node.healthy_gpu_ids:
                gpu_used = _used(self.gpu_rows.get(gpu_id), room)
                used_milli += gpu_used
                blocked += gpu_used > room
            if request.gpu_count and healthy_count - blocked < request.gpu_count:
                continue
            gpu_capacity = node.gpu_count * GPU_MILLI_PER_GPU
            cpu_left = (cpu_free - request.cpu_millicores) / node.cpu_millicores if node.cpu_millicores else 0
            gpu_left = (gpu_capacity - used_milli - request.gpu_milli_total) / gpu_capacity if gpu_capacity else 0
            found.append((0.5 * cpu_left + 0.5 * gpu_left, node.price_per_gpu_hour, node.id, node))
        return found

    def free_at_peak(self, node: FleetNode) -> tuple[int, int, tuple[tuple[int, int], ...]]:
        """Return the node's free CPU, free memory and ``(gpu_id, free_milli)`` per healthy GPU at the window's peak."""
        return (node.cpu_millicores - _peak_of(self.cpu_rows.get(node.id)),
                node.memory_mib - _peak_of(self.memory_rows.get(node.id)),
                tuple((gpu_id, GPU_MILLI_PER_GPU - _peak_of(self.gpu_rows.get(gpu_id)))
                      for gpu_id in node.healthy_gpu_ids))


def _peak_of(rows: list[tuple[int, int, int]] | None) -> int:
    return peak(rows) if rows else 0


def _used(rows: list[tuple[int, int, int]] | None, allowed: int) -> int:
    """Return the sum of ``rows`` if it is at most ``allowed``, else their peak; either way exact about the fit."""
    if not rows:
        return 0
    total = sum(row[2] for row in rows) if len(rows) > 1 else rows[0][2]
    return total if total <= allowed else peak(rows)


def _empty_fit(node: FleetNode, request: PlacementRequest, start: int, end: int, search: NodeSearch) -> bool:
    """Return whether ``node``, when it has no booking in the window, passes ``search`` and can hold ``request``."""
    return (search.admits(node) and _big_enough(node, request) and not node.in_maintenance(start, end))


def _free_when_idle(node: FleetNode) -> tuple[int, int, tuple[tuple[int, int], ...]]:
    return (node.cpu_millicores, node.memory_mib,
            tuple((gpu_id, GPU_MILLI_PER_GPU) for gpu_id in node.healthy_gpu_ids))


def _node_state(node: FleetNode, free: tuple[int, int, tuple[tuple[int, int], ...]]) -> NodeState:
    cpu_free, memory_free, gpu_free = free
    return NodeState(
        node_id=node.id, gpu_model=node.gpu_model_name, gpu_count=node.gpu_count,
        cpu_capacity_millicores=node.cpu_millicores, cpu_free_millicores=cpu_free,
        memory_capacity_mib=node.memory_mib, memory_free_mib=memory_free, gpu_free_milli=gpu_free,
        price_per_gpu_hour=float(node.price_per_gpu_hour), hostname=node.hostname,
    )
