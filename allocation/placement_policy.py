"""The online placement policy that reservations and quotes use, chosen in settings or per call.

The FGD policies keep room for the typical request shapes. Those come from the reservations
submitted in the last ``TARGET_WORKLOAD_DAYS`` days. While the marketplace has fewer than
``TARGET_WORKLOAD_MIN_REQUESTS`` of them, they come from the bundled Alibaba task list. Each process
recomputes them at most every ``TARGET_WORKLOAD_REFRESH_SECONDS``.
"""

import logging
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from .models import Reservation
from .solvers import OnlinePolicy, TargetWorkload, TaskShape, get_policy, needs_workload
from .trace import TASKS_CSV
from .trace.csv_reader import read_tasks

logger = logging.getLogger(__name__)

_cache_lock = threading.Lock()
_cached: tuple[float, TargetWorkload] | None = None


def placement_policy(name: str | None = None) -> OnlinePolicy:
    """Return the policy called ``name``, or the ``PLACEMENT_POLICY`` setting's; raise ``KeyError`` for an unknown name."""
    name = name or settings.MARKETPLACE["PLACEMENT_POLICY"]
    return get_policy(name, workload=target_workload() if needs_workload(name) else None)


def target_workload() -> TargetWorkload:
    """Return the typical request shapes, recomputed when older than the refresh interval."""
    global _cached
    now = time.monotonic()
    with _cache_lock:
        if _cached is not None and now - _cached[0] < settings.MARKETPLACE["TARGET_WORKLOAD_REFRESH_SECONDS"]:
            return _cached[1]

    workload = _recent_workload() or _trace_workload()
    with _cache_lock:
        _cached = (now, workload)
    return workload


def forget_target_workload() -> None:
    """Drop the cached shapes, so the next call recomputes them (tests and settings changes)."""
    global _cached
    with _cache_lock:
        _cached = None


def _recent_workload() -> TargetWorkload | None:
    """Return the typical shapes of recent reservations, or None while there are too few of them."""
    config = settings.MARKETPLACE
    since = timezone.now() - timedelta(days=config["TARGET_WORKLOAD_DAYS"])
    rows = list(
        Reservation.objects.filter(created_at__gte=since).order_by("-created_at")
        .values_list("cpu_millicores", "gpu_count", "gpu_milli_per_gpu")[: config["TARGET_WORKLOAD_MAX_REQUESTS"]]
    )
    if len(rows) < config["TARGET_WORKLOAD_MIN_REQUESTS"]:
        logger.info("Target workload: %d recent reservations, fewer than %d; using the bundled task list", len(rows),
                    config["TARGET_WORKLOAD_MIN_REQUESTS"])
        return None
    workload = TargetWorkload.typical(TaskShape(cpu, count, milli if count else 0) for cpu, count, milli in rows)
    logger.info("Target workload: %d typical shapes from %d recent reservations", len(workload.shapes), len(rows))
    return workload


def _trace_workload() -> TargetWorkload:
    tasks = read_tasks(TASKS_CSV)
    return TargetWorkload.typical(TaskShape(task.cpu_millicores, task.gpu_count, task.gpu_milli) for task in tasks)
