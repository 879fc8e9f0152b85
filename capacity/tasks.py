"""Celery tasks of the capacity app; each one is thin, safe to run twice, and calls a service."""

import logging
from dataclasses import asdict

from celery import shared_task
from django.conf import settings

from task_runs.models import TaskRun
from task_runs.progress import track

from .forecasts import forecasts_refresh_all
from .metrics import metrics_rollup_recent

logger = logging.getLogger(__name__)


@shared_task(name="capacity.rollup_demand_metrics", acks_late=True)
def rollup_demand_metrics_task(lookback_hours: int | None = None) -> dict:
    """Recompute the marketplace's hourly demand series for the recent hours; idempotent."""
    lookback = lookback_hours or settings.MARKETPLACE["DEMAND_ROLLUP_LOOKBACK_HOURS"]
    logger.info("Demand rollup task started: last %d hours", lookback)
    return asdict(metrics_rollup_recent(lookback_hours=lookback))


@shared_task(name="capacity.refresh_forecasts", acks_late=True, bind=True)
def refresh_capacity_forecasts_task(self) -> dict[str, str]:
    """Roll up the recent hours, then fit and store a new forecast for every series.

    Progress counts the series fitted. Running it twice stores two forecasts of the same data;
    plans read the newest.
    """
    logger.info("Forecast refresh task started")
    with track(self, TaskRun.Kind.FORECASTS, unit="series") as progress:
        progress.advance(0, message="Rolling up the recent hours of demand")
        metrics_rollup_recent(lookback_hours=settings.MARKETPLACE["DEMAND_ROLLUP_LOOKBACK_HOURS"])
        outcome = forecasts_refresh_all(
            on_progress=lambda done, total: progress.advance(done, total, message="Fitting forecasts"))
        failed = sum(model.startswith("error") for model in outcome.values())
        message = f"{len(outcome) - failed} forecasts stored" + (f", {failed} failed." if failed else ".")
        return progress.finish(outcome, message=message)
