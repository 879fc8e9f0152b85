"""Keep each thread's capacity ledger current from PostgreSQL's change feed (migration 0023).

The first use in a thread loads the fleet and every allocation that ended at most
``CAPACITY_LEDGER_LOOKBACK_SECONDS`` ago (an hour by default). Each
later use reads only what changed since: one statement returns the allocations and nodes that
committed transactions changed, resolved to their current rows. The express path calls
``ledger_for_window`` after it has locked the customer's row, so the ledger then includes every
admission of that customer that committed before, as the database's own reads would.

A thread reloads everything every ``CAPACITY_LEDGER_RELOAD_SECONDS``, and instead of reading
the feed when its last read is older than half of ``FEED_RETENTION``, so no missed change
outlives a reload.

NOTE: a transaction that reads the feed and then rolls back its own writes leaves them in the
ledger until the next reload. Requests read the feed before they write, so only tests, which
roll back each test's transaction, see this; ``ledger_reset`` clears the thread's ledger.
Renaming a GPU model or a region is not in the feed either; the ledger shows the new name after
the next reload.
"""

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from marketplace.models import Node

from .ledger import Booking, CapacityLedger, FleetNode, NodeSearch
from .selectors import CustomerUsage, NodeFilter
from .solvers import NodeState, Placement, PlacementPolicy, PlacementRequest

logger = logging.getLogger(__name__)

FEED_RETENTION = timedelta(minutes=30)
"""Feed rows of transactions that committed longer ago than this are purged. A thread that has not read
the feed for half as long reloads instead."""
PRUNE_EVERY_SECONDS = 60.0

_EPOCH = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_local = threading.local()


def micros(moment: datetime) -> int:
    """Return ``moment`` as integer microseconds since the Unix epoch, exactly."""
    return (moment - _EPOCH) // _MICROSECOND


@dataclass
class _Synced:
    ledger: CapacityLedger
    horizon: int
    """Every allocation ending after this instant is in the ledger."""
    pending: list[str]
    xmax: str
    loaded_at: float
    read_at: float
    pruned_at: float


def ledger_enabled() -> bool:
    return connection.vendor == "postgresql" and settings.MARKETPLACE["CAPACITY_LEDGER"]


def ledger_for_window(start_at: datetime) -> CapacityLedger | None:
    """Return this thread's ledger brought up to date, or None if it lacks bookings for a window from ``start_at``.

    The caller reads the database when this is None: the ledger is off, the database is SQLite,
    or the window starts before the oldest instant the ledger covers.
    """
    if not ledger_enabled():
        return None
    synced = getattr(_local, "synced", None)
    clock = time.monotonic()
    if _load_due(synced, clock):
        synced = _load()
    else:
        _read_changes(synced, clock)
    return _covering(synced, start_at, clock)


def ledger_feed_position() -> tuple[list[str], str] | None:
    """Return where this thread's ledger reads the feed next, or None if it has none to bring up to date.

    The express path passes the position to ``allocation_admission_context``, which returns the
    changes since with the admission context; ``ledger_after_changes`` applies them.
    """
    synced = getattr(_local, "synced", None)
    if not ledger_enabled() or synced is None or _load_due(synced, time.monotonic()):
        return None
    return synced.pending, synced.xmax


def ledger_after_changes(changes: dict, start_at: datetime) -> CapacityLedger | None:
    """Apply ``changes``, read from the position ``ledger_feed_position`` gave; return as ``ledger_for_window`` does."""
    synced = _local.synced
    clock = time.monotonic()
    _apply_changes(synced, changes, clock)
    return _covering(synced, start_at, clock)


def _covering(synced: _Synced, start_at: datetime, clock: float) -> CapacityLedger | None:
    """Return the ledger if it covers windows from ``start_at``, after forgetting what ended long ago."""
    if clock - synced.pruned_at > PRUNE_EVERY_SECONDS:
        synced.horizon = max(synced.horizon, micros(timezone.now() - _lookback()))
        synced.ledger.drop_bookings_ended_by(synced.horizon)
        synced.pruned_at = clock
    if micros(start_at) < synced.horizon:
        return None
    return synced.ledger


