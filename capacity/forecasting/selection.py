"""Forecast one demand series: clean it, backtest the candidates, pick the best and fit it to all data."""

import logging
import time

import numpy as np

from .backtest import BacktestOutcome, backtest_hours, plan_backtest, run_backtest
from .cleaning import PreparedHistory, fill_gaps, read_history
from .fallbacks import all_zero_result, constant_result, no_data_result, short_history_result
from .intervals import lead_spread, standardized_errors
from .models import BASE_MODELS, COMBINATION, MODEL_NAMES, CandidateModel, predict_quietly
from .result import ForecastResult, build_result

logger = logging.getLogger(__name__)

DEFAULT_MAX_TRAIN_HOURS = 5 * 168
"""Five weeks: enough for two weekly seasons at every backtest origin, and fits stay fast."""

MIN_SEASONS = 3
"""Seasons of observed data needed to fit models: two to train on and one to test."""

COMBINATION_MARGIN = 0.1
"""By how much (as a fraction) the combination's backtest MASE must exceed a single model's for that model to be selected.

Backtest MASE over a few days is a noisy ranking. On held-out windows of the shipped series,
selecting on it alone picked worse models than the combination. At 24 hours the selected
model's MASE ratio to seasonal naive was 0.81 with no margin and 0.78 with this one
(``make bench-forecast``).
"""

MAX_MISSING_SHARE = 0.5
"""A history with a larger share of missing hours is forecast as a short history."""


def forecast_series(values, horizon: int = 168, season: int = 24, candidates=None,
                    max_train_hours: int = DEFAULT_MAX_TRAIN_HOURS) -> ForecastResult:
    """Forecast the ``horizon`` hours after the last element of ``values``, an hourly demand history.

    ``values`` is a 1-D sequence, oldest hour first, with NaN (or None, or infinity) for missing
    hours. ``season`` is the daily period in hours. ``candidates`` limits selection to some of
    ``MODEL_NAMES``; seasonal naive always takes part as the baseline and the last resort. Each
    model fit uses at most ``max_train_hours`` hours before its origin.

    The model with the lowest MASE on a rolling-origin backtest over the end of the history is
    refitted on all of it. The combination wins unless its MASE exceeds another model's by more
    than ``COMBINATION_MARGIN``. The intervals are empirical: quantiles of held-out backtest
    errors (at each origin, those of the model selected on the other origins), scaled per
    lead-time bucket and widened for the small number of origins (see ``intervals`` and
    ``held_out_selection_errors``).

    Empty, all-zero, short and constant histories get a fallback forecast, and ``status`` names
    which (see ``ForecastResult``). Raises ``ValueError`` only for invalid arguments, never for
    bad data.
    """
    started = time.perf_counter()
    selectable = validate_arguments(horizon, season, candidates, max_train_hours)

    history = read_history(values, keep_hours=max_train_hours + backtest_hours(horizon))
    notes = history.notes()
    observed = history.observed_values
    logger.debug("Forecast started: %d hours of history, %d observed, horizon %d", history.values.size,
                 observed.size, horizon)

    if observed.size == 0:
        return no_data_result(horizon, notes)
    if np.all(observed == 0):
        return all_zero_result(history, horizon, notes)
    needed = MIN_SEASONS * season
    if observed.size < needed:
        reason = f"Only {observed.size} hours were observed and models need at least {needed} ({MIN_SEASONS} seasons of {season})."
        return short_history_result(history, horizon, reason, notes)
    trailing_missing = int(np.argmax(~np.isnan(history.values[::-1]))) if observed.size else 0
    if trailing_missing > 2 * season:
        reason = (f"The last {trailing_missing} hours are missing, so no model can be checked against recent "
                  f"data; the forecast is the mean of what was observed.")
        return short_history_result(history, horizon, reason, notes)
    busy_hours = int(np.count_nonzero(observed))
    if busy_hours < needed:
        reason = (f"Only {busy_hours} of {observed.size} observed hours have any demand and models need at "
                  f"least {needed}; the forecast is the mean.")
        return short_history_result(history, horizon, reason, notes)
    if history.missing_hours > MAX_MISSING_SHARE * history.values.size:
        reason = (f"{history.missing_hours} of the last {history.values.size} hours are missing, "
                  f"more than {MAX_MISSING_SHARE:.0%}, too many to fill.")
        return short_history_result(history, horizon, reason, notes)
    if np.all(observed == observed[0]):
        return constant_result(history, horizon, notes)

    history = fill_gaps(history, season)
    notes = history.notes()
    result = forecast_with_models(history, horizon, season, selectable, max_train_hours, notes)
    logger.debug("Forecast finished in %.2f s: %s, model %s", time.perf_counter() - started, result.status, result.model)
    return result


