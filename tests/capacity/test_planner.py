"""The pure planning rules: cover the service-level peak, retire only above the 95th percentile, trends."""

from decimal import Decimal

import numpy as np
import pytest

from capacity.planner import SERVICE_LEVELS, PlanInput, growth_factors, plan_line, trend_fit


def flat_input(capacity, levels, price=Decimal("2.00"), node_size=8):
    """A forecast whose quantile at each level is a flat line at the given value."""
    quantiles = {level: np.full(48, levels.get(level, levels[0.5])) for level in SERVICE_LEVELS}
    return PlanInput(key="s", label="S", unit="GPUs", capacity=capacity, quantiles=quantiles,
                     price_per_unit_hour=price, node_size=node_size, model_name="ets", model_mase=0.7)


def test_adds_units_for_service_level_peak():
    line = plan_line(flat_input(10, {0.5: 9.0, 0.9: 12.2, 0.95: 13.0}), service_level=0.9,
                     growth_pct_per_month=0, horizon_hours=48)

    assert (line.action, line.required, line.delta) == ("add", 13, 3)
    assert (line.delta_low, line.delta_high) == (-1, 3)
    assert line.monthly_cost == Decimal("4380.00")  # 3 GPUs x 2.00 x 730 h
    assert line.nodes_hint == "add about 1 node of 8 GPUs"
    assert "P90" in line.explanation
    assert "Add 3" in line.explanation


def test_retires_only_above_p95_peak():
    line = plan_line(flat_input(20, {0.5: 8.0, 0.9: 10.0, 0.95: 14.5}), service_level=0.9,
                     growth_pct_per_month=0, horizon_hours=48)

    assert (line.action, line.delta) == ("retire", -5)
    assert line.monthly_cost == Decimal("-7300.00")


def test_holds_between_service_level_and_95th_percentile():
    line = plan_line(flat_input(12, {0.5: 8.0, 0.9: 10.0, 0.95: 12.5}), service_level=0.9,
                     growth_pct_per_month=0, horizon_hours=48)

    assert (line.action, line.delta) == ("hold", 0)


def test_growth_assumption_raises_the_peak():
    flat = flat_input(10, {0.5: 9.0, 0.9: 10.0, 0.95: 11.0})
    without = plan_line(flat, service_level=0.9, growth_pct_per_month=0, horizon_hours=48)
    with_growth = plan_line(flat, service_level=0.9, growth_pct_per_month=100, horizon_hours=48)

    assert without.action == "hold"
    assert with_growth.peak_at_service_level > 10.0
    assert with_growth.action == "add"


def test_no_price_means_no_cost():
    line = plan_line(flat_input(1, {0.5: 3.0}, price=None), service_level=0.5, growth_pct_per_month=0,
                     horizon_hours=48)
    assert line.monthly_cost is None


def test_unknown_service_level_and_impossible_growth_are_refused():
    with pytest.raises(ValueError, match="not one of the stored levels"):
        plan_line(flat_input(1, {0.5: 1.0}), service_level=0.42, growth_pct_per_month=0, horizon_hours=4)
    with pytest.raises(ValueError, match="more than -100"):
        growth_factors(4, -100)


def test_trend_growth_with_interval():
    days = np.arange(28 * 24) / 24
    hourly = 100 * np.exp(0.01 * days) * (1 + 0.1 * np.sin(2 * np.pi * days))

    trend = trend_fit(hourly)

    assert trend.days == 28
    assert trend.weekly_pct == pytest.approx(7.25, abs=0.2)
    assert trend.monthly_low_pct <= trend.monthly_pct <= trend.monthly_high_pct


def test_trend_skips_incomplete_days():
    hourly = np.full(10 * 24, 50.0)
    hourly[30] = np.nan
    assert trend_fit(hourly).monthly_pct == 0.0

    hourly[24 * 4:24 * 8] = np.nan
    assert trend_fit(hourly) is None


def test_retire_capped_at_a_quarter():
    line = plan_line(flat_input(100, {0.5: 2.0, 0.9: 3.0, 0.95: 4.0}), service_level=0.9,
                     growth_pct_per_month=0, horizon_hours=48)

    assert (line.action, line.delta, line.amount) == ("retire", -25, 25)
    assert "96 more than" in line.explanation
    assert "retires 25 of them" in line.explanation


def test_single_gpu_nodes_read_in_the_singular():
    line = plan_line(flat_input(1, {0.5: 3.0}, node_size=1), service_level=0.5, growth_pct_per_month=0,
                     horizon_hours=48)
    assert line.nodes_hint == "add about 2 nodes of 1 GPU"
