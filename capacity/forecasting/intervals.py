"""Empirical prediction intervals from backtest errors, in the manner of split conformal prediction.

The error scale at each lead hour is the mean absolute backtest error in its lead-time bucket,
made non-decreasing with the lead. Errors divided by that scale are pooled over all leads and
origins, and their empirical quantiles, widened by ``result.small_sample_factor`` for the
number of origins, give every interval and quantile. The bands therefore assume that the shape
of the error distribution does not depend on the lead time, only its width.
"""

import numpy as np

LEAD_BUCKET_EDGES = (6, 12, 24, 48, 96, 168)
"""Upper lead hour (inclusive) of each bucket; leads past the last edge share one bucket."""


def lead_buckets(leads: int) -> np.ndarray:
    """Return the bucket index of lead hours 1 to ``leads``."""
    return np.searchsorted(LEAD_BUCKET_EDGES, np.arange(1, leads + 1), side="left")


def lead_spread(errors: np.ndarray, horizon: int) -> np.ndarray:
    """Return the error scale at lead hours 1 to ``horizon`` from backtest ``errors`` (origins x window).

    Buckets without a finite error take the previous bucket's scale. Leads beyond the backtest
    window grow from the last tested scale with the square root of the lead, as for a random walk.
    """
    window = errors.shape[1]
    buckets = lead_buckets(window)
    absolute = np.abs(errors)
    overall = float(np.nanmean(absolute)) if np.isfinite(absolute).any() else 0.0

    bucket_scale = []
    for bucket in range(int(buckets.max()) + 1):
        cells = absolute[:, buckets == bucket]
        if np.isfinite(cells).any():
            bucket_scale.append(float(np.nanmean(cells)))
        else:
            bucket_scale.append(bucket_scale[-1] if bucket_scale else overall)
    tested = np.maximum.accumulate(np.array(bucket_scale))[buckets]

    if horizon <= window:
        return tested[:horizon]

    # NOTE: the square-root growth past the tested window is an assumption, not a measurement.
    extra_leads = np.arange(window + 1, horizon + 1)
    extrapolated = tested[-1] * np.sqrt(extra_leads / window)
    return np.concatenate([tested, extrapolated])


def standardized_errors(errors: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Return the finite backtest errors divided by the scale at their lead hour, sorted, as one array."""
    window = errors.shape[1]
    scale = np.broadcast_to(spread[:window], errors.shape)
    usable = np.isfinite(errors) & (scale > 0)
    return np.sort(errors[usable] / scale[usable])
