"""Model selection, intervals, quantiles and the fleet helper on synthetic seasonal series."""

import logging
import warnings

import numpy as np
import pytest

from capacity.forecasting import MODEL_NAMES, forecast_many, forecast_series
from capacity.forecasting.backtest import BacktestOutcome, BacktestPlan
from capacity.forecasting.models import Theta
from capacity.forecasting.result import small_sample_factor
from capacity.forecasting.selection import held_out_selection_errors

from . import assert_valid_result, daily_demand

HORIZON = 24


@pytest.fixture(scope="module")
def seasonal_result():
    return forecast_series(daily_demand(14), horizon=HORIZON)


def test_seasonal_series_is_fitted(seasonal_result):
    assert seasonal_result.status == "ok"
    assert seasonal_result.model in MODEL_NAMES
    assert_valid_result(seasonal_result, HORIZON)


def test_backtest_scores_every_candidate(seasonal_result):
    # Two weeks are too short for ets_weekly, which needs two whole weeks before every origin.
    expected = set(MODEL_NAMES) - {"ets_weekly"}

    assert set(seasonal_result.backtest_mase) == expected
    assert all(np.isfinite(score) for score in seasonal_result.backtest_mase.values())


def test_selection_matches_or_beats_seasonal_naive(seasonal_result):
    scores = seasonal_result.backtest_mase

    assert scores[seasonal_result.model] <= scores["seasonal_naive"]


def test_selected_model_beats_naive_on_held_out_day():
    values = daily_demand(15, seed=11)
    history, actual = values[:-HORIZON], values[-HORIZON:]

    result = forecast_series(history, horizon=HORIZON)

    naive = np.resize(history[-24:], HORIZON)
    assert np.mean(np.abs(actual - result.point)) <= np.mean(np.abs(actual - naive))


def test_95_interval_covers_most_held_out_hours():
    values = daily_demand(15, seed=3)
    history, actual = values[:-HORIZON], values[-HORIZON:]

    result = forecast_series(history, horizon=HORIZON)

    inside = (actual >= result.lower_95) & (actual <= result.upper_95)
    assert inside.mean() >= 0.8


def test_quantile_is_monotone_in_level(seasonal_result):
    levels = np.linspace(0.01, 0.99, 99)
    quantiles = np.array([seasonal_result.quantile(level) for level in levels])

    assert np.all(np.diff(quantiles, axis=0) >= 0)
    assert np.all(quantiles >= 0)


def test_quantile_matches_bands(seasonal_result):
    assert np.array_equal(seasonal_result.quantile(0.1), seasonal_result.lower_80)
    assert np.array_equal(seasonal_result.quantile(0.9), seasonal_result.upper_80)
    assert np.array_equal(seasonal_result.quantile(0.025), seasonal_result.lower_95)
    assert np.array_equal(seasonal_result.quantile(0.975), seasonal_result.upper_95)


@pytest.mark.parametrize("level", [0.0, 1.0, -0.5, 1.5])
def test_quantile_rejects_level_outside_unit_interval(seasonal_result, level):
    with pytest.raises(ValueError, match="between 0 and 1"):
        seasonal_result.quantile(level)


def test_small_sample_factor_widens_tails():
    assert small_sample_factor(0.975, 0) == 1.0
    assert small_sample_factor(0.975, 10) > small_sample_factor(0.9, 10) > 1.0
    assert small_sample_factor(0.975, 10) > small_sample_factor(0.975, 20)
    assert small_sample_factor(0.025, 10) == small_sample_factor(0.975, 10)


def test_failing_model_is_dropped(monkeypatch, caplog):
    def broken_predict(self, y, origin, steps, *, refit=True):
        raise RuntimeError("simulated fit failure")

    monkeypatch.setattr(Theta, "predict", broken_predict)

    with caplog.at_level(logging.WARNING, logger="capacity.forecasting"):
        result = forecast_series(daily_demand(14), horizon=HORIZON)

    assert "theta" not in result.backtest_mase
    assert "Dropped after a failed fit: theta." in result.message
    assert "simulated fit failure" in caplog.text
    assert_valid_result(result, HORIZON)


def test_candidates_limit_selection():
    result = forecast_series(daily_demand(14), horizon=HORIZON, candidates=["theta"])

    assert set(result.backtest_mase) == {"seasonal_naive", "theta"}
    assert result.model in {"seasonal_naive", "theta"}


def test_statsmodels_warnings_are_not_emitted():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        forecast_series(daily_demand(14, noise=20.0), horizon=HORIZON)

    assert [str(warning.message) for warning in caught] == []


def test_long_horizon_extrapolates_interval_widths():
    result = forecast_series(daily_demand(14), horizon=240, max_train_hours=24 * 10)

    assert_valid_result(result, 240)
    assert "extrapolated" in result.message
    assert result.upper_95[-1] - result.lower_95[-1] >= result.upper_95[0] - result.lower_95[0]


def test_forecast_many_matches_serial_run():
    fleet = [daily_demand(9, seed=seed) for seed in range(3)] + [np.zeros(48)]

    parallel = forecast_many(fleet, horizon=HORIZON, workers=2)
    serial = forecast_many(fleet, horizon=HORIZON, workers=1)

    assert [result.status for result in parallel] == ["ok", "ok", "ok", "all_zero"]
    for left, right in zip(parallel, serial):
        assert left.model == right.model
        assert np.array_equal(left.point, right.point)
        assert np.array_equal(left.upper_95, right.upper_95)


def _outcome_with_errors(errors_by_model: dict[str, list[float]]) -> BacktestOutcome:
    """Return a backtest outcome of one-hour windows whose actuals are 0 and whose errors are the given values."""
    origins = len(next(iter(errors_by_model.values())))
    plan = BacktestPlan(origins=tuple(range(100, 100 + origins)), window=1)
    outcome = BacktestOutcome(plan=plan, actuals=np.zeros((origins, 1)), scales=np.ones(origins))
    for name, errors in errors_by_model.items():
        outcome.forecasts[name] = -np.array(errors, dtype=float).reshape(origins, 1)
    return outcome


def test_held_out_errors_per_origin():
    # theta wins overall only because of its tiny error at origin 0; without origin 0 sarimax wins.
    outcome = _outcome_with_errors({
        "seasonal_naive": [5.0, 5.0, 5.0],
        "sarimax": [2.0, 2.0, 2.0],
        "theta": [0.0, 2.5, 2.5],
    })

    errors = held_out_selection_errors(outcome)

    assert errors[:, 0].tolist() == [2.0, 2.5, 2.5]


def test_held_out_errors_single_origin():
    outcome = _outcome_with_errors({"seasonal_naive": [5.0], "theta": [1.0]})

    errors = held_out_selection_errors(outcome)

    assert errors[:, 0].tolist() == [1.0]
