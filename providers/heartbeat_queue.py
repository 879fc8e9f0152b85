"""A Redis list between the heartbeat endpoint and the ingestion, so readings are stored in batches.

With ``HEARTBEAT_QUEUE`` on, ``POST /api/v1/agent/heartbeats/`` validates a heartbeat, appends it
to the list and responds 202. The ``providers.ingest_heartbeats`` task takes up to
``HEARTBEAT_BATCH`` heartbeats at a time and stores them with one COPY and one node update, which
is several times cheaper per heartbeat than a transaction per request. The first heartbeat that
finds the list empty schedules the task; beat also runs it every few seconds.

NOTE: a heartbeat taken from the list by a worker that then dies before its transaction commits
is lost; the agent's next heartbeat, 10 s later, carries fresh readings.
"""

import json
import logging
from datetime import datetime

import redis
from django.conf import settings

from marketplace.models import Node

from .telemetry import IngestSummary, heartbeats_ingest

logger = logging.getLogger(__name__)

QUEUE_KEY = "marketplace:heartbeats"
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
    """Ingest queued heartbeats in batches until the list is empty (or ``max_batches`` ran); return the totals."""
    total = IngestSummary()
    batches = 0
    while max_batches is None or batches < max_batches:
        items = _redis().lpop(QUEUE_KEY, settings.MARKETPLACE["HEARTBEAT_BATCH"])
        if not items:
            break
        batches += 1
        decoded = [json.loads(item) for item in items]
        nodes = {node.pk: node for node in Node.objects.filter(pk__in={item["node_id"] for item in decoded})}
        heartbeats = [
            (nodes[item["node_id"]], [{**snapshot, "at": datetime.fromisoformat(snapshot["at"])}
                                      for snapshot in item["snapshots"]])
            for item in decoded if item["node_id"] in nodes
        ]
        summary = heartbeats_ingest(heartbeats=heartbeats)
        total.heartbeats += summary.heartbeats
        total.readings += summary.readings
        total.unknown_gpus += summary.unknown_gpus
        total.health_changes += summary.health_changes
    if total.heartbeats:
        logger.info("Ingested %d queued heartbeats (%d readings) in %d batches", total.heartbeats, total.readings,
                    batches)
    return total


def queue_length() -> int:
    return int(_redis().llen(QUEUE_KEY))
