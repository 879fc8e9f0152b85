"""Turn a raw hourly demand history into a finite, non-negative array the models can fit."""

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedHistory:
    """A demand history ready for fitting, with what was changed to get there.

    ``values`` has no NaN and no negative value once ``fill_gaps`` has run. ``observed`` is False
    at hours that were missing in the input (NaN or infinite), so a backtest can leave them out
    of its error measures even after ``fill_gaps`` has filled them.
    """

    values: np.ndarray
    observed: np.ndarray
    non_finite_hours: int
    clipped_hours: int
    filled_from_previous_day: int = 0
    interpolated_hours: int = 0

    @property
    def missing_hours(self) -> int:
        return int((~self.observed).sum())

    @property
    def observed_values(self) -> np.ndarray:
        return self.values[self.observed]

    def notes(self) -> list[str]:
        """Plain-English sentences on what cleaning changed, for ``ForecastResult.message``."""
        notes = []
        if self.non_finite_hours:
            notes.append(f"{self.non_finite_hours} infinite values were treated as missing hours.")
        if self.clipped_hours:
            notes.append(f"{self.clipped_hours} negative values were clipped to 0.")
        filled = self.filled_from_previous_day + self.interpolated_hours
        if filled:
            methods = []
            if self.filled_from_previous_day:
                methods.append(f"{self.filled_from_previous_day} from the same hour one day earlier")
            if self.interpolated_hours:
                methods.append(f"{self.interpolated_hours} by linear interpolation")
            if len(methods) == 1:
                notes.append(f"{filled} missing hours were filled {methods[0].split(' ', 1)[1]}.")
            else:
                notes.append(f"{filled} missing hours were filled: {' and '.join(methods)}.")
        return notes


def read_history(values, keep_hours: int) -> PreparedHistory:
    """Convert ``values`` to floats, keep the last ``keep_hours`` hours and mark missing hours.

    Infinite values become NaN, negative values become 0 (demand cannot be negative), and missing
    hours before the first observed hour are dropped because they are not gaps. Gaps inside the
    history stay NaN until ``fill_gaps``. Raises ``ValueError`` when ``values`` is not a 1-D
    sequence of numbers.
    """
    try:
        array = np.array(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"Demand history is invalid ({error}): pass a 1-D sequence of numbers, NaN for missing hours.") from error
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        raise ValueError(f"Demand history has shape {array.shape}: pass a 1-D sequence of hourly values.")

    array = array[-keep_hours:] if keep_hours > 0 else array[:0]

    infinite = np.isinf(array)
    array[infinite] = np.nan
    finite = np.isfinite(array)
    if finite.any():
        first = int(np.argmax(finite))
        array, finite, infinite = array[first:], finite[first:], infinite[first:]

    negative = finite & (array < 0)
    array[negative] = 0.0

    return PreparedHistory(
        values=array, observed=finite.copy(),
        non_finite_hours=int(infinite.sum()), clipped_hours=int(negative.sum()),
    )


def fill_gaps(history: PreparedHistory, season: int) -> PreparedHistory:
    """Fill each missing hour from the same hour one ``season`` earlier, then interpolate the rest.

    Repeating the previous day keeps the daily profile through a gap of whole days, which linear
    interpolation would flatten. Hours with no earlier day to copy (the first ``season`` hours)
    are interpolated linearly, and held constant at the edges.
    """
    values = history.values.copy()
    missing = np.isnan(values)
    if not missing.any():
        return history

    from_previous_day = 0
    while True:
        previous = np.full_like(values, np.nan)
        previous[season:] = values[:-season]
        fillable = np.isnan(values) & ~np.isnan(previous)
        if not fillable.any():
            break
        values[fillable] = previous[fillable]
        from_previous_day += int(fillable.sum())

    interpolated = int(np.isnan(values).sum())
    if interpolated:
        values = pd.Series(values).interpolate(method="linear", limit_direction="both").to_numpy()

    logger.debug("Filled %d missing hours from the previous day and %d by interpolation", from_previous_day, interpolated)
    return PreparedHistory(
        values=values, observed=history.observed, non_finite_hours=history.non_finite_hours,
        clipped_hours=history.clipped_hours, filled_from_previous_day=from_previous_day,
        interpolated_hours=interpolated,
    )