def ledger_load_if_due() -> None:
    """Load this thread's ledger if it has none or its reload is due, so that the next read is a short feed read.

    The express path calls this before it locks the customer's row, so that a load, which takes
    a few hundred milliseconds on a large fleet, does not hold the lock.
    """
    if ledger_enabled() and _load_due(getattr(_local, "synced", None), time.monotonic()):
        _load()


def _load_due(synced: "_Synced | None", clock: float) -> bool:
    return (synced is None or clock - synced.loaded_at > settings.MARKETPLACE["CAPACITY_LEDGER_RELOAD_SECONDS"]
            or clock - synced.read_at > FEED_RETENTION.total_seconds() / 2)


def ledger_usage_reader(ledger: CapacityLedger):
    """Return a reader of customer usage from ``ledger`` with the signature of ``selectors.customer_usage``.

    The ledger always computes the exact peak, so ``exact`` is accepted and ignored.
    """
    def read(customer_id: int, start_at: datetime, end_at: datetime, *, exact: bool = True) -> CustomerUsage:
        by_model, total = ledger.customer_usage(customer_id, micros(start_at), micros(end_at))
        return CustomerUsage(by_model=by_model, total=total)
    return read


def ledger_shortlist(
    ledger: CapacityLedger, *, request: PlacementRequest, start_at: datetime, end_at: datetime,
    node_filter: NodeFilter, policy: PlacementPolicy,
) -> tuple[list[Placement], dict[int, NodeState]]:
    """Return what ``placement.placement_shortlist`` returns, from ``ledger`` instead of the database."""
    shortlist_size = settings.MARKETPLACE["PLACEMENT_SHORTLIST_SIZE"]
    states = ledger.shortlist(request, micros(start_at), micros(end_at), node_search(node_filter),
                              used_limit=shortlist_size, free_limit=max(shortlist_size // 4, 2))
    return policy.rank(request, states), {state.node_id: state for state in states}


def node_search(node_filter: NodeFilter) -> NodeSearch:
    """Return ``node_filter``, the database selectors' node conditions, as the ledger's ``NodeSearch``."""
    return NodeSearch(gpu_model_ids=tuple(node_filter.gpu_model_ids), region_id=node_filter.region_id,
                      max_price_per_gpu_hour=node_filter.max_price_per_gpu_hour)


def ledger_reset() -> None:
    """Forget this thread's ledger; the next use loads it again."""
    _local.synced = None


def capacity_changes_purge(*, now: datetime | None = None) -> int:
    """Delete the change-feed rows that no reader can still need; return how many. No-op off PostgreSQL.

    A row is deleted once its transaction completed before a purge mark at least
    ``FEED_RETENTION`` old. Its transaction then committed more than ``FEED_RETENTION`` ago, and a
    thread that has not read the feed for half that long reloads instead. ``recorded_at`` is not
    used: a long transaction can commit rows it wrote long before.
    """
    if connection.vendor != "postgresql":
        return 0
    cutoff = (now or timezone.now()) - FEED_RETENTION
    deleted = 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT id, oldest_running::text FROM allocation_capacity_purge_mark WHERE taken_at < %s "
                       "ORDER BY taken_at DESC LIMIT 1", [cutoff])
        mark = cursor.fetchone()
        if mark is not None:
            mark_id, oldest_running = mark
            cursor.execute("DELETE FROM allocation_capacity_change WHERE txid < %s::xid8", [oldest_running])
            deleted = cursor.rowcount
            cursor.execute("DELETE FROM allocation_capacity_purge_mark WHERE id <= %s", [mark_id])
        cursor.execute("INSERT INTO allocation_capacity_purge_mark (oldest_running) "
                       "VALUES (pg_snapshot_xmin(pg_current_snapshot()))")
    logger.info("Purged %d capacity change rows of transactions that completed before a mark taken before %s",
                deleted, cutoff.isoformat())
    return deleted


def _lookback() -> timedelta:
    return timedelta(seconds=settings.MARKETPLACE["CAPACITY_LEDGER_LOOKBACK_SECONDS"])


def _call(sql: str, params: list):
    """Run ``sql``, which returns one JSON value, and return that value decoded."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        value = cursor.fetchone()[0]
    return json.loads(value) if isinstance(value, str) else value


def _load() -> _Synced:
    started = time.perf_counter()
    horizon = timezone.now() - _lookback()
    loaded = _call("SELECT allocation_capacity_load(%s)", [horizon])
    ledger = CapacityLedger()
    for row in loaded["nodes"]:
        ledger.put_node(_node(row))
    for row in loaded["allocations"]:
        ledger.put_booking(_booking(row))
    clock = time.monotonic()
    _local.synced = synced = _Synced(ledger=ledger, horizon=micros(horizon), pending=loaded["pending"],
                                     xmax=loaded["xmax"], loaded_at=clock, read_at=clock, pruned_at=clock)
    logger.info("Capacity ledger loaded: %d nodes, %d allocations in %.0f ms", len(ledger.nodes),
                len(ledger.bookings), (time.perf_counter() - started) * 1000)
    return synced


def _read_changes(synced: _Synced, clock: float) -> None:
    changes = _call("SELECT allocation_capacity_changes_since(%s::xid8[], %s::xid8)", [synced.pending, synced.xmax])
    _apply_changes(synced, changes, clock)


def _apply_changes(synced: _Synced, changes: dict, clock: float) -> None:
    """Apply a feed read (see migration 0025) to the ledger and move its position past it.

    The read contains the snapshot to read from next time, and the rows of the transactions that
    were running at the last read or started after it: exactly what has committed since, in any
    commit order. The snapshot does not list the reader's own transaction, so the read adds it.
    """
    ledger = synced.ledger
    current = {row[0]: row for row in changes["allocations"]}
    for allocation_id in changes["allocation_ids"]:
        row = current.get(allocation_id)
        booking = _booking(row) if row is not None else None
        if booking is not None and booking.touches[1] > synced.horizon:
            ledger.put_booking(booking)
        else:
            ledger.drop_booking(allocation_id)  # Deleted, or ended before the ledger's horizon.
    node_ids = sorted(set(changes["node_ids"]))
    if node_ids:
        current_nodes = {row[0]: row for row in _call("SELECT allocation_capacity_nodes(%s)", [node_ids])}
        for node_id in node_ids:
            row = current_nodes.get(node_id)
            if row is None:
                ledger.drop_node(node_id)
            else:
                ledger.put_node(_node(row))
        logger.info("Capacity ledger reloaded nodes %s", node_ids)
    synced.pending, synced.xmax, synced.read_at = changes["pending"], changes["xmax"], clock


def _node(row: list) -> FleetNode:
    (node_id, model_id, model_name, region_id, hostname, gpu_count, cpu, memory, price, currency, status,
     healthy_gpu_ids, maintenance, gpu_ids, region_code) = row
    return FleetNode(
        id=node_id, gpu_model_id=model_id, gpu_model_name=model_name, region_id=region_id, hostname=hostname,
        gpu_count=gpu_count, cpu_millicores=cpu, memory_mib=memory, price_per_gpu_hour=Decimal(price),
        currency=currency, active=status == Node.Status.ACTIVE, healthy_gpu_ids=tuple(healthy_gpu_ids),
        maintenance=tuple((start, end) for start, end in maintenance), gpu_ids=tuple(gpu_ids),
        region_code=region_code,
    )


def _booking(row: list) -> Booking:
    allocation_id, node_id, customer_id, model_id, start, end, cpu, memory, milli_total, shares = row
    return Booking(
        id=allocation_id, node_id=node_id, customer_id=customer_id, gpu_model_id=model_id, start=start, end=end,
        cpu_millicores=cpu, memory_mib=memory, gpu_milli_total=milli_total,
        shares=tuple((gpu_id, milli, share_start, share_end) for gpu_id, milli, share_start, share_end in shares),
    )
