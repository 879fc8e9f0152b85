"""HTMX page for admins: forecasts, what-if capacity plans, and the approval of proposed plans."""

import logging

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_POST

from marketplace.broker import BROKER_ERRORS
from marketplace.exceptions import MarketplaceError
from marketplace.permissions import require_permission

from .charts import ForecastChart, forecast_svg
from .models import CapacityPlan, DemandForecast
from .planner import SERVICE_LEVELS
from .planning import PlanSettings, PreviewLine, capacity_plan_decide, capacity_plan_preview, capacity_plan_propose
from .tasks import refresh_capacity_forecasts_task

logger = logging.getLogger(__name__)

CHART_HISTORY_HOURS = 7 * 24
PLANS_SHOWN = 20


@require_GET
@staff_member_required
def capacity_page(request: HttpRequest) -> HttpResponse:
    require_permission(request, "capacity.view_capacityplan", "Capacity planning needs the 'view capacity plan' permission.")
    context = {"levels": SERVICE_LEVELS, "plan_settings": PlanSettings(),
               "max_horizon": settings.MARKETPLACE["FORECAST_HORIZON_HOURS"], **_preview_context(PlanSettings()),
               **_plans_context()}
    return render(request, "capacity/page.html", context)


@require_GET
@staff_member_required
def capacity_preview(request: HttpRequest) -> HttpResponse:
    """Render the plan for the query string's settings, recomputed from the stored forecasts."""
    require_permission(request, "capacity.view_capacityplan", "Capacity planning needs the 'view capacity plan' permission.")
    try:
        plan_settings = PlanSettings.parse(request.GET)
    except MarketplaceError as error:
        return render(request, "capacity/_errors.html", {"errors": error.errors or [error]}, status=400)
    return render(request, "capacity/_preview.html", _preview_context(plan_settings))


@require_POST
@staff_member_required
def capacity_propose(request: HttpRequest) -> HttpResponse:
    """Save the plan for the posted settings as a proposal and show the refreshed list of plans."""
    require_permission(request, "capacity.add_capacityplan", "Proposing a plan needs the 'add capacity plan' permission.")
    try:
        plan = capacity_plan_propose(plan_settings=PlanSettings.parse(request.POST), actor=request.user)
    except MarketplaceError as error:
        logger.info("Proposing a capacity plan failed: %s", error)
        return render(request, "capacity/_plans.html", {**_plans_context(), "messages_failed": [str(error)]},
                      status=error.status)
    return render(request, "capacity/_plans.html", {**_plans_context(), "messages_done": [f"Plan {plan.pk} proposed."]})


@require_POST
@staff_member_required
def capacity_decide(request: HttpRequest, plan_id: int) -> HttpResponse:
    """Approve or reject one proposed plan; a rejection needs a reason."""
    require_permission(request, "capacity.approve_capacityplan",
                       "Deciding on plans needs the 'approve or reject capacity plans' permission.")
    decision = request.POST.get("decision")
    if decision not in ("approve", "reject"):
        return render(request, "capacity/_plans.html", {**_plans_context(), "messages_failed": [
            "Choose Approve or Reject."]}, status=400)
    try:
        plan = capacity_plan_decide(plan_id=plan_id, approve=decision == "approve", actor=request.user,
                                    note=request.POST.get("reason", ""))
    except MarketplaceError as error:
        logger.info("Decision %s on capacity plan %s failed: %s", decision, plan_id, error)
        return render(request, "capacity/_plans.html", {**_plans_context(), "messages_failed": [
            f"Plan {plan_id}: {error}"]}, status=error.status)
    return render(request, "capacity/_plans.html", {**_plans_context(), "messages_done": [
        f"Plan {plan.pk} {plan.status}."]})


@require_GET
@staff_member_required
def capacity_plan_detail(request: HttpRequest, plan_id: int) -> HttpResponse:
    require_permission(request, "capacity.view_capacityplan", "Capacity planning needs the 'view capacity plan' permission.")
    plan = get_object_or_404(CapacityPlan.objects.select_related("created_by", "decided_by"), pk=plan_id)
    lines = plan.lines.select_related("series").order_by("series__source", "series__key")
    return render(request, "capacity/plan.html", {"plan": plan, "lines": lines})


@require_POST
@staff_member_required
def capacity_refresh(request: HttpRequest) -> HttpResponse:
    """Queue the rollup and forecast refresh. Without a broker (the demo) it runs before the response."""
    require_permission(request, "capacity.add_demandforecast", "Refreshing forecasts needs the 'add demand forecast' permission.")
    try:
        result = refresh_capacity_forecasts_task.delay()
    except BROKER_ERRORS as error:
        logger.warning("Forecast refresh requested by %s could not be queued: %s", request.user, error)
        return HttpResponse('<p class="error" role="alert">The task broker (Redis) is unavailable, so the refresh '
                            'was not queued. Retry in a minute; the daily refresh also runs on its own.</p>',
                            status=503, headers={"Retry-After": "60"})
    message = ("Forecasts refreshed." if result.ready() else
               "Forecast refresh queued; reload the page in a minute to see the new forecasts.")
    logger.info("Forecast refresh requested by %s: %s", request.user, message)
    return HttpResponse(f'<p class="ok" role="status">{message}</p>')



def _preview_context(plan_settings: PlanSettings) -> dict:
    preview = capacity_plan_preview(plan_settings)
    return {"preview": preview, "chart_rows": [(item, _chart(item, plan_settings)) for item in preview.lines]}


def _plans_context() -> dict:
    plans = CapacityPlan.objects.select_related("created_by", "decided_by")[:PLANS_SHOWN]
    return {"plans": plans, "proposed_count": CapacityPlan.objects.filter(status=CapacityPlan.Status.PROPOSED).count()}


def _chart(item: PreviewLine, plan_settings: PlanSettings) -> str:
    forecast: DemandForecast = item.forecast
    # The forecast is drawn from the end of the history, through the hours the plan skipped
    # because they have passed, to the end of the plan's horizon.
    shown = min(item.skipped_hours + plan_settings.horizon_hours, forecast.horizon_hours)
    history = item.history[-CHART_HISTORY_HOURS:]

    def band(level: str) -> list[float]:
        return forecast.quantiles[level][:shown]

    chart = ForecastChart(
        title=f"{item.series.label}: history, forecast ({forecast.model_name}) and capacity",
        history=[None if value != value else float(value) for value in history],
        point=forecast.quantiles["point"][:shown], lower_80=band("0.1"), upper_80=band("0.9"),
        lower_95=band("0.025"), upper_95=band("0.975"), capacity=item.line.capacity, required=item.line.required,
        unit=item.unit,
    )
    return mark_safe(forecast_svg(chart))  # noqa: S308 - forecast_svg escapes every text it embeds.
