"""Capacity plans: preview one from the stored forecasts, propose it, and let an admin approve or reject it."""

import logging
from collections import Counter
from datetime import datetime, timedelta
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from statistics import median

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from marketplace.audit import audit_record
from marketplace.exceptions import FieldProblem, InvalidRequest, InvalidTransition, MarketplaceError, NotFound
from marketplace.models import Node

from .forecasts import latest_forecasts, series_history
from .models import CapacityPlan, CapacityPlanLine, DemandForecast, DemandPoint, DemandSeries
from .planner import SERVICE_LEVELS, PlanInput, PlanLine, Trend, plan_line, trend_fit

logger = logging.getLogger(__name__)

MAX_GROWTH_PCT = Decimal("500")
MIN_GROWTH_PCT = Decimal("-90")
TREND_HISTORY_HOURS = 5 * 168
HOUR = timedelta(hours=1)
PROPOSAL_LOCK_KEY = 7_410_001
"""PostgreSQL advisory lock key that serialises capacity plan proposals."""


class DuplicateProposal(MarketplaceError):
    """A proposed plan with the same settings is still waiting for a decision (HTTP 409)."""

    def __init__(self, detail: str, *, plan_id: int):
        super().__init__(detail=detail, code="duplicate_proposal", status=409, title="Plan already proposed",
                         extra={"plan_id": plan_id})


@dataclass(frozen=True)
class PlanSettings:
    """Settings of a plan: the forecast quantile to cover, the hours ahead, and extra growth in percent a month."""

    service_level: float = 0.9
    horizon_hours: int = 168
    growth_pct_per_month: Decimal = Decimal("0")

    @classmethod
    def parse(cls, params) -> "PlanSettings":
        """Read settings from form or query parameters; raise ``InvalidRequest`` naming each bad field.

        A missing horizon means all the hours the forecasts cover (``FORECAST_HORIZON_HOURS``).
        """
        problems = []
        max_horizon = settings.MARKETPLACE["FORECAST_HORIZON_HOURS"]
        levels = ", ".join(str(level) for level in SERVICE_LEVELS)

        raw_level = str(params.get("service_level", "0.9"))
        try:
            service_level = float(raw_level)
        except ValueError:
            service_level = None
        if service_level not in SERVICE_LEVELS:
            problems.append(FieldProblem("service_level", f"{raw_level!r} is not a service level; choose one of {levels}."))

        raw_horizon = str(params.get("horizon_hours", max_horizon))
        horizon = int(raw_horizon) if raw_horizon.isascii() and raw_horizon.isdigit() and len(raw_horizon) < 6 else None
        if horizon is None or not 1 <= horizon <= max_horizon:
            problems.append(FieldProblem(
                "horizon_hours", f"{raw_horizon!r} is not a horizon; give whole hours from 1 to {max_horizon}, "
                                 f"the hours the forecasts cover."))

        raw_growth = str(params.get("growth_pct_per_month", "0") or "0")
        try:
            growth = Decimal(raw_growth)
        except InvalidOperation:
            growth = None
        if growth is None or not growth.is_finite() or not MIN_GROWTH_PCT <= growth <= MAX_GROWTH_PCT:
            problems.append(FieldProblem(
                "growth_pct_per_month", f"{raw_growth!r} is not a growth rate; give a number of percent per month "
                                        f"from {MIN_GROWTH_PCT} to {MAX_GROWTH_PCT}, 0 for the forecast as it is."))

        if problems:
            raise InvalidRequest(" ".join(f"{problem.field}: {problem.message}" for problem in problems),
                                 errors=problems)
        return cls(service_level=service_level, horizon_hours=horizon,
                   growth_pct_per_month=growth.quantize(Decimal("0.01")))


@dataclass(frozen=True)
class PreviewLine:
    series: DemandSeries
    forecast: DemandForecast
    line: PlanLine
    trend: Trend | None
    unit: str
    currency: str
    history: np.ndarray
    """Hourly demand before the forecast's first hour, NaN where missing; the trend and the chart use it."""
    skipped_hours: int
    """Forecast hours before the current hour, which the plan leaves out."""


@dataclass(frozen=True)
class PlanPreview:
    settings: PlanSettings
    lines: list[PreviewLine]
    total_monthly_cost: Decimal
    currency: str
    missing_forecasts: list[str]


