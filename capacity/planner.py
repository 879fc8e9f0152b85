"""Turn demand forecasts into capacity decisions: units to add or retire, their cost, and the trend.

Plain Python with numpy and statsmodels; no Django imports. Units are whatever the series counts
(GPUs, or servers for the Philly trace); prices are per unit and hour.
"""

import logging
import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import statsmodels.api as sm

logger = logging.getLogger(__name__)

HOURS_PER_MONTH = 730
"""Average hours in a month (8,760 / 12), for monthly cost and growth."""
SERVICE_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
"""Forecast quantiles a plan can cover; the forecasts store each of them."""
MIN_TREND_DAYS = 7
MAX_RETIRE_SHARE = 0.25
"""Largest share of a series' capacity one plan retires, so the fleet shrinks in steps an admin can watch."""


@dataclass(frozen=True)
class Trend:
    """Growth of daily mean demand from a log-linear fit, with a 95 % interval on the monthly rate."""

    weekly_pct: float
    monthly_pct: float
    monthly_low_pct: float
    monthly_high_pct: float
    days: int


@dataclass(frozen=True)
class PlanInput:
    key: str
    label: str
    unit: str
    capacity: int
    quantiles: dict[float, np.ndarray]
    """Forecast per hour ahead for each level in ``SERVICE_LEVELS``."""
    price_per_unit_hour: Decimal | None
    currency: str = "USD"
    node_size: int | None = None
    model_name: str = ""
    model_mase: float | None = None


@dataclass(frozen=True)
class PlanLine:
    key: str
    capacity: int
    peak_p50: float
    peak_at_service_level: float
    peak_p95: float
    required: int
    delta: int
    delta_low: int
    delta_high: int
    action: str
    nodes_hint: str
    monthly_cost: Decimal | None
    explanation: str

    @property
    def amount(self) -> int:
        """Units to add or retire, without the sign."""
        return abs(self.delta)


def growth_factors(hours: int, growth_pct_per_month: float) -> np.ndarray:
    """Multipliers per hour ahead for compound growth of ``growth_pct_per_month`` percent a month."""
    if growth_pct_per_month <= -100:
        raise ValueError(f"Growth of {growth_pct_per_month} % a month would make demand negative; use more than -100.")
    rate = 1 + growth_pct_per_month / 100
    return rate ** (np.arange(1, hours + 1) / HOURS_PER_MONTH)


def plan_line(plan_input: PlanInput, *, service_level: float, growth_pct_per_month: float,
              horizon_hours: int) -> PlanLine:
    """Decide one series: cover the forecast's ``service_level`` quantile at its peak over the horizon.

    Adds units when the peak needs more than the capacity. Retires units only above the larger of
    the service-level peak and the 95th-percentile peak, so a plan never retires capacity that a
    likely peak needs. ``delta_low`` and ``delta_high`` are the same decision at the median and
    at the 95th percentile, which shows how much the forecast's uncertainty matters.
    """
    if service_level not in plan_input.quantiles:
        raise ValueError(f"Service level {service_level} is not one of the stored levels {sorted(plan_input.quantiles)}.")
    factors = growth_factors(horizon_hours, growth_pct_per_month)

    def peak(level: float) -> float:
        values = np.asarray(plan_input.quantiles[level][:horizon_hours], dtype=float)
        return float(np.max(values * factors[:len(values)])) if len(values) else 0.0

    peak_p50, peak_level, peak_p95 = peak(0.5), peak(service_level), peak(0.95)
    required = math.ceil(round(peak_level, 6))
    delta = required - plan_input.capacity
    keep = math.ceil(round(max(peak_level, peak_p95), 6))
    capped = False
    if delta > 0:
        action = "add"
    elif plan_input.capacity > keep:
        surplus = plan_input.capacity - keep
        retire = min(surplus, max(math.floor(plan_input.capacity * MAX_RETIRE_SHARE), 1))
        action, delta, capped = "retire", -retire, retire < surplus
    else:
        action, delta = "hold", 0

    monthly_cost = None
    if plan_input.price_per_unit_hour is not None:
        monthly_cost = (Decimal(delta) * plan_input.price_per_unit_hour * HOURS_PER_MONTH).quantize(
            Decimal("0.01"), rounding=ROUND_HALF_UP)
    return PlanLine(
        key=plan_input.key, capacity=plan_input.capacity, peak_p50=round(peak_p50, 2),
        peak_at_service_level=round(peak_level, 2), peak_p95=round(peak_p95, 2), required=required,
        delta=delta, delta_low=math.ceil(round(peak_p50, 6)) - plan_input.capacity,
        delta_high=math.ceil(round(peak_p95, 6)) - plan_input.capacity, action=action,
        nodes_hint=_nodes_hint(delta, plan_input), monthly_cost=monthly_cost,
        explanation=_explain(plan_input, service_level, horizon_hours, peak_level, keep, action, delta, capped),
    )


