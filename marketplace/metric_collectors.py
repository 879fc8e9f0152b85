"""Gauges read from the database and Redis when Prometheus scrapes ``/metrics``.

Each reader runs one aggregate statement (or one Redis command), so a scrape costs the same
however many reservations, GPUs or heartbeats there are. A reader whose database or Redis call
fails is skipped: the scrape still returns every other metric, and
``marketplace_metrics_collector_up{collector}`` is 0 for that reader (1 when it worked).
"""

import logging
import math
from collections.abc import Callable, Iterator

from django.db import DatabaseError, connection
from django.db.models import Count, Max
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from redis.exceptions import RedisError

from allocation.lifecycle import TERMINAL_STATUSES
from allocation.models import GpuShare, Reservation, ReservationStatus
from capacity.models import DemandForecast
from marketplace.models import GPU_MILLI_PER_GPU, Gpu, GpuModel, MaintenanceWindow, Node
from providers import heartbeat_queue
from scheduler.models import PriorityClass, Queue, Workload

logger = logging.getLogger(__name__)

LIVE_STATUSES = tuple(status.value for status in ReservationStatus if status not in TERMINAL_STATUSES)
"""Statuses counted by ``marketplace_reservations``. Final statuses grow without bound and are left out."""


def reservations_by_status() -> Iterator[GaugeMetricFamily]:
    """Yield the number of reservations in each non-final status, 0 included."""
    counts = dict(Reservation.objects.filter(status__in=LIVE_STATUSES).order_by()
                  .values_list("status").annotate(count=Count("pk")).values_list("status", "count"))
    family = GaugeMetricFamily(
        "marketplace_reservations",
        "Reservations in each non-final status (pending, pending_approval, queued, scheduled, active), "
        "read from the database at scrape time.",
        labels=["status"],
    )
    for status in LIVE_STATUSES:
        family.add_metric([status], counts.get(status, 0))
    yield family


def queue_waiting() -> Iterator[GaugeMetricFamily]:
    """Yield the queued reservations per scheduler queue and priority class, 0 for every empty pair."""
    sql = f"""
        SELECT q.name, p.name, COALESCE(c.waiting, 0)
        FROM {_table(Queue)} q
        CROSS JOIN {_table(PriorityClass)} p
        LEFT JOIN (
            SELECT w.queue_id, w.priority_class_id, COUNT(*) AS waiting
            FROM {_table(Workload)} w
            JOIN {_table(Reservation)} r ON r.id = w.reservation_id
            WHERE r.status = %s
            GROUP BY w.queue_id, w.priority_class_id
        ) c ON c.queue_id = q.id AND c.priority_class_id = p.id
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [ReservationStatus.QUEUED.value])
        rows = cursor.fetchall()
    family = GaugeMetricFamily(
        "marketplace_queue_waiting_reservations",
        "Queued reservations waiting for the scheduling cycle, by queue and priority class.",
        labels=["queue", "priority_class"],
    )
    for queue, priority_class, waiting in rows:
        family.add_metric([queue, priority_class], waiting)
    yield family


def gpu_allocation() -> Iterator[GaugeMetricFamily]:
    """Yield bookable and allocated GPU milli per GPU model now, and their ratio.

    A GPU is bookable under the placement rules: healthy, on an active node that is not in a
    maintenance window now. Allocated milli are the GPU shares on bookable GPUs whose window
    contains now, so the ratio stays within [0, 1]. Models without bookable GPUs report 0 milli
    and no ratio.
    """
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    sql = f"""
        SELECT m.name, COUNT(g.id), COALESCE(SUM(u.milli), 0)
        FROM {_table(GpuModel)} m
        LEFT JOIN {_table(Node)} n ON n.gpu_model_id = m.id AND n.status = %s
            AND NOT EXISTS (SELECT 1 FROM {_table(MaintenanceWindow)} mw
                            WHERE mw.node_id = n.id AND mw.start_at <= %s AND mw.end_at > %s)
        LEFT JOIN {_table(Gpu)} g ON g.node_id = n.id AND g.health = %s
        LEFT JOIN (
            SELECT s.gpu_id, SUM(s.gpu_milli) AS milli
            FROM {_table(GpuShare)} s
            WHERE s.start_at <= %s AND s.end_at > %s
            GROUP BY s.gpu_id
        ) u ON u.gpu_id = g.id
        GROUP BY m.name
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [Node.Status.ACTIVE.value, now, now, Gpu.Health.HEALTHY.value, now, now])
        rows = cursor.fetchall()
    bookable = GaugeMetricFamily(
        "marketplace_gpu_bookable_milli",
        "GPU milli that placement may use now (healthy GPUs on active nodes outside maintenance), "
        "by GPU model; 1000 milli is one GPU.",
        labels=["gpu_model"],
    )
    allocated = GaugeMetricFamily(
        "marketplace_gpu_allocated_milli",
        "GPU milli of bookable GPUs held by allocations whose window contains now, by GPU model.",
        labels=["gpu_model"],
    )
    ratio = GaugeMetricFamily(
        "marketplace_gpu_allocation_ratio",
        "marketplace_gpu_allocated_milli divided by marketplace_gpu_bookable_milli, by GPU model "
        "(0 to 1); absent for models without bookable GPUs.",
        labels=["gpu_model"],
    )
    for model_name, gpus, allocated_milli in rows:
        bookable_milli = int(gpus) * GPU_MILLI_PER_GPU
        bookable.add_metric([model_name], bookable_milli)
        allocated.add_metric([model_name], int(allocated_milli))
        if bookable_milli:
            ratio.add_metric([model_name], int(allocated_milli) / bookable_milli)
    yield from (bookable, allocated, ratio)