def capacity_plan_preview(plan_settings: PlanSettings, *, now: datetime | None = None) -> PlanPreview:
    """Compute a plan from the latest stored forecasts without saving anything.

    The horizon starts at the current hour: forecast hours that have already passed (a series whose
    history ends before today) are skipped, and the horizon is cut where the forecast ends.
    """
    hour_now = (now or timezone.now()).replace(minute=0, second=0, microsecond=0)
    forecasts = latest_forecasts()
    fleet = _fleet_by_series()
    lines, missing = [], []
    currency = settings.MARKETPLACE["DEFAULT_CURRENCY"]
    for series in DemandSeries.objects.select_related("gpu_model", "region").order_by("source", "key"):
        forecast = forecasts.get(series.id)
        if forecast is None:
            missing.append(series.key)
            continue
        skipped = max(int((hour_now - forecast.first_hour) / HOUR), 0)
        if skipped >= forecast.horizon_hours:
            missing.append(series.key)
            continue
        plan_input = _plan_input(series, forecast, fleet, currency, skipped)
        line = plan_line(plan_input, service_level=plan_settings.service_level,
                         growth_pct_per_month=float(plan_settings.growth_pct_per_month),
                         horizon_hours=min(plan_settings.horizon_hours, forecast.horizon_hours - skipped))
        _, history = series_history(series, hours=TREND_HISTORY_HOURS, until=forecast.first_hour)
        lines.append(PreviewLine(series=series, forecast=forecast, line=line, trend=trend_fit(history),
                                 unit=series.unit, currency=currency, history=history, skipped_hours=skipped))
    total = sum((line.line.monthly_cost for line in lines if line.line.monthly_cost is not None), Decimal("0"))
    return PlanPreview(settings=plan_settings, lines=lines, total_monthly_cost=total, currency=currency,
                       missing_forecasts=missing)


def capacity_plan_propose(*, plan_settings: PlanSettings, actor: AbstractBaseUser | None = None) -> CapacityPlan:
    """Save the preview of ``plan_settings`` as a proposed plan.

    Raises ``DuplicateProposal`` while a plan with the same settings waits for a decision, and
    ``InvalidRequest`` when no series has a forecast to plan from.
    """
    with transaction.atomic():
        _lock_proposals()
        waiting = CapacityPlan.objects.filter(
            status=CapacityPlan.Status.PROPOSED, service_level=Decimal(str(plan_settings.service_level)),
            horizon_hours=plan_settings.horizon_hours, growth_pct_per_month=plan_settings.growth_pct_per_month,
        ).first()
        if waiting is not None:
            raise DuplicateProposal(
                f"Plan {waiting.pk} with the same settings is already waiting for a decision. Approve or reject it "
                f"first, or change the service level, horizon or growth.", plan_id=waiting.pk)
        preview = capacity_plan_preview(plan_settings)
        if not preview.lines:
            raise InvalidRequest(
                "No demand series has a forecast yet, so there is nothing to plan. Import demand history "
                "(python manage.py import_demand) or roll up the marketplace's metrics, then refresh the forecasts.",
                code="no_forecasts",
            )
        plan = CapacityPlan.objects.create(
            created_by=actor, horizon_hours=plan_settings.horizon_hours,
            service_level=Decimal(str(plan_settings.service_level)),
            growth_pct_per_month=plan_settings.growth_pct_per_month,
            total_monthly_cost=preview.total_monthly_cost, currency=preview.currency,
        )
        CapacityPlanLine.objects.bulk_create(
            CapacityPlanLine(
                plan=plan, series=item.series, forecast=item.forecast, unit=item.unit,
                capacity=item.line.capacity, peak_p50=item.line.peak_p50,
                peak_at_service_level=item.line.peak_at_service_level, peak_p95=item.line.peak_p95,
                required=item.line.required, delta=item.line.delta, delta_low=item.line.delta_low,
                delta_high=item.line.delta_high, action=item.line.action, nodes_hint=item.line.nodes_hint,
                monthly_cost=item.line.monthly_cost, currency=item.currency,
                weekly_growth_pct=item.trend.weekly_pct if item.trend else None,
                monthly_growth_pct=item.trend.monthly_pct if item.trend else None,
                explanation=item.line.explanation[:500],
            )
            for item in preview.lines
        )
    logger.info("Capacity plan %s proposed by %s: %d lines, %s %s a month", plan.pk, actor or "a task or command",
                len(preview.lines), plan.total_monthly_cost, plan.currency)
    return plan