def trend_fit(hourly: np.ndarray) -> Trend | None:
    """Fit log(daily mean + 1) on the day number; ``None`` with fewer than ``MIN_TREND_DAYS`` full days.

    Days with any missing hour are left out rather than filled, so an outage does not read as a drop.
    """
    values = np.asarray(hourly, dtype=float)
    whole_days = len(values) // 24
    days = values[len(values) - whole_days * 24:].reshape(whole_days, 24) if whole_days else np.empty((0, 24))
    complete = ~np.isnan(days).any(axis=1)
    day_numbers = np.arange(whole_days)[complete]
    if len(day_numbers) < MIN_TREND_DAYS:
        return None
    daily_log = np.log1p(np.clip(days[complete].mean(axis=1), 0, None))
    if np.ptp(daily_log) == 0:
        return Trend(0.0, 0.0, 0.0, 0.0, len(day_numbers))

    fit = sm.OLS(daily_log, sm.add_constant(day_numbers.astype(float))).fit()
    slope, slope_error = float(fit.params[1]), float(fit.bse[1])

    def pct(per_day: float, days_: float) -> float:
        return round(float(np.expm1(per_day * days_) * 100), 2)

    month_days = HOURS_PER_MONTH / 24
    return Trend(
        weekly_pct=pct(slope, 7), monthly_pct=pct(slope, month_days),
        monthly_low_pct=pct(slope - 1.96 * slope_error, month_days),
        monthly_high_pct=pct(slope + 1.96 * slope_error, month_days), days=len(day_numbers),
    )


def _nodes_hint(delta: int, plan_input: PlanInput) -> str:
    if delta == 0 or not plan_input.node_size:
        return ""
    nodes = math.ceil(abs(delta) / plan_input.node_size)
    verb = "add" if delta > 0 else "retire"
    unit = plan_input.unit.removesuffix("s") if plan_input.node_size == 1 else plan_input.unit
    return f"{verb} about {nodes} node{'s' if nodes > 1 else ''} of {plan_input.node_size} {unit}"


def _explain(plan_input: PlanInput, service_level: float, horizon_hours: int, peak_level: float, keep: int,
             action: str, delta: int, capped: bool) -> str:
    model = f" (model {plan_input.model_name}" + (
        f", backtest MASE {plan_input.model_mase:.2f})" if plan_input.model_mase is not None else ")")
    head = (f"P{round(service_level * 100)} of forecast demand peaks at {peak_level:.1f} {plan_input.unit} in the "
            f"next {horizon_hours} h{model if plan_input.model_name else ''}; {plan_input.capacity} in service.")
    if action == "add":
        return f"{head} Add {delta} to cover it."
    if action == "retire":
        surplus = plan_input.capacity - keep
        tail = (f" This plan retires {-delta} of them, at most {MAX_RETIRE_SHARE:.0%} of the capacity at once."
                if capped else " They could be retired.")
        return (f"{head} {surplus} more than the higher of this peak and the 95th percentile's peak need.{tail}")
    return f"{head} Capacity covers it; no change."