def forecast_each_model(values, horizon: int = 168, season: int = 24,
                        max_train_hours: int = DEFAULT_MAX_TRAIN_HOURS) -> dict[str, np.ndarray]:
    """Return every candidate's point forecast after the last element of ``values``, for benchmarks.

    The history is cleaned and filled as in ``forecast_series``, but nothing is backtested or
    selected. A model is skipped when the history is shorter than its minimum training window or
    its fit raises, and the combination is the mean of the other non-naive forecasts. Returns an
    empty dict when ``forecast_series`` would use a fallback for this history.
    """
    validate_arguments(horizon, season, None, max_train_hours)
    history = read_history(values, keep_hours=max_train_hours)
    observed = history.observed_values
    if (observed.size < MIN_SEASONS * season or np.all(observed == observed[0])
            or history.missing_hours > MAX_MISSING_SHARE * history.values.size):
        return {}

    values = fill_gaps(history, season).values
    forecasts = {}
    for model_class in BASE_MODELS.values():
        model = model_class(season, max_train_hours)
        if model.min_train_hours() > values.size:
            continue
        try:
            forecasts[model.name] = np.maximum(predict_quietly(model, values, values.size, horizon), 0.0)
        except Exception as error:  # statsmodels raises many exception types from its optimizers and filters.
            logger.warning("Benchmark fit of %s failed: %s: %s", model.name, type(error).__name__, error)

    components = [name for name in forecasts if name != "seasonal_naive"]
    if len(components) >= 2:
        forecasts[COMBINATION] = np.mean([forecasts[name] for name in components], axis=0)
    return forecasts


def validate_arguments(horizon, season, candidates, max_train_hours) -> list[str]:
    """Raise ``ValueError`` for invalid arguments; return the selectable model names in ``MODEL_NAMES`` order."""
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"Forecast horizon {horizon!r} is invalid: pass a whole number of hours, at least 1.")
    if not isinstance(season, (int, np.integer)) or season < 2:
        raise ValueError(f"Season {season!r} is invalid: pass the seasonal period in hours, at least 2 (24 for daily).")
    if not isinstance(max_train_hours, (int, np.integer)) or max_train_hours < 2 * season:
        raise ValueError(f"max_train_hours {max_train_hours!r} is invalid: pass at least two seasons ({2 * season}).")

    if candidates is None:
        return list(MODEL_NAMES)
    unknown = sorted(set(candidates) - set(MODEL_NAMES))
    if unknown:
        raise ValueError(f"Unknown candidate models {unknown}: choose from {', '.join(MODEL_NAMES)}.")
    return [name for name in MODEL_NAMES if name in candidates or name == "seasonal_naive"]


def forecast_with_models(history: PreparedHistory, horizon: int, season: int, selectable: list[str],
                         max_train_hours: int, notes: list[str]) -> ForecastResult:
    """Backtest the eligible candidates on the filled ``history``, select one and forecast with it."""
    values, observed = history.values, history.observed
    plan = plan_backtest(values.size, horizon, min_train=2 * season)
    shortest_train = min(plan.origins[0], max_train_hours)

    models = [BASE_MODELS[name](season, max_train_hours) for name in selectable if name in BASE_MODELS]
    eligible = [model for model in models if model.min_train_hours() <= shortest_train]
    for model in models:
        if model not in eligible:
            logger.debug("Skipped %s: it needs %d training hours and the first origin has %d", model.name,
                         model.min_train_hours(), shortest_train)

    outcome = run_backtest(values, observed, eligible, plan, season)
    components = [name for name in outcome.forecasts if name != "seasonal_naive"]
    if COMBINATION in selectable and len(components) >= 2:
        outcome.forecasts[COMBINATION] = np.mean([outcome.forecasts[name] for name in components], axis=0)

    scores = {name: outcome.mase(name) for name in outcome.forecasts}
    ranking = rank_models(scores)
    by_name = {model.name: model for model in eligible}

    for selected in ranking:
        try:
            point = final_forecast(selected, components, by_name, values, horizon)
        except Exception as error:  # statsmodels raises many exception types from its optimizers and filters.
            logger.warning("Final fit of %s failed, trying the next-best model: %s: %s", selected,
                           type(error).__name__, error)
            continue
        return model_result(history, outcome, scores, selected, point, horizon, notes)

    raise AssertionError("seasonal naive cannot fail once the history is long enough for a backtest")