def forecast_accuracy() -> Iterator[GaugeMetricFamily]:
    """Yield each demand series' newest forecast: its selected model's backtest MASE and its age.

    MASE is the backtest's mean absolute error divided by the mean absolute seasonal difference
    of the training window, so 1 is the in-sample seasonal naive forecast's error. Forecasts
    without a backtest (constant, all-zero or too short histories) report no MASE.
    """
    newest_ids = DemandForecast.objects.order_by().values("series_id").annotate(newest=Max("id")).values("newest")
    rows = (DemandForecast.objects.filter(id__in=newest_ids).order_by()
            .values_list("series__key", "model_name", "backtest_mase", "created_at"))
    mase = GaugeMetricFamily(
        "marketplace_forecast_backtest_mase",
        "Backtest MASE of the model selected for the newest demand forecast of each series "
        "(lower is better; 1 is the in-sample seasonal naive error).",
        labels=["series", "model"],
    )
    created = GaugeMetricFamily(
        "marketplace_forecast_created_timestamp_seconds",
        "Unix time at which the newest demand forecast of each series was stored.",
        labels=["series"],
    )
    for key, model_name, backtest_mase, created_at in rows:
        score = (backtest_mase or {}).get(model_name)
        if isinstance(score, (int, float)) and math.isfinite(score):
            mase.add_metric([key, model_name], float(score))
        created.add_metric([key], created_at.timestamp())
    yield from (mase, created)


def heartbeat_queue_length() -> Iterator[GaugeMetricFamily]:
    """Yield the heartbeats waiting in the Redis list; nothing when the heartbeat queue is off."""
    if not heartbeat_queue.queue_enabled():
        return
    family = GaugeMetricFamily(
        "marketplace_heartbeat_queue_length",
        "Agent heartbeats waiting in Redis for providers.ingest_heartbeats.",
    )
    family.add_metric([], heartbeat_queue.queue_length())
    yield family


READERS: dict[str, Callable[[], Iterator[GaugeMetricFamily]]] = {
    "reservations": reservations_by_status,
    "queue": queue_waiting,
    "gpu_allocation": gpu_allocation,
    "forecasts": forecast_accuracy,
    "heartbeat_queue": heartbeat_queue_length,
}


class DomainCollector:
    """Run every reader at scrape time; a reader whose database or Redis call fails is logged and skipped.

    A failure is logged once when a reader starts failing and once when it recovers, so an
    outage scraped every few seconds does not flood the logs. The state is per process.
    """

    def __init__(self) -> None:
        self._failing: set[str] = set()

    # NOTE: a database or Redis server that refuses connections fails fast, but one that accepts and
    # then hangs stalls the scrape: neither client here sets a connect or socket timeout.
    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "marketplace_metrics_collector_up",
            "1 when the named scrape-time reader returned its gauges, 0 when its database or Redis call failed.",
            labels=["collector"],
        )
        for name, read in READERS.items():
            try:
                families = list(read())
            except (DatabaseError, RedisError) as error:
                if name not in self._failing:
                    logger.warning("Metrics reader %s failed and is skipped until it recovers: %s: %s",
                                   name, type(error).__name__, error)
                self._failing.add(name)
                up.add_metric([name], 0)
                continue
            if name in self._failing:
                logger.info("Metrics reader %s recovered", name)
                self._failing.discard(name)
            up.add_metric([name], 1)
            yield from families
        yield up


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)

