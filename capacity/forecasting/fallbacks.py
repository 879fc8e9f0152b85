"""Forecasts for histories that no model can be fitted to: empty, all zero, constant or too short."""

import logging

import numpy as np
from scipy import stats

from .cleaning import PreparedHistory
from .result import ForecastResult, build_result

logger = logging.getLogger(__name__)

REFERENCE_SAMPLE_SIZE = 2000
"""Size of the evenly spaced sample that replaces Student's t quantile function in ``ForecastResult``."""

SINGLE_VALUE_SPREAD = 0.25
"""Scale of the band around a single observed hour, as a fraction of its value."""


def joined(*sentences: str) -> str:
    return " ".join(sentence for sentence in sentences if sentence)


def flat_result(*, status: str, model: str, value: float, horizon: int, message: str) -> ForecastResult:
    """Return a flat forecast at ``value`` whose bands all collapse onto it."""
    return build_result(
        status=status, message=message, model=model, point=np.full(horizon, value),
        spread=np.zeros(horizon), standardized_errors=np.zeros(0), backtest_mase={},
    )


def no_data_result(horizon: int, notes: list[str]) -> ForecastResult:
    """Return a zero forecast for a history without a single finite value."""
    logger.warning("Forecast fallback no_data: the history has no finite value")
    message = joined("The history has no observed hour, so the forecast is zero with no uncertainty band.", *notes)
    return flat_result(status="no_data", model="zero", value=0.0, horizon=horizon, message=message)


def all_zero_result(history: PreparedHistory, horizon: int, notes: list[str]) -> ForecastResult:
    """Return a zero forecast for a history whose observed hours are all zero."""
    logger.info("Forecast fallback all_zero: %d observed hours, all zero", history.observed.sum())
    message = joined(f"All {int(history.observed.sum())} observed hours are zero, so the forecast is zero.", *notes)
    return flat_result(status="all_zero", model="last_value", value=0.0, horizon=horizon, message=message)


def constant_result(history: PreparedHistory, horizon: int, notes: list[str]) -> ForecastResult:
    """Return the constant value of a history whose observed hours are all equal, with no band."""
    value = float(history.observed_values[0])
    logger.info("Forecast fallback constant: %d observed hours, all %g", history.observed.sum(), value)
    message = joined(
        f"All {int(history.observed.sum())} observed hours equal {value:g}, so the forecast repeats that value; "
        "a constant history gives no basis for an uncertainty band.", *notes,
    )
    return flat_result(status="constant", model="last_value", value=value, horizon=horizon, message=message)


def t_reference_sample(degrees_of_freedom: float) -> np.ndarray:
    """Return evenly spaced quantiles of Student's t, which ``ForecastResult.quantile`` reads as its error sample."""
    levels = (np.arange(REFERENCE_SAMPLE_SIZE) + 0.5) / REFERENCE_SAMPLE_SIZE
    return stats.t.ppf(levels, df=degrees_of_freedom)


def short_history_result(history: PreparedHistory, horizon: int, reason: str, notes: list[str]) -> ForecastResult:
    """Return the mean of the observed hours, with bands of a normal prediction interval for one new value.

    The band is ``mean +- t(n-1) * sd * sqrt(1 + 1/n)``: it assumes hourly values independent
    around a constant mean, so it ignores the daily pattern and is wide on purpose.
    """
    observed = history.observed_values
    count = observed.size
    mean = float(observed.mean())

    if count >= 2:
        spread = float(observed.std(ddof=1)) * np.sqrt(1 + 1 / count)
        sample = t_reference_sample(count - 1)
    else:
        # NOTE: one observed hour gives no estimate of the spread, so the band is a guess:
        # 25 % of the value per unit of the standard normal distribution.
        spread = SINGLE_VALUE_SPREAD * mean
        sample = t_reference_sample(np.inf)

    logger.warning("Forecast fallback short_history: %s", reason)
    message = joined(
        f"{reason} The forecast is the mean of the {count} observed hours ({mean:.4g}), "
        "with intervals from their spread that ignore the daily pattern.", *notes,
    )
    return build_result(
        status="short_history", message=message, model="mean", point=np.full(horizon, mean),
        spread=np.full(horizon, spread), standardized_errors=sample, backtest_mase={},
    )
