"""Capacity fixtures: a series with hourly history and a stored forecast, without fitting a model."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from capacity.forecasts import STORED_LEVELS
from capacity.models import DemandForecast, DemandPoint, DemandSeries

from ..factories import NodeFactory, gpu_model

HOUR = timedelta(hours=1)


def store_forecast(series, first_hour, levels, horizon=48, model="ets"):
    """Store a flat forecast: each quantile level maps to a constant, the point to the median."""
    quantiles = {str(level): [levels.get(level, levels[0.5])] * horizon for level in STORED_LEVELS}
    quantiles["point"] = [levels[0.5]] * horizon
    return DemandForecast.objects.create(
        series=series, first_hour=first_hour, horizon_hours=horizon, model_name=model, status="ok",
        backtest_mase={model: 0.71, "seasonal_naive": 1.0}, quantiles=quantiles, history_hours=240,
    )


@pytest.fixture
def planned_fleet(region):
    """Sixteen T4 GPUs at 1.50 an hour in eu-central, ten days of history, and a forecast needing 20 at P90."""
    for index in range(2):
        NodeFactory(hostname=f"t4-plan-{index}", gpu_count=8, region=region, gpu_model=gpu_model("T4"),
                    price_per_gpu_hour=Decimal("1.50"))
    series = DemandSeries.objects.create(key="market-t4-eu-central", label="T4 in eu-central",
                                         source=DemandSeries.Source.MARKETPLACE, gpu_model=gpu_model("T4"),
                                         region=region)
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    start = now - 240 * HOUR
    DemandPoint.objects.bulk_create(
        DemandPoint(series=series, hour=start + step * HOUR, demand=10 + (step % 24) / 4, allocated=10, capacity=16)
        for step in range(240)
    )
    forecast = store_forecast(series, now, {0.5: 14.0, 0.8: 17.0, 0.9: 19.5, 0.95: 21.0, 0.99: 25.0,
                                            0.025: 9.0, 0.1: 11.0, 0.975: 23.0})
    return series, forecast