def capacity_plan_decide(*, plan_id: int, approve: bool, actor: AbstractBaseUser | None = None,
                         note: str = "") -> CapacityPlan:
    """Approve or reject a proposed plan; a rejection needs a reason. Decided plans are kept as they are."""
    note = note.strip()
    if not approve and not note:
        raise InvalidRequest("Give a reason for rejecting the plan; the team that proposed it reads it.",
                             errors=[FieldProblem("reason", "Required when rejecting.", "required")])
    with transaction.atomic():
        plan = CapacityPlan.objects.select_for_update().filter(pk=plan_id).first()
        if plan is None:
            raise NotFound(f"There is no capacity plan {plan_id}; reload the page to see the current plans.")
        target = CapacityPlan.Status.APPROVED if approve else CapacityPlan.Status.REJECTED
        if plan.status != CapacityPlan.Status.PROPOSED:
            raise InvalidTransition(f"Capacity plan {plan_id} is already {plan.status}; only proposed plans are decided.",
                                    current=plan.status, requested=target)
        plan.status, plan.decided_by, plan.decided_at = target, actor, timezone.now()
        plan.decision_note = note[:500]
        plan.save(update_fields=["status", "decided_by", "decided_at", "decision_note"])
        audit_record(action="capacity_plan.approve" if approve else "capacity_plan.reject", obj=plan, actor=actor,
                     details={"before": {"status": CapacityPlan.Status.PROPOSED}, "after": {"status": target},
                              "reason": plan.decision_note, "total_monthly_cost": plan.total_monthly_cost,
                              "currency": plan.currency})
    logger.info("Capacity plan %s %s by %s", plan.pk, plan.status, actor)
    return plan


def _lock_proposals() -> None:
    """Serialise proposals, so two admins clicking at once cannot both propose the same plan.

    PostgreSQL takes a transaction-scoped advisory lock; SQLite's BEGIN IMMEDIATE already
    serialises every writer.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [PROPOSAL_LOCK_KEY])


def _plan_input(series: DemandSeries, forecast: DemandForecast, fleet: dict, currency: str, skipped: int) -> PlanInput:
    quantiles = {level: np.asarray(forecast.quantiles[str(level)][skipped:], dtype=float) for level in SERVICE_LEVELS}
    mase = forecast.backtest_mase.get(forecast.model_name)
    if series.source == DemandSeries.Source.MARKETPLACE:
        gpus, prices, node_sizes = fleet.get((series.gpu_model_id, series.region_id), (0, [], []))
        price = Decimal(str(median(prices))).quantize(Decimal("0.0001")) if prices else None
        node_size = Counter(node_sizes).most_common(1)[0][0] if node_sizes else None
        return PlanInput(key=series.key, label=series.label, unit=series.unit, capacity=gpus, quantiles=quantiles,
                         price_per_unit_hour=price, currency=currency, node_size=node_size,
                         model_name=forecast.model_name, model_mase=mase)
    capacity = (DemandPoint.objects.filter(series=series, capacity__isnull=False, hour__lt=forecast.first_hour)
                .order_by("-hour").values_list("capacity", flat=True).first())
    return PlanInput(key=series.key, label=series.label, unit=series.unit, capacity=int(capacity or 0),
                     quantiles=quantiles, price_per_unit_hour=series.price_per_unit_hour, currency=currency,
                     model_name=forecast.model_name, model_mase=mase)


def _fleet_by_series() -> dict[tuple[int, int], tuple[int, list, list]]:
    """Healthy GPUs, node prices and node sizes of the active fleet per (GPU model, region)."""
    fleet: dict[tuple[int, int], tuple[int, list, list]] = {}
    nodes = (Node.objects.filter(status=Node.Status.ACTIVE)
             .annotate(healthy=Count("gpus", filter=Q(gpus__health="healthy")))
             .values_list("gpu_model_id", "region_id", "healthy", "price_per_gpu_hour", "gpu_count"))
    for model_id, region_id, healthy, price, gpu_count in nodes:
        gpus, prices, sizes = fleet.setdefault((model_id, region_id), (0, [], []))
        prices.append(price)
        sizes.append(gpu_count)
        fleet[(model_id, region_id)] = (gpus + healthy, prices, sizes)
    return fleet
