"""Hourly demand forecasting with model selection by backtest and empirical prediction intervals.

Pure numpy, pandas and statsmodels, with no Django import, so that benchmarks and worker
processes can use it without settings.
"""

from .fleet import forecast_many
from .models import MODEL_NAMES
from .result import STATUSES, ForecastResult
from .selection import DEFAULT_MAX_TRAIN_HOURS, forecast_series

__all__ = ["DEFAULT_MAX_TRAIN_HOURS", "MODEL_NAMES", "STATUSES", "ForecastResult", "forecast_many", "forecast_series"]
