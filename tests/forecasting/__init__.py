"""Synthetic hourly demand series and the checks every forecast result must pass."""

import numpy as np


def daily_demand(days: int, *, level: float = 100.0, amplitude: float = 30.0, noise: float = 5.0,
                 seed: int = 7) -> np.ndarray:
    """Return ``days`` of hourly demand with a daily sine cycle and seeded Gaussian noise."""
    rng = np.random.default_rng(seed)
    hours = np.arange(days * 24)
    cycle = level + amplitude * np.sin(2 * np.pi * hours / 24)
    return cycle + rng.normal(0.0, noise, size=hours.size)


def assert_valid_result(result, horizon: int) -> None:
    """Assert the contract of ``ForecastResult``: shapes, no NaN, no negative value, nested bands."""
    arrays = {
        "point": result.point, "lower_80": result.lower_80, "upper_80": result.upper_80,
        "lower_95": result.lower_95, "upper_95": result.upper_95,
    }
    for name, values in arrays.items():
        assert values.shape == (horizon,), name
        assert np.all(np.isfinite(values)), name
        assert np.all(values >= 0), name

    assert np.all(result.lower_95 <= result.lower_80)
    assert np.all(result.lower_80 <= result.point)
    assert np.all(result.point <= result.upper_80)
    assert np.all(result.upper_80 <= result.upper_95)
    assert result.message
