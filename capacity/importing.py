"""Load the demand histories shipped under ``data/`` (Helios, Philly) as imported demand series."""

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from statistics import median

import pandas as pd
from django.db import transaction
from django.utils import timezone

from marketplace.models import Node

from .demand_files import DATASETS, DemandDataset
from .forecasts import forecast_refresh
from .models import DemandPoint, DemandSeries

logger = logging.getLogger(__name__)

DAY = timedelta(days=1)


@dataclass(frozen=True)
class ImportSummary:
    key: str
    hours: int
    missing_hours: int
    first_hour: str
    last_hour: str
    shifted_days: int
    forecast_model: str = ""


def demand_import(*, shift_to_now: bool = True, forecast: bool = False, now: datetime | None = None,
                  keys: list[str] | None = None) -> list[ImportSummary]:
    """Replace the points of each shipped series (all, or ``keys``) with the file's hours.

    With ``shift_to_now`` the hours move forward by whole days, so that each series ends in the
    day before ``now`` and keeps its hour-of-day pattern. Plans then look ahead from today.
    The weekday pattern moves with the shift. Missing and outage hours are stored with ``demand`` empty, never as zero.
    GPU series are priced at the median price per GPU-hour of the marketplace's active nodes,
    the best guess of what added capacity would cost; server series have no price.
    """
    now = now or timezone.now()
    price = _median_gpu_price()
    summaries = []
    for key in keys or list(DATASETS):
        dataset = DATASETS[key]
        summary = _import_one(dataset, shift_to_now=shift_to_now, now=now, price=price)
        if forecast:
            series = DemandSeries.objects.get(key=dataset.key)
            summary = ImportSummary(**{**summary.__dict__, "forecast_model": forecast_refresh(series).model_name})
        summaries.append(summary)
    return summaries


def _import_one(dataset: DemandDataset, *, shift_to_now: bool, now: datetime, price: Decimal | None) -> ImportSummary:
    logger.info("Importing demand series %s from %s", dataset.key, dataset.path)
    demand, capacity = dataset.load(), dataset.load_capacity().reindex(dataset.load().index)
    shift = timedelta(0)
    if shift_to_now:
        last = demand.index[-1].to_pydatetime()
        latest_allowed = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        shift = math.floor((latest_allowed - last) / DAY) * DAY

    with transaction.atomic():
        series, _ = DemandSeries.objects.update_or_create(
            key=dataset.key,
            defaults={
                "label": dataset.label, "source": DemandSeries.Source.IMPORTED, "unit": dataset.unit,
                "price_per_unit_hour": price if dataset.unit == "GPUs" else None,
                "description": f"Imported from {dataset.path.relative_to(dataset.path.parents[2])}"
                               + (f", moved {shift.days} days forward" if shift else ""),
            },
        )
        series.points.all().delete()
        DemandPoint.objects.bulk_create(
            (
                DemandPoint(series=series, hour=hour.to_pydatetime() + shift, demand=_value(value),
                            capacity=_value(capacity.get(hour)))
                for hour, value in demand.items()
            ),
            batch_size=2000,
        )

    summary = ImportSummary(
        key=dataset.key, hours=len(demand), missing_hours=int(demand.isna().sum()),
        first_hour=(demand.index[0].to_pydatetime() + shift).isoformat(),
        last_hour=(demand.index[-1].to_pydatetime() + shift).isoformat(), shifted_days=shift.days,
    )
    logger.info("Imported demand series %s: %s", dataset.key, summary)
    return summary


def _value(value) -> float | None:
    return None if value is None or pd.isna(value) else max(float(value), 0.0)


def _median_gpu_price() -> Decimal | None:
    prices = list(Node.objects.filter(status=Node.Status.ACTIVE).values_list("price_per_gpu_hour", flat=True))
    return Decimal(str(median(prices))).quantize(Decimal("0.0001")) if prices else None
