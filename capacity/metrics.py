"""Roll reservations and allocations up into hourly demand, allocation and capacity per GPU model and region.

Units are GPUs held during the hour: a whole GPU for the full hour counts 1.0, a 460-milli share
for half an hour counts 0.23. Demand is what customers requested, placed or not, so rejected and
waiting requests show as unmet demand. Allocation is what the marketplace reserved for them.

Attribution of a request to a series:

- placed: the GPU model and region of the node it runs on;
- not placed: the requested GPU models and region, spread over the (model, region) pairs that
  the request allowed in proportion to their capacity, so demand lands where capacity could be
  added; with no capacity anywhere, on the (model, any region) series, or (any model, any region);
- cancelled: only the part that held capacity, since the customer withdrew the rest.

Recomputing a range replaces its points in one transaction, so it is idempotent.
"""

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import numpy as np
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from allocation.models import Allocation, Reservation, ReservationStatus
from marketplace.models import GpuModel, Node, Region

from .models import DemandPoint, DemandSeries

logger = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
ROLLUP_CHUNK = timedelta(days=30)

SeriesKey = tuple[int | None, int | None]
"""(GPU model id, region id); ``None`` means any."""


@dataclass(frozen=True)
class RollupSummary:
    start: str
    end: str
    hours: int
    series: int
    points: int
    reservations: int
    """Reservations that overlap the range."""


def floor_hour(moment: datetime) -> datetime:
    """Return the start of the UTC hour that contains ``moment``; raise ``ValueError`` for a naive datetime."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment.isoformat()} has no UTC offset; pass an aware datetime, for example with tzinfo=UTC.")
    return moment.astimezone(dt_timezone.utc).replace(minute=0, second=0, microsecond=0)


def ceil_hour(moment: datetime) -> datetime:
    floored = floor_hour(moment)
    return floored if floored == moment else floored + HOUR


def metrics_rollup(*, start: datetime, end: datetime) -> RollupSummary:
    """Recompute the marketplace series' hourly points for the hours that overlap ``[start, end)``.

    Both ends are widened to whole UTC hours. Raises ``ValueError`` when ``end`` is not after
    ``start`` or either one is naive.
    """
    if end <= start:
        raise ValueError(f"The rollup range ends at {end.isoformat()}, not after its start {start.isoformat()}.")
    start, end = floor_hour(start), ceil_hour(end)
    hours = int((end - start) / HOUR)
    logger.info("Demand rollup started for %s to %s (%d hours)", start.isoformat(), end.isoformat(), hours)

    capacity = _capacity_now()
    demand: dict[SeriesKey, np.ndarray] = defaultdict(lambda: np.zeros(hours))
    allocated: dict[SeriesKey, np.ndarray] = defaultdict(lambda: np.zeros(hours))
    count = 0
    for reservation in _overlapping_reservations(start, end):
        count += 1
        allocation = getattr(reservation, "allocation", None)
        units = reservation.gpu_count * reservation.gpu_milli_per_gpu / 1000
        if allocation is not None:
            key = (allocation.gpu_model_id, allocation.node.region_id)
            held = allocation.gpu_milli_total / 1000
            _add_window(allocated[key], start, allocation.start_at, allocation.end_at, held)
            if reservation.status == ReservationStatus.CANCELLED:
                _add_window(demand[key], start, allocation.start_at, allocation.end_at, held)
            else:
                _add_window(demand[key], start, reservation.start_at, reservation.end_at, units)
            continue
        if reservation.status == ReservationStatus.CANCELLED:
            continue
        model_ids = [model.id for model in reservation.gpu_models.all()]
        for key, weight in _spread(model_ids, reservation.region_id, capacity):
            _add_window(demand[key], start, reservation.start_at, reservation.end_at, units * weight)

    keys = set(capacity) | {key for key, values in demand.items() if values.any()}
    series = _series_for(keys)
    points = [
        DemandPoint(
            series=series[key], hour=start + index * HOUR,
            demand=round(float(demand[key][index]) if key in demand else 0.0, 4),
            allocated=round(float(allocated[key][index]) if key in allocated else 0.0, 4),
            capacity=float(capacity.get(key, 0)),
        )
        for key in sorted(keys, key=_sort_key)
        for index in range(hours)
    ]
    with transaction.atomic():
        DemandPoint.objects.filter(series__source=DemandSeries.Source.MARKETPLACE, hour__gte=start,
                                   hour__lt=end).delete()
        DemandPoint.objects.bulk_create(points, batch_size=2000)

    summary = RollupSummary(start=start.isoformat(), end=end.isoformat(), hours=hours, series=len(keys),
                            points=len(points), reservations=count)
    logger.info("Demand rollup finished: %s", summary)
    return summary


def metrics_rollup_recent(*, now: datetime | None = None, lookback_hours: int) -> RollupSummary:
    """Recompute the last ``lookback_hours`` hours up to the end of the current hour."""
    now = now or timezone.now()
    return metrics_rollup(start=floor_hour(now) - lookback_hours * HOUR, end=floor_hour(now) + HOUR)


def metrics_rollup_all(*, now: datetime | None = None) -> RollupSummary | None:
    """Recompute every hour from the first reservation's start to the end of the current hour; ``None`` if none."""
    now = now or timezone.now()
    first = Reservation.objects.order_by("start_at").values_list("start_at", flat=True).first()
    if first is None:
        logger.info("Demand rollup skipped: there are no reservations yet")
        return None
    start, end = floor_hour(min(first, now)), floor_hour(now) + HOUR
    summary = None
    # Chunks of a month keep each transaction's memory bounded on a long history.
    chunk_start = start
    while chunk_start < end:
        chunk_end = min(chunk_start + ROLLUP_CHUNK, end)
        summary = _merge(summary, metrics_rollup(start=chunk_start, end=chunk_end))
        chunk_start = chunk_end
    # A reservation that spans two chunks counts in both, so the whole range is counted once more.
    return replace(summary, reservations=Reservation.objects.filter(start_at__lt=end, end_at__gt=start).count())


