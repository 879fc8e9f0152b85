"""The provider portal (HTMX, provider login): nodes and GPUs with live health, prices, maintenance, earnings."""

import logging
from datetime import datetime, timedelta, timezone as dt_timezone
from functools import wraps

from django.contrib.auth.views import LoginView
from django.db.models import Avg
from django.db.models.functions import TruncDate
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET, require_POST

from marketplace.exceptions import MarketplaceError
from marketplace.models import GpuModel, GpuReadingHour, MaintenanceWindow, Node, Organization

from .metering import earnings, month_bounds
from .portal_services import (
    maintenance_create, maintenance_delete, minimum_price, minimum_price_set, model_price_set, node_price_set,
    parse_price, payouts_csv,
)

logger = logging.getLogger(__name__)

MONTHS_SHOWN = 6
UTILIZATION_DAYS = 14


class ProviderLoginView(LoginView):
    template_name = "portal/login.html"
    redirect_authenticated_user = True

    def get_default_redirect_url(self):
        return "/provider/"


def provider_required(view):
    """Let only members of a provider organization in; others go to the login page or get a 403."""
    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect(f"/provider/login/?next={request.path}")
        membership = getattr(request.user, "membership", None)
        if membership is None or membership.organization.kind != Organization.Kind.PROVIDER:
            return HttpResponse("This portal is for provider organizations; your user belongs to none.", status=403)
        request.provider = membership.organization
        return view(request, *args, **kwargs)
    return wrapped


@require_GET
@provider_required
def portal_page(request: HttpRequest) -> HttpResponse:
    return render(request, "portal/page.html", {**_nodes_context(request.provider), **_money_context(request.provider),
                                                **_maintenance_context(request.provider)})


@require_GET
@provider_required
def portal_nodes(request: HttpRequest) -> HttpResponse:
    return render(request, "portal/_nodes.html", _nodes_context(request.provider))


@require_POST
@provider_required
def node_price(request: HttpRequest, node_id: int) -> HttpResponse:
    def change() -> str:
        price = parse_price(request.POST.get("price", ""), "price")
        node = node_price_set(provider=request.provider, node_id=node_id, price=price, actor=request.user)
        return f"Node {node.hostname} now costs {price} per GPU-hour for new bookings."
    return _change(request, "portal/_nodes.html", _nodes_context, change)


@require_POST
@provider_required
def model_price(request: HttpRequest) -> HttpResponse:
    def change() -> str:
        model_id = request.POST.get("gpu_model", "")
        price = parse_price(request.POST.get("price", ""), "price")
        count = model_price_set(provider=request.provider, gpu_model_id=_id_or_zero(model_id),
                                price=price, actor=request.user)
        return f"{count} node{'s' if count != 1 else ''} now cost {price} per GPU-hour for new bookings."
    return _change(request, "portal/_nodes.html", _nodes_context, change)


@require_POST
@provider_required
def minimum(request: HttpRequest) -> HttpResponse:
    def change() -> str:
        price = parse_price(request.POST.get("minimum", ""), "minimum")
        minimum_price_set(provider=request.provider, price=price, actor=request.user)
        return f"Your minimum price is now {price} per GPU-hour."
    return _change(request, "portal/_nodes.html", _nodes_context, change)


@require_POST
@provider_required
def maintenance_add(request: HttpRequest) -> HttpResponse:
    def change() -> str:
        start, end = (_aware(request.POST.get(name, "")) for name in ("start_at", "end_at"))
        node_id = request.POST.get("node", "")
        window, moved = maintenance_create(provider=request.provider, node_id=_id_or_zero(node_id),
                                           start_at=start, end_at=end, reason=request.POST.get("reason", ""),
                                           actor=request.user)
        return (f"Maintenance of {window.node.hostname} booked; {_reservations(moved['moving'])} to move to other "
                f"nodes, {_reservations(moved['staying'])} staying, whose customers were told.")
    return _change(request, "portal/_maintenance.html", _maintenance_context, change)


@require_POST
@provider_required
def maintenance_remove(request: HttpRequest, window_id: int) -> HttpResponse:
    def change() -> str:
        maintenance_delete(provider=request.provider, window_id=window_id, actor=request.user)
        return f"Maintenance window {window_id} cancelled."
    return _change(request, "portal/_maintenance.html", _maintenance_context, change)


