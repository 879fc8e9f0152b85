"""forecast_series on empty, degenerate, gappy and invalid histories: a status and a valid result, never a crash."""

import numpy as np
import pytest

from capacity.forecasting import forecast_series

from . import assert_valid_result, daily_demand

HORIZON = 24


@pytest.mark.parametrize("values", [[], [np.nan] * 50, [np.inf, -np.inf, np.nan]], ids=["empty", "all_nan", "all_inf"])
def test_no_data_gives_zero_forecast(values):
    result = forecast_series(values, horizon=HORIZON)

    assert result.status == "no_data"
    assert_valid_result(result, HORIZON)
    assert np.all(result.point == 0)
    assert result.backtest_mase == {}


def test_all_zero_history():
    values = np.zeros(24 * 10)
    values[5] = np.nan

    result = forecast_series(values, horizon=HORIZON)

    assert result.status == "all_zero"
    assert_valid_result(result, HORIZON)
    assert np.all(result.upper_95 == 0)


def test_constant_history_repeats_value():
    result = forecast_series(np.full(24 * 10, 42.0), horizon=HORIZON)

    assert result.status == "constant"
    assert result.model == "last_value"
    assert_valid_result(result, HORIZON)
    assert np.all(result.point == 42.0)


def test_short_history_uses_mean():
    values = daily_demand(2)[:30]

    result = forecast_series(values, horizon=HORIZON)

    assert result.status == "short_history"
    assert result.model == "mean"
    assert_valid_result(result, HORIZON)
    assert np.allclose(result.point, values.mean())
    assert np.all(result.upper_95 > result.point)
    assert "30" in result.message


def test_single_observed_hour_is_short_history():
    result = forecast_series([np.nan, 12.0], horizon=HORIZON)

    assert result.status == "short_history"
    assert_valid_result(result, HORIZON)
    assert np.allclose(result.point, 12.0)


def test_mostly_missing_history_is_short_history():
    values = daily_demand(10)
    values[::3] = np.nan
    values[1::3] = np.nan

    result = forecast_series(values, horizon=HORIZON)

    assert result.status == "short_history"
    assert "missing" in result.message
    assert_valid_result(result, HORIZON)


def test_gaps_are_filled_and_counted():
    values = daily_demand(10)
    values[100:109] = np.nan

    result = forecast_series(values, horizon=HORIZON)

    assert result.status == "gaps_filled"
    assert "9 missing hours were filled from the same hour one day earlier." in result.message
    assert_valid_result(result, HORIZON)


def test_trailing_gap_is_filled():
    values = daily_demand(10)
    values[-5:] = np.nan

    result = forecast_series(values, horizon=HORIZON)

    assert result.status == "gaps_filled"
    assert_valid_result(result, HORIZON)


def test_leading_missing_hours_are_not_gaps():
    values = np.concatenate([np.full(30, np.nan), daily_demand(10)])

    result = forecast_series(values, horizon=HORIZON)

    assert result.status == "ok"
    assert_valid_result(result, HORIZON)


def test_infinite_values_count_as_missing():
    values = daily_demand(10)
    values[50] = np.inf
    values[60] = -np.inf

    result = forecast_series(values, horizon=HORIZON)

    assert result.status == "gaps_filled"
    assert "2 infinite values were treated as missing hours." in result.message
    assert_valid_result(result, HORIZON)


def test_negative_values_are_clipped():
    values = daily_demand(10, level=10.0, amplitude=30.0)

    result = forecast_series(values, horizon=HORIZON)

    clipped = int((values < 0).sum())
    assert clipped > 0
    assert f"{clipped} negative values were clipped to 0." in result.message
    assert_valid_result(result, HORIZON)


def test_none_counts_as_missing():
    values = list(daily_demand(10))
    values[40] = None

    result = forecast_series(values, horizon=HORIZON)

    assert result.status == "gaps_filled"
    assert_valid_result(result, HORIZON)


@pytest.mark.parametrize("arguments", [
    {"horizon": 0}, {"horizon": 2.5}, {"season": 1}, {"candidates": ["prophet"]}, {"max_train_hours": 10},
], ids=["zero_horizon", "fractional_horizon", "season_one", "unknown_model", "tiny_training_window"])
def test_invalid_arguments_raise(arguments):
    with pytest.raises(ValueError):
        forecast_series(daily_demand(5), **arguments)


def test_two_dimensional_input_raises():
    with pytest.raises(ValueError, match="1-D"):
        forecast_series(np.ones((10, 10)), horizon=HORIZON)


def test_text_input_raises():
    with pytest.raises(ValueError, match="invalid"):
        forecast_series(["high", "low"], horizon=HORIZON)


def test_nearly_empty_history_gets_the_mean_quickly():
    values = np.zeros(24 * 50)
    values[[100, 700]] = [0.05, 0.02]

    result = forecast_series(values, horizon=168)

    assert result.status == "short_history"
    assert result.model == "mean"
    assert "2 of 1200 observed hours" in result.message
    assert_valid_result(result, 168)


def test_missing_recent_days_widen_to_the_mean():
    values = 50 + 10 * np.sin(2 * np.pi * np.arange(1000) / 24)
    values[-300:] = np.nan

    result = forecast_series(values, horizon=24)

    assert result.status == "short_history"
    assert "last 300 hours are missing" in result.message
    assert np.all(result.quantile(0.99) > result.point)
    assert_valid_result(result, 24)


def test_boolean_horizon_is_rejected():
    with pytest.raises(ValueError, match="horizon"):
        forecast_series(np.ones(100), horizon=True)
