"""Fit and store a forecast for every demand series; the capacity plans read the stored forecasts."""

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from .forecasting import ForecastResult, forecast_many, forecast_series
from .models import DemandForecast, DemandPoint, DemandSeries
from .planner import SERVICE_LEVELS

logger = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
CHART_LEVELS = (0.025, 0.1, 0.9, 0.975)
"""Bounds of the 80 % and 95 % intervals, stored beside the service levels for the charts."""
STORED_LEVELS = tuple(sorted(set(SERVICE_LEVELS) | set(CHART_LEVELS)))


def series_history(series: DemandSeries, *, hours: int, until: datetime | None = None) -> tuple[list[datetime], np.ndarray]:
    """Return the last ``hours`` hourly demand values of ``series`` (NaN where missing) and their hours.

    The history ends at the last stored hour, or before ``until`` when given; hours without a
    point inside that span are missing (NaN), not zero.
    """
    points = DemandPoint.objects.filter(series=series)
    if until is not None:
        points = points.filter(hour__lt=until)
    last = points.order_by("-hour").values_list("hour", flat=True).first()
    if last is None:
        return [], np.array([], dtype=float)
    first = last - (hours - 1) * HOUR
    stored = dict(points.filter(hour__gte=first).values_list("hour", "demand"))
    index = [first + step * HOUR for step in range(hours)]
    values = np.array([np.nan if stored.get(hour) is None else stored[hour] for hour in index], dtype=float)
    start = int(np.argmax(~np.isnan(values))) if (~np.isnan(values)).any() else len(values)
    return index[start:], values[start:]


def forecast_refresh(series: DemandSeries, *, horizon_hours: int | None = None,
                     history_hours: int | None = None) -> DemandForecast:
    """Fit ``series`` on its recent history and store the forecast; earlier forecasts are kept."""
    horizon_hours = horizon_hours or settings.MARKETPLACE["FORECAST_HORIZON_HOURS"]
    hours, values = series_history(series, hours=history_hours or settings.MARKETPLACE["FORECAST_HISTORY_HOURS"])
    return _store(series, hours, values, forecast_series(values, horizon=horizon_hours), horizon_hours)


def forecasts_refresh_all(*, horizon_hours: int | None = None,
                          on_progress: Callable[[int, int], None] | None = None) -> dict[str, str]:
    """Refresh the forecast of every series, in parallel processes where allowed, and return the model per key.

    If the batch fails, each series is fitted on its own. A series whose fit fails keeps its last
    forecast, and its entry in the result starts with "error". ``on_progress(done, total)`` is
    called as series are fitted; after a failed batch the count starts again from 0.
    """
    horizon_hours = horizon_hours or settings.MARKETPLACE["FORECAST_HORIZON_HOURS"]
    history_hours = settings.MARKETPLACE["FORECAST_HISTORY_HOURS"]
    series_list = list(DemandSeries.objects.order_by("key"))
    histories = [series_history(series, hours=history_hours) for series in series_list]
    logger.info("Forecast refresh started for %d series", len(series_list))

    try:
        results = forecast_many([values for _, values in histories], horizon=horizon_hours, on_progress=on_progress)
    except Exception:  # A crash in the batch must not cost every series its forecast; retried one by one below.
        logger.exception("Forecasting the %d series as one batch failed; fitting them one by one", len(series_list))
        results = [None] * len(series_list)

    outcome = {}
    for done, (series, (hours, values), result) in enumerate(zip(series_list, histories, results), start=1):
        fitted_here = result is None
        try:
            if fitted_here:
                result = forecast_series(values, horizon=horizon_hours)
            with transaction.atomic():
                outcome[series.key] = _store(series, hours, values, result, horizon_hours).model_name
        except Exception as error:  # One broken series must not stop the others; it is logged with its trace.
            logger.exception("Forecast of %s failed; its previous forecast stays in use", series.key)
            outcome[series.key] = f"error: {error}"
        if fitted_here and on_progress is not None:
            on_progress(done, len(series_list))
    logger.info("Forecast refresh finished: %s", outcome)
    forecasts_purge()
    return outcome


def _store(series: DemandSeries, hours: list[datetime], values: np.ndarray, result: ForecastResult,
           horizon_hours: int) -> DemandForecast:
    if result.status != "ok":
        logger.info("Forecast of %s: %s (%s)", series.key, result.status, result.message)
    quantiles = {str(level): np.round(result.quantile(level), 3).tolist() for level in STORED_LEVELS}
    quantiles["point"] = np.round(result.point, 3).tolist()
    forecast = DemandForecast.objects.create(
        series=series, first_hour=hours[-1] + HOUR if hours else _next_hour_without_history(),
        horizon_hours=horizon_hours, model_name=result.model, status=result.status, message=result.message[:500],
        backtest_mase={name: round(float(value), 4) for name, value in result.backtest_mase.items()
                       if np.isfinite(value)},
        quantiles=quantiles, history_hours=len(values),
    )
    logger.info("Forecast of %s stored: model %s, %d hours of history, %d ahead", series.key, result.model,
                len(values), horizon_hours)
    return forecast


def latest_forecasts() -> dict[int, DemandForecast]:
    """Return the newest forecast of each series, by series id, in one query whatever the history kept."""
    newest_ids = DemandForecast.objects.values("series_id").annotate(newest=Max("id")).values("newest")
    return {forecast.series_id: forecast for forecast in DemandForecast.objects.filter(id__in=newest_ids)}


def forecasts_purge(*, keep_days: int | None = None, now: datetime | None = None) -> int:
    """Delete forecasts older than ``keep_days`` days, except each series' newest; return how many.

    Plan lines that pointed at a deleted forecast keep their figures and lose only the link.
    """
    keep_days = keep_days or settings.MARKETPLACE["FORECAST_RETENTION_DAYS"]
    cutoff = (now or timezone.now()) - timedelta(days=keep_days)
    newest_ids = DemandForecast.objects.values("series_id").annotate(newest=Max("id")).values("newest")
    deleted, _ = DemandForecast.objects.filter(created_at__lt=cutoff).exclude(id__in=newest_ids).delete()
    logger.info("Deleted %d forecasts older than %d days", deleted, keep_days)
    return deleted


def _next_hour_without_history() -> datetime:
    return timezone.now().replace(minute=0, second=0, microsecond=0) + HOUR
