"""Replay the trace's tasks as reservations through the reservation service, in creation order."""

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone as dt_timezone
from pathlib import Path
from typing import Callable

from django.conf import settings
from django.utils import timezone

from marketplace.exceptions import InvalidRequest
from marketplace.models import GPU_MILLI_PER_GPU, Gpu, Organization

from ..models import Allocation, Reservation, ReservationStatus
from ..services import ReservationSpec, reservation_create, reservations_advance
from . import overlay
from .csv_reader import TraceTask, read_tasks
from .importer import refresh_planner_statistics

logger = logging.getLogger(__name__)

STATISTICS_REFRESH_EVERY = 1000
"""Submissions between two ANALYZE runs; the allocation tables grow from empty during a replay."""

INVALID_REQUEST = "invalid_request"
"""Summary key for tasks that the service rejected as invalid input (nothing is stored for them)."""


@dataclass
class ReplaySummary:
    """Totals of one replay; ``gpu_allocation_ratio`` is the peak fraction of fleet GPU milli allocated."""

    submitted: int = 0
    placed: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    skipped_already_replayed: int = 0
    gpu_allocation_ratio: float = 0.0
    peak_at: str | None = None
    wall_seconds: float = 0.0
    decisions_per_second: float = 0.0
    trace_start_at: str = ""
    policy: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def default_trace_start(tasks: list[TraceTask], now: datetime | None = None) -> datetime:
    """Return the start date that makes the trace's last deletion fall on the next midnight UTC.

    Tasks that still ran when the trace was taken then show as active reservations today.
    """
    now = now or timezone.now()
    next_midnight = (now + timedelta(days=1)).astimezone(dt_timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return next_midnight - timedelta(seconds=max(task.deletion_seconds for task in tasks))


def trace_replay(
    *, tasks_path: Path, trace_start_at: datetime | None = None, limit: int | None = None,
    policy_name: str | None = None, hold_until_trace_end: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> ReplaySummary:
    """Submit the first ``limit`` tasks (all when ``None``) as reservations, in creation-time order.

    Each task's window is ``[start + creation_time, start + deletion_time)``, and the service takes
    the task's start as the current time. Tasks already replayed (same customer and task name) are
    skipped, so a second run submits nothing twice. Afterwards reservations are advanced to the
    real current time.

    The trace's own windows are short (median 9 minutes), so at most about 1 % of the fleet is busy
    at once. ``hold_until_trace_end`` keeps every task until the trace's last deletion instead, as
    the arrival-only packing experiments on this trace do; then demand reaches about 98 % of the fleet.
    """
    tasks = sorted(read_tasks(tasks_path), key=lambda task: (task.creation_seconds, task.name))
    if limit is not None:
        tasks = tasks[:limit]
    trace_start_at = trace_start_at or default_trace_start(tasks)
    try:
        trace_start_at + timedelta(seconds=max(task.deletion_seconds for task in tasks))
    except OverflowError:
        raise RuntimeError(f"The trace starting at {trace_start_at.isoformat()} ends after the year 9999; "
                           "choose an earlier --start.") from None
    trace_end_seconds = max(task.deletion_seconds for task in tasks) if hold_until_trace_end else None
    customers = {org.slug: org for org in Organization.objects.filter(slug__in=[c.slug for c in overlay.CUSTOMERS])}
    if len(customers) != len(overlay.CUSTOMERS):
        raise RuntimeError("The trace's customer organizations are missing; run `python manage.py import_trace` first.")

    already = set(Reservation.objects.filter(customer__in=customers.values()).exclude(external_ref="")
                  .values_list("customer__slug", "external_ref"))
    summary = ReplaySummary(trace_start_at=trace_start_at.isoformat(),
                            policy=policy_name or settings.MARKETPLACE["PLACEMENT_POLICY"])
    rejected = Counter()
    logger.info("Replaying %d tasks from %s, trace start %s", len(tasks), tasks_path, trace_start_at.isoformat())

    started = time.perf_counter()
    for done, task in enumerate(tasks, start=1):
        customer = customers[overlay.customer_for_task(task.name)]
        if (customer.slug, task.name) in already:
            summary.skipped_already_replayed += 1
        else:
            outcome = _submit(task, customer, trace_start_at, trace_end_seconds, policy_name)
            summary.submitted += 1
            if outcome == "placed":
                summary.placed += 1
            else:
                rejected[outcome] += 1
        if summary.submitted % STATISTICS_REFRESH_EVERY == 0 and summary.submitted:
            refresh_planner_statistics()
        if on_progress is not None:
            on_progress(done, len(tasks))
    summary.wall_seconds = round(time.perf_counter() - started, 3)

    reservations_advance(now=timezone.now())
    summary.rejected = sum(rejected.values())
    summary.rejected_by_reason = dict(sorted(rejected.items()))
    summary.decisions_per_second = round(summary.submitted / summary.wall_seconds, 1) if summary.wall_seconds else 0.0
    summary.gpu_allocation_ratio, summary.peak_at = peak_gpu_allocation()
    logger.info("Replay finished: %s", summary.as_dict())
    return summary


def _submit(task: TraceTask, customer: Organization, trace_start_at: datetime, trace_end_seconds: int | None,
            policy_name: str | None) -> str:
    start_at = trace_start_at + timedelta(seconds=task.creation_seconds)
    end_seconds = task.deletion_seconds if trace_end_seconds is None else max(trace_end_seconds, task.creation_seconds + 1)
    spec = ReservationSpec(
        gpu_count=task.gpu_count,
        gpu_milli_per_gpu=task.gpu_milli,
        cpu_millicores=task.cpu_millicores,
        memory_mib=task.memory_mib,
        start_at=start_at,
        end_at=trace_start_at + timedelta(seconds=end_seconds),
        gpu_models=task.gpu_models,
        external_ref=task.name,
    )
    try:
        reservation = reservation_create(customer=customer, spec=spec, now=start_at, policy_name=policy_name)
    except InvalidRequest as error:
        logger.info("Task %s is not a valid reservation: %s", task.name, error)
        return INVALID_REQUEST
    if reservation.status == ReservationStatus.REJECTED:
        return str(reservation.reason_code)
    return "placed"


def peak_gpu_allocation() -> tuple[float, str | None]:
    """Return the peak fraction of the fleet's GPU milli held by allocations, and when it occurred."""
    capacity = Gpu.objects.filter(health=Gpu.Health.HEALTHY).count() * GPU_MILLI_PER_GPU
    deltas: list[tuple[datetime, int]] = []
    windows = Allocation.objects.filter(gpu_milli_total__gt=0).values_list("start_at", "end_at", "gpu_milli_total")
    for start_at, end_at, milli in windows.iterator(chunk_size=5000):
        if end_at > start_at:
            deltas.append((start_at, milli))
            deltas.append((end_at, -milli))
    if not capacity or not deltas:
        return 0.0, None

    deltas.sort(key=lambda item: (item[0], item[1]))
    running = peak = 0
    peak_at = None
    for at, delta in deltas:
        running += delta
        if running > peak:
            peak, peak_at = running, at
    return round(peak / capacity, 4), peak_at.isoformat() if peak_at else None