def _merge(total: RollupSummary | None, part: RollupSummary) -> RollupSummary:
    if total is None:
        return part
    return RollupSummary(start=total.start, end=part.end, hours=total.hours + part.hours,
                         series=max(total.series, part.series), points=total.points + part.points,
                         reservations=total.reservations + part.reservations)


def _overlapping_reservations(start: datetime, end: datetime):
    return (
        Reservation.objects.filter(start_at__lt=end, end_at__gt=start)
        .select_related("allocation__node")
        .prefetch_related("gpu_models")
        .only("id", "status", "gpu_count", "gpu_milli_per_gpu", "start_at", "end_at", "region_id",
              "allocation__id", "allocation__gpu_model_id", "allocation__start_at", "allocation__end_at",
              "allocation__gpu_milli_total", "allocation__node__id", "allocation__node__region_id")
        .order_by("id")
        .iterator(chunk_size=2000)
    )


def _capacity_now() -> dict[SeriesKey, int]:
    """Healthy GPUs on active nodes per (model, region).

    NOTE: the fleet's past size is not recorded, so every hour of a range gets today's capacity.
    """
    rows = (
        Node.objects.filter(status=Node.Status.ACTIVE)
        .values("gpu_model_id", "region_id")
        .annotate(gpus=Count("gpus", filter=Q(gpus__health="healthy")))
    )
    return {(row["gpu_model_id"], row["region_id"]): row["gpus"] for row in rows if row["gpus"]}


def _spread(model_ids: list[int], region_id: int | None, capacity: dict[SeriesKey, int]) -> list[tuple[SeriesKey, float]]:
    """Split one unplaced request over the series it allowed, in proportion to their capacity."""
    allowed = [
        (key, gpus) for key, gpus in capacity.items()
        if (not model_ids or key[0] in model_ids) and (region_id is None or key[1] == region_id)
    ]
    total = sum(gpus for _, gpus in allowed)
    if total:
        return [(key, gpus / total) for key, gpus in allowed]
    if model_ids:
        return [((model_id, region_id), 1 / len(model_ids)) for model_id in model_ids]
    return [((None, region_id), 1.0)]


def _add_window(values: np.ndarray, origin: datetime, start_at: datetime, end_at: datetime, units: float) -> None:
    """Add ``units`` to each hour of ``values`` in proportion to how much of it ``[start_at, end_at)`` covers."""
    low = max((start_at - origin) / HOUR, 0.0)
    high = min((end_at - origin) / HOUR, float(len(values)))
    if high <= low:
        return
    first, last = int(low), math.ceil(high) - 1
    if first == last:
        values[first] += units * (high - low)
        return
    values[first] += units * (first + 1 - low)
    values[first + 1:last] += units
    values[last] += units * (high - last)


def _series_for(keys: set[SeriesKey]) -> dict[SeriesKey, DemandSeries]:
    models = {model.id: model for model in GpuModel.objects.all()}
    regions = {region.id: region for region in Region.objects.all()}
    found = {}
    for model_id, region_id in keys:
        model, region = models.get(model_id), regions.get(region_id)
        model_name = model.name if model else "any model"
        region_code = region.code if region else "any region"
        # The key uses ids, not names: two model names may differ only in case, and a renamed
        # model must keep its history. The label follows the current names.
        series, created = DemandSeries.objects.update_or_create(
            key=f"market-model{model_id or '-any'}-region{region_id or '-any'}",
            defaults={
                "label": f"{model_name} in {region_code}", "source": DemandSeries.Source.MARKETPLACE,
                "gpu_model": model, "region": region, "unit": "GPUs",
            },
        )
        if created:
            logger.info("Created demand series %s", series.key)
        found[(model_id, region_id)] = series
    return found


def _sort_key(key: SeriesKey) -> tuple[int, int]:
    return (key[0] or 0, key[1] or 0)
