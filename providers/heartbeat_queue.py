"""A Redis list between the heartbeat endpoint and the ingestion, so readings are stored in batches.

With ``HEARTBEAT_QUEUE`` on, ``POST /api/v1/agent/heartbeats/`` validates a heartbeat, appends it
to the list and responds 202. The ``providers.ingest_heartbeats`` task takes up to
``HEARTBEAT_BATCH`` heartbeats at a time and stores them with one COPY and one node update, which
is several times cheaper per heartbeat than a transaction per request. The first heartbeat that
finds the list empty schedules the task; beat also runs it every few seconds.

A batch leaves the list only after its transaction commits. NOTE: a worker that dies between the
commit and the removal leaves the batch to be stored a second time (duplicate readings, which the
hourly rollup averages in), but a heartbeat the API accepted is not lost that way.
"""

import json
import logging
from datetime import datetime

import redis
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from marketplace.models import Node

from .telemetry import IngestSummary, heartbeats_ingest

logger = logging.getLogger(__name__)

QUEUE_KEY = "marketplace:heartbeats"
# Advisory lock key of the drain, apart from the scheduler's cycle lock and the task ledger's two-key locks.
DRAIN_LOCK_KEY = 0x4842_4451
_client = None


def queue_enabled() -> bool:
    return bool(settings.MARKETPLACE["HEARTBEAT_QUEUE"] and settings.REDIS_URL)


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        # Short timeouts: while Redis is down the endpoint falls back to storing heartbeats directly.
        _client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    return _client


def heartbeat_enqueue(*, node_id: int, snapshots: list[dict]) -> int:
    """Append one validated heartbeat to the list; return the list's length after it."""
    body = json.dumps({"node_id": node_id, "snapshots": [
        {**snapshot, "at": snapshot["at"].isoformat()} for snapshot in snapshots]})
    return _redis().rpush(QUEUE_KEY, body)


def heartbeats_drain(*, max_batches: int | None = None) -> IngestSummary:
    """Ingest queued heartbeats in batches until the list is empty (or ``max_batches`` ran); return the totals.

    Each batch is read from the head of the list without removing it, stored, and removed only once
    its transaction commits, so a database error or a dying worker leaves the batch for the next
    drain. On PostgreSQL one drain runs at a time (a session advisory lock); a second returns at once.
    """
    total = IngestSummary()
    batches = 0
    size = settings.MARKETPLACE["HEARTBEAT_BATCH"]
    if not _drain_lock():
        logger.info("Another worker is draining the heartbeat queue; leaving it to that one")
        return total
    try:
        while max_batches is None or batches < max_batches:
            items = _redis().lrange(QUEUE_KEY, 0, size - 1)
            if not items:
                break
            batches += 1
            with transaction.atomic():
                summary = heartbeats_ingest(heartbeats=_decode(items))
            # Committed (or part of the caller's transaction): remove the batch. Only the lock holder removes from
            # the head and producers append at the tail, so these are the items read.
            _redis().ltrim(QUEUE_KEY, len(items), -1)
            total.heartbeats += summary.heartbeats
            total.readings += summary.readings
            total.unknown_gpus += summary.unknown_gpus
            total.health_changes += summary.health_changes
    finally:
        _drain_unlock()
    if total.heartbeats:
        logger.info("Ingested %d queued heartbeats (%d readings) in %d batches", total.heartbeats, total.readings,
                    batches)
    return total


def _decode(items: list[bytes]) -> list[tuple[Node, list[dict]]]:
    decoded = [json.loads(item) for item in items]
    nodes = {node.pk: node for node in Node.objects.filter(pk__in={item["node_id"] for item in decoded})}
    return [
        (nodes[item["node_id"]], [{**snapshot, "at": datetime.fromisoformat(snapshot["at"])}
                                  for snapshot in item["snapshots"]])
        for item in decoded if item["node_id"] in nodes
    ]


def _drain_lock() -> bool:
    """Take the drain's session advisory lock on PostgreSQL without waiting; True elsewhere (one demo process).

    The lock is held from reading a batch to removing it from the list, across the commit, and PostgreSQL
    releases it if the worker's connection dies.
    """
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [DRAIN_LOCK_KEY])
        return cursor.fetchone()[0]


def _drain_unlock() -> None:
    if connection.vendor != "postgresql":
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [DRAIN_LOCK_KEY])
    except DatabaseError as error:  # a lost connection has released the lock already
        logger.warning("Could not release the heartbeat drain lock: %s", error)


def queue_length() -> int:
    """Return the number of heartbeats waiting in the list."""
    return int(_redis().llen(QUEUE_KEY))
