"""Rolling-origin backtest: forecast from several past origins and score each model by MASE."""

import logging
from dataclasses import dataclass, field

import numpy as np

from .models import CandidateModel, predict_quietly

logger = logging.getLogger(__name__)

MAX_WINDOW_HOURS = 168
"""Maximum backtest test window in hours; leads beyond it get extrapolated interval widths."""


@dataclass(frozen=True)
class BacktestPlan:
    """Forecast origins (indexes into the history, oldest first) and the lead hours tested at each."""

    origins: tuple[int, ...]
    window: int

    def span(self) -> int:
        """Return the hours from the first origin to the end of the last test window."""
        return self.origins[-1] - self.origins[0] + self.window


ORIGIN_SPACING_HOURS = {48: 12, None: 24}
"""Hours between backtest origins, by the longest horizon they apply to (None: any longer horizon)."""

ORIGIN_COUNT = {48: 20, None: 12}
"""Maximum number of backtest origins, by the longest horizon they apply to (None: any longer horizon).

On the shipped series, 20 origins instead of 10 at 24 hours lowered the selected model's MASE
ratio to seasonal naive from 0.83 to 0.81 (``make bench-forecast``, 2 CPUs), at about 0.3 s more
per series.
"""


def by_horizon(table: dict, horizon: int) -> int:
    """Return the value of ``table`` for the first key that is None or at least ``horizon``."""
    for longest, value in table.items():
        if longest is None or horizon <= longest:
            return value
    raise ValueError(f"No entry for horizon {horizon} in {table}: add a None key for longer horizons.")


def origin_spacing(horizon: int) -> int:
    """Return the hours between backtest origins."""
    return by_horizon(ORIGIN_SPACING_HOURS, horizon)


def origin_count(horizon: int) -> int:
    """Return how many backtest origins to use at most."""
    return by_horizon(ORIGIN_COUNT, horizon)


def backtest_hours(horizon: int) -> int:
    """Return the history hours a full backtest spans, before the training window of its first origin."""
    return min(horizon, MAX_WINDOW_HOURS) + (origin_count(horizon) - 1) * origin_spacing(horizon)


def plan_backtest(length: int, horizon: int, min_train: int) -> BacktestPlan | None:
    """Place origins at the end of a history of ``length`` hours, each with ``min_train`` hours before it.

    The test window is the horizon capped at ``MAX_WINDOW_HOURS``. When the history is too short
    for one full window, the window shrinks to what is left after ``min_train``. Returns None
    when fewer than ``min_train`` plus one hour are available.
    """
    window = min(horizon, MAX_WINDOW_HOURS, length - min_train)
    if window < 1:
        return None

    spacing = origin_spacing(horizon)
    count = min(origin_count(horizon), (length - window - min_train) // spacing + 1)
    last = length - window
    origins = tuple(last - spacing * step for step in reversed(range(count)))
    return BacktestPlan(origins=origins, window=window)


def mase_scale(train: np.ndarray, observed: np.ndarray, season: int) -> float:
    """Return the mean absolute seasonal difference of ``train``, the MASE denominator.

    Only pairs of hours that were both observed count. When that mean is 0 (a training window
    that repeats exactly), the mean absolute value is used, and 1.0 when that is 0 too.
    """
    pairs = observed[season:] & observed[:-season]
    differences = np.abs(train[season:] - train[:-season])[pairs]
    scale = float(differences.mean()) if differences.size else 0.0
    if scale > 0:
        return scale

    # NOTE: a window with no seasonal change makes MASE undefined. This fallback keeps the
    # ranking finite, but its values are not comparable with MASE on other series.
    level = float(np.abs(train[observed]).mean()) if observed.any() else 0.0
    return level if level > 0 else 1.0


@dataclass
class BacktestOutcome:
    """Each surviving model's backtest forecasts and errors, and the models that failed."""

    plan: BacktestPlan
    actuals: np.ndarray
    """Shape (origins, window); NaN where the actual hour was missing in the input."""
    scales: np.ndarray
    """MASE denominator at each origin."""
    forecasts: dict[str, np.ndarray] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def errors(self, name: str) -> np.ndarray:
        """Return actual minus forecast for ``name``, shape (origins, window), NaN at missing actuals."""
        return self.actuals - self.forecasts[name]

    def origin_mase(self, name: str) -> np.ndarray:
        """Return each origin's mean absolute error over its MASE scale, NaN where no actual hour was observed."""
        absolute = np.abs(self.errors(name))
        per_origin = np.full(len(self.scales), np.nan)
        for index, (row, scale) in enumerate(zip(absolute, self.scales)):
            if np.isfinite(row).any():
                per_origin[index] = np.nanmean(row) / scale
        return per_origin

    def mase(self, name: str) -> float:
        """Return the mean over origins of each origin's mean absolute error over its MASE scale."""
        per_origin = self.origin_mase(name)
        return float(np.nanmean(per_origin)) if np.isfinite(per_origin).any() else float("nan")


def run_backtest(values: np.ndarray, observed: np.ndarray, models: list[CandidateModel], plan: BacktestPlan,
                 season: int) -> BacktestOutcome:
    """Forecast ``plan.window`` hours from every origin with every model, oldest origin first.

    A model is fitted at the first origin and, where it supports it, reuses those parameters at
    later origins (``refit=False``). Parameters therefore never see hours after the origin they
    forecast from. A model that raises at any origin is left out, with the error in ``failures``.
    """
    window = plan.window
    actuals = np.stack([np.where(observed[o:o + window], values[o:o + window], np.nan) for o in plan.origins])
    scales = np.array([
        mase_scale(values[max(0, o - models[0].max_train_hours):o],
                   observed[max(0, o - models[0].max_train_hours):o], season)
        for o in plan.origins
    ])
    outcome = BacktestOutcome(plan=plan, actuals=actuals, scales=scales)

    for model in models:
        try:
            paths = [predict_quietly(model, values, origin, window, refit=(step == 0))
                     for step, origin in enumerate(plan.origins)]
        except Exception as error:  # statsmodels raises many exception types from its optimizers and filters.
            logger.warning("Dropped candidate %s: its backtest fit failed: %s: %s", model.name, type(error).__name__, error)
            outcome.failures[model.name] = f"{type(error).__name__}: {error}"
            continue
        outcome.forecasts[model.name] = np.maximum(np.stack(paths), 0.0)

    return outcome
