"""Fitting and storing forecasts of the stored series, and the import of the shipped demand histories."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from capacity import forecasts
from capacity.forecasts import STORED_LEVELS, forecast_refresh, forecasts_refresh_all, series_history
from capacity.importing import demand_import
from capacity.models import DemandForecast, DemandPoint, DemandSeries
from capacity.tasks import rollup_demand_metrics_task

pytestmark = pytest.mark.django_db

HOUR = timedelta(hours=1)
START = datetime(2026, 5, 1, tzinfo=timezone.utc)


def seasonal_series(key="pool", days=12, gap=None):
    series = DemandSeries.objects.create(key=key, label=key, source=DemandSeries.Source.IMPORTED)
    steps = np.arange(days * 24)
    demand = 50 + 20 * np.sin(2 * np.pi * steps / 24) + np.random.default_rng(7).normal(0, 2, steps.size)
    DemandPoint.objects.bulk_create(
        DemandPoint(series=series, hour=START + int(step) * HOUR,
                    demand=None if gap and gap[0] <= step < gap[1] else float(value), capacity=80)
        for step, value in zip(steps, demand)
    )
    return series


def test_history_keeps_missing_hours_missing():
    series = seasonal_series(gap=(30, 34))
    hours, values = series_history(series, hours=48)

    assert len(hours) == len(values) == 48
    assert hours[-1] == START + (12 * 24 - 1) * HOUR

    _, early = series_history(series, hours=10, until=START + 34 * HOUR)
    assert np.isnan(early[-4:]).all()
    assert not np.isnan(early[:-4]).any()


def test_forecast_is_stored_with_every_level_in_order():
    series = seasonal_series(gap=(100, 104))

    forecast = forecast_refresh(series, horizon_hours=24)

    assert forecast.first_hour == START + 12 * 24 * HOUR
    assert forecast.status in ("ok", "gaps_filled")
    assert forecast.backtest_mase
    assert forecast.model_name
    levels = [np.array(forecast.quantiles[str(level)]) for level in STORED_LEVELS]
    assert all(len(values) == 24 for values in levels)
    assert all((lower <= upper + 1e-9).all() for lower, upper in zip(levels, levels[1:]))


def test_refresh_all_survives_failed_batch(monkeypatch):
    seasonal_series("pool-a", days=6)
    DemandSeries.objects.create(key="empty", label="empty", source=DemandSeries.Source.IMPORTED)

    def broken_batch(*args, **kwargs):
        raise RuntimeError("worker died")

    monkeypatch.setattr(forecasts, "forecast_many", broken_batch)
    outcome = forecasts_refresh_all(horizon_hours=12)

    assert set(outcome) == {"pool-a", "empty"}
    assert DemandForecast.objects.get(series__key="empty").status == "no_data"
    assert not any(value.startswith("error") for value in outcome.values())


def test_import_moves_series_to_now_idempotently():
    now = datetime(2026, 12, 5, 12, 30, tzinfo=timezone.utc)

    [summary] = demand_import(keys=["philly"], now=now)
    again = demand_import(keys=["philly"], now=now)[0]

    series = DemandSeries.objects.get(key="philly")
    assert summary == again
    assert series.points.count() == summary.hours == 1771
    last = series.points.order_by("-hour").first().hour
    assert now - timedelta(days=1) - timedelta(hours=1) <= last < now
    assert series.points.filter(demand__isnull=True).count() == summary.missing_hours > 0
    assert series.unit == "servers"
    assert series.price_per_unit_hour is None


def test_import_keeps_dates_when_asked():
    [summary] = demand_import(keys=["helios-vcpDC"], shift_to_now=False)
    assert summary.first_hour.startswith("2020-05-01")
    assert summary.shifted_days == 0
    outage = DemandSeries.objects.get(key="helios-vcpDC").points.filter(
        hour__gte=datetime(2020, 5, 10, tzinfo=timezone.utc), hour__lt=datetime(2020, 5, 11, tzinfo=timezone.utc))
    assert outage.count() == 24
    assert not outage.exclude(demand__isnull=True).exists()


def test_rollup_task_runs_twice_with_the_same_result(customer, region, now):
    first = rollup_demand_metrics_task.apply(kwargs={"lookback_hours": 6}).get()
    second = rollup_demand_metrics_task.apply(kwargs={"lookback_hours": 6}).get()
    assert first == second
