"""Celery tasks of the providers app; each one is thin and calls a service."""

from celery import shared_task

from .health import heartbeats_check, readings_purge, readings_rollup, unhealthy_nodes_drain
from .heartbeat_queue import heartbeats_drain, queue_enabled
from .metering import open_assignments_close
from .risk import failure_risk_fit


@shared_task(name="providers.check_heartbeats", acks_late=True)
def check_heartbeats_task() -> int:
    """Mark nodes that missed their heartbeats unknown; safe to run twice."""
    return heartbeats_check()


@shared_task(name="providers.drain_unhealthy_nodes", acks_late=True)
def drain_unhealthy_nodes_task() -> dict:
    """Drain nodes unhealthy past the threshold, or ask an admin; a rerun finds them draining or requested."""
    return unhealthy_nodes_drain()


@shared_task(name="providers.rollup_readings", acks_late=True)
def rollup_readings_task() -> int:
    """Recompute the recent hourly rollups, then purge raw readings past their retention."""
    written = readings_rollup()
    readings_purge()
    return written


@shared_task(name="providers.ingest_heartbeats", acks_late=True)
def ingest_heartbeats_task() -> int:
    """Store the queued heartbeats in batches; return how many. Does nothing when the queue is off."""
    if not queue_enabled():
        return 0
    return heartbeats_drain().heartbeats


@shared_task(name="providers.close_open_assignments", acks_late=True)
def close_open_assignments_task() -> int:
    """Meter started work whose reservation ended without a stop report; safe to run twice."""
    return open_assignments_close()


@shared_task(name="providers.fit_failure_risk", acks_late=True)
def fit_failure_risk_task() -> str:
    """Refit the failure-risk model on the health history and store every node's risk; return its status."""
    return failure_risk_fit().status