@require_GET
@provider_required
def payouts(request: HttpRequest) -> HttpResponse:
    """Return the payouts report of one month (``?month=YYYY-MM``, default this month) as CSV."""
    month = (request.GET.get("month") or timezone.now().strftime("%Y-%m")).strip()
    bounds = month_bounds(month)
    if bounds is None:
        return HttpResponse(f"month {month[:20]!r} is not a month; use the form 2026-05.", status=400,
                            content_type="text/plain")
    start, end = bounds
    response = HttpResponse(payouts_csv(provider=request.provider, start=start, end=end), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="payouts-{request.provider.slug}-{month}.csv"'
    return response


def _change(request: HttpRequest, template: str, context, change) -> HttpResponse:
    try:
        message = change()
    except MarketplaceError as error:
        logger.info("Portal change by %s failed: %s", request.user, error)
        return render(request, template, {**context(request.provider), "messages_failed": [str(error)]},
                      status=error.status)
    return render(request, template, {**context(request.provider), "messages_done": [message]})


def _id_or_zero(text: str) -> int:
    """Return ``text`` as a row id, or 0 (no row) unless it is plain ASCII digits; ``"²".isdigit()`` is true."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else 0


def _reservations(count: int) -> str:
    return f"{count} reservation{'s' if count != 1 else ''}"


def _aware(text: str) -> datetime:
    try:
        parsed = parse_datetime(text.strip()) if text else None
    except ValueError:  # a date that does not exist, such as February 30
        parsed = None
    if parsed is None:
        raise MarketplaceError(detail=f"{text[:30]!r} is not a date and time; use the form 2026-05-01T10:00.",
                               code="invalid_request", status=400)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt_timezone.utc)


def _next_month(start: datetime) -> datetime:
    return (start + timedelta(days=32)).replace(day=1)


def _nodes_context(provider: Organization) -> dict:
    nodes = (Node.objects.filter(provider=provider).select_related("gpu_model", "region")
             .prefetch_related("gpus").order_by("hostname"))
    models = GpuModel.objects.filter(nodes__provider=provider).distinct().order_by("name")
    return {"nodes": nodes, "models": models, "minimum": minimum_price(provider), "now": timezone.now()}


def _maintenance_context(provider: Organization) -> dict:
    windows = (MaintenanceWindow.objects.filter(node__provider=provider, end_at__gt=timezone.now())
               .select_related("node").order_by("start_at"))
    return {"windows": windows, "node_choices": Node.objects.filter(provider=provider).order_by("hostname")}


def _money_context(provider: Organization) -> dict:
    months, start = [], timezone.now().astimezone(dt_timezone.utc).replace(day=1, hour=0, minute=0, second=0,
                                                                          microsecond=0)
    for _ in range(MONTHS_SHOWN):
        statement = earnings(provider_id=provider.pk, start=start, end=_next_month(start))
        months.append({"month": start.strftime("%Y-%m"), "total": statement.total, "gpu_hours": statement.gpu_hours,
                       "entries": statement.entries})
        start = (start - timedelta(days=1)).replace(day=1)
    since = timezone.now() - timedelta(days=UTILIZATION_DAYS)
    days = list(GpuReadingHour.objects.filter(gpu__node__provider=provider, hour__gte=since)
                .annotate(day=TruncDate("hour")).values("day").annotate(utilization=Avg("utilization_mean_pct"))
                .order_by("day"))
    return {"months": months, "utilization": _bars([(row["day"].strftime("%m-%d"), row["utilization"] or 0)
                                                    for row in days], maximum=100, unit="%"),
            "earnings_chart": _bars([(row["month"], float(row["total"])) for row in reversed(months)], unit="")}


def _bars(points: list[tuple[str, float]], *, maximum: float | None = None, unit: str) -> dict:
    """Return bar geometry for a small server-drawn SVG chart."""
    top = maximum or max([value for _, value in points] + [1.0])
    width = 36
    return {"width": max(len(points), 1) * width + 10, "bars": [
        {"x": 5 + index * width, "height": round(100 * value / top, 1), "y": round(110 - 100 * value / top, 1),
         "value_y": round(108 - 100 * value / top, 1), "label": label, "value": f"{value:.0f}{unit}" if unit else f"{value:.2f}"}
        for index, (label, value) in enumerate(points)]}