def rank_models(scores: dict[str, float]) -> list[str]:
    """Return model names from best to worst backtest MASE; NaN ranks last and ties go to ``MODEL_NAMES`` order.

    The combination's MASE is divided by ``1 + COMBINATION_MARGIN`` for ranking, so a single
    model ranks above it only when the combination's MASE exceeds the model's by more than that
    margin.
    """
    def key(name):
        score = scores[name] if np.isfinite(scores[name]) else np.inf
        if name == COMBINATION:
            score /= 1 + COMBINATION_MARGIN
        return score, MODEL_NAMES.index(name)

    return sorted(scores, key=key)


def held_out_selection_errors(outcome: BacktestOutcome) -> np.ndarray:
    """Return, at each backtest origin, the errors of the model selected on the other origins.

    Calibrating on the selected model's own errors would be optimistic: it won because its errors
    on these origins happened to be small (the winner's curse). Here each origin's errors come from
    the model that ``rank_models`` ranks first when that origin is left out, so the bands measure
    the whole procedure of selecting and forecasting on data the selection did not see. With a
    single origin nothing can be left out and the overall winner's errors are used. Shape
    (origins, window).
    """
    names = list(outcome.forecasts)
    per_origin = np.stack([outcome.origin_mase(name) for name in names])
    origins = per_origin.shape[1]
    if origins < 2:
        scores = {name: outcome.mase(name) for name in names}
        return outcome.errors(rank_models(scores)[0])

    rows = []
    for left_out in range(origins):
        others = np.delete(per_origin, left_out, axis=1)
        scores = {
            name: float(np.nanmean(row)) if np.isfinite(row).any() else float("nan")
            for name, row in zip(names, others)
        }
        rows.append(outcome.errors(rank_models(scores)[0])[left_out])
    return np.stack(rows)


def final_forecast(selected: str, components: list[str], models: dict[str, CandidateModel], values: np.ndarray,
                   horizon: int) -> np.ndarray:
    """Refit ``selected`` (every component for the combination) on the whole history and forecast."""
    end = values.size
    if selected == COMBINATION:
        paths = [predict_quietly(models[name], values, end, horizon) for name in components]
        return np.mean(paths, axis=0)
    return predict_quietly(models[selected], values, end, horizon)


def model_result(history: PreparedHistory, outcome: BacktestOutcome, scores: dict[str, float], selected: str,
                 point: np.ndarray, horizon: int, notes: list[str]) -> ForecastResult:
    """Build the result of a fitted model, with intervals from the selection's held-out backtest errors."""
    errors = held_out_selection_errors(outcome)
    spread = lead_spread(errors, horizon)
    plan = outcome.plan

    sentences = [
        f"Selected {selected} by the lowest MASE ({scores[selected]:.2f}; seasonal naive "
        f"{scores['seasonal_naive']:.2f}) in a backtest of {len(plan.origins)} origins, {plan.window} hours each.",
    ]
    if outcome.failures:
        sentences.append(f"Dropped after a failed fit: {', '.join(sorted(outcome.failures))}.")
    if horizon > plan.window:
        sentences.append(f"Interval widths past lead hour {plan.window} are extrapolated from the backtest.")

    filled = history.filled_from_previous_day + history.interpolated_hours
    return build_result(
        status="gaps_filled" if filled else "ok", message=" ".join(notes + sentences), model=selected,
        point=point, spread=spread, standardized_errors=standardized_errors(errors, spread),
        backtest_mase={name: float(score) for name, score in scores.items()},
        calibration_origins=len(plan.origins),
    )
