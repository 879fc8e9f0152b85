"""The forecast returned for one demand series: point forecast, prediction intervals and quantiles."""

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

STATUSES = ("ok", "gaps_filled", "short_history", "constant", "all_zero", "no_data")


def error_quantile(sorted_errors: np.ndarray, level: float) -> float:
    """Return the ``level`` quantile of standardized forecast errors, never on the wrong side of zero.

    Below the median the quantile is taken with ``method="lower"`` and above it with
    ``method="higher"``, the conservative side of each tail. A lower quantile is capped at 0 and
    an upper quantile is raised to 0, so every band contains the point forecast even when the
    errors are biased. Levels beyond the sample's extremes return its minimum or maximum. An empty
    sample returns 0, which makes every band collapse onto the point forecast.
    """
    if sorted_errors.size == 0:
        return 0.0

    if level < 0.5:
        return min(float(np.quantile(sorted_errors, level, method="lower")), 0.0)

    if level > 0.5:
        return max(float(np.quantile(sorted_errors, level, method="higher")), 0.0)

    return float(np.quantile(sorted_errors, level))


def small_sample_factor(level: float, origins: int) -> float:
    """Return how much wider the ``level`` quantile gets when the error scale comes from ``origins`` paths.

    The factor is the ratio of Student's t quantile with ``origins - 1`` degrees of freedom to
    the normal quantile, as in the textbook prediction interval from a scale estimated on a
    small sample. Backtest errors at neighbouring lead hours of one origin move together, so the
    number of origins, not of errors, is the sample size. It is 1 for ``origins`` 0 (no
    correction), grows toward the tails, and is at least 1.
    """
    tail = max(level, 1.0 - level)
    if origins <= 0 or tail - 0.5 < 1e-6:
        return 1.0
    return float(stats.t.ppf(tail, df=max(origins - 1, 1)) / stats.norm.ppf(tail))


@dataclass(frozen=True, eq=False)
class ForecastResult:
    """The forecast of one hourly demand series, ``horizon`` hours ahead of its last hour.

    Every array has shape ``(horizon,)``, contains no NaN and no negative value, and is in the
    unit of the input (GPUs, servers). The bands satisfy
    ``lower_95 <= lower_80 <= point <= upper_80 <= upper_95`` at every lead hour.
    ``quantile(level)`` is ``point + error_quantile(errors, level) * small_sample_factor(level) * spread``
    clipped at 0, and the bands are that function at 0.025, 0.1, 0.9 and 0.975, so quantiles
    and bands always agree.
    """

    status: str
    """One of ``STATUSES``: "ok" and "gaps_filled" come from a fitted model, the others from a fallback."""
    message: str
    """Plain-English note for the user: filled gaps, clipped values, the selected model or the fallback's reason."""
    model: str
    """The selected model's name from ``MODEL_NAMES``, or "mean", "last_value" or "zero" for fallbacks."""
    point: np.ndarray
    lower_80: np.ndarray
    upper_80: np.ndarray
    lower_95: np.ndarray
    upper_95: np.ndarray
    backtest_mase: dict[str, float]
    """MASE of each candidate on the rolling-origin backtest used for selection; empty for fallbacks."""
    spread: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    """Scale of the forecast error at each lead hour, in the unit of the input."""
    standardized_errors: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    """Sorted backtest errors (actual minus forecast) divided by ``spread`` at their lead hour."""
    calibration_origins: int = 0
    """Backtest origins behind ``standardized_errors``; 0 where no small-sample correction applies."""

    def quantile(self, level: float) -> np.ndarray:
        """Return the forecast ``level`` quantile at each lead hour, clipped at 0.

        ``level`` must lie strictly between 0 and 1. The result is non-decreasing in ``level``.
        """
        if not 0.0 < level < 1.0:
            raise ValueError(f"Quantile level {level!r} is invalid: pass a number strictly between 0 and 1.")

        offset = error_quantile(self.standardized_errors, level) * small_sample_factor(level, self.calibration_origins)
        spread = self.spread if self.spread.size else np.zeros_like(self.point)
        return np.maximum(self.point + offset * spread, 0.0)


def build_result(*, status: str, message: str, model: str, point: np.ndarray, spread: np.ndarray,
                 standardized_errors: np.ndarray, backtest_mase: dict[str, float],
                 calibration_origins: int = 0) -> ForecastResult:
    """Assemble a ``ForecastResult`` whose bands are its own quantiles at the 80 % and 95 % bounds.

    ``point`` and ``spread`` are clipped at 0, and non-finite values in them become 0, so the
    result never contains NaN even if a caller passes a broken array.
    """
    if status not in STATUSES:
        raise ValueError(f"Forecast status {status!r} is invalid: use one of {', '.join(STATUSES)}.")

    point = np.maximum(np.nan_to_num(np.asarray(point, dtype=float), nan=0.0, posinf=0.0, neginf=0.0), 0.0)
    spread = np.maximum(np.nan_to_num(np.asarray(spread, dtype=float), nan=0.0, posinf=0.0, neginf=0.0), 0.0)
    errors = np.sort(np.asarray(standardized_errors, dtype=float)[np.isfinite(standardized_errors)])

    draft = ForecastResult(
        status=status, message=message, model=model, point=point,
        lower_80=point, upper_80=point, lower_95=point, upper_95=point,
        backtest_mase=dict(backtest_mase), spread=spread, standardized_errors=errors,
        calibration_origins=calibration_origins,
    )
    return ForecastResult(
        status=status, message=message, model=model, point=point,
        lower_80=draft.quantile(0.1), upper_80=draft.quantile(0.9),
        lower_95=draft.quantile(0.025), upper_95=draft.quantile(0.975),
        backtest_mase=dict(backtest_mase), spread=spread, standardized_errors=errors,
        calibration_origins=calibration_origins,
    )
