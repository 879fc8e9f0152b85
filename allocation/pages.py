"""HTMX pages for admins: the approval queue."""

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from marketplace.exceptions import MarketplaceError
from marketplace.models import GpuModel, Organization
from marketplace.permissions import require_permission

from .approvals import reservation_approve, reservation_reject
from .models import Quota, Reservation, ReservationStatus
from .pricing import estimated_cost
from .selectors import NodeFilter, customer_usage, offers

logger = logging.getLogger(__name__)

QUEUE_LIMIT = 100


@dataclass(frozen=True)
class QueueRow:
    """One reservation pending approval, with what it needs and what is free."""

    reservation: Reservation
    node: str
    gpu_model: str
    region: str
    needed_gpu_milli: int
    free_gpu_milli: int
    estimated_cost: Decimal
    currency: str
    quota_used_milli: int
    quota_limit_milli: int | None
    hold_minutes_left: int


@require_GET
@staff_member_required
def approvals_page(request: HttpRequest) -> HttpResponse:
    require_permission(request, "allocation.view_reservation", "The approval queue needs the 'view reservation' permission.")
    context = {
        "customers": Organization.objects.filter(kind=Organization.Kind.CUSTOMER).order_by("slug"),
        "gpu_models": GpuModel.objects.order_by("name"),
        **_queue_context(request.GET),
    }
    return render(request, "approvals/page.html", context)


@require_GET
@staff_member_required
def approvals_table(request: HttpRequest) -> HttpResponse:
    require_permission(request, "allocation.view_reservation", "The approval queue needs the 'view reservation' permission.")
    return render(request, "approvals/_table.html", _queue_context(request.GET))


@require_POST
@staff_member_required
def approvals_decide(request: HttpRequest) -> HttpResponse:
    """Approve or reject the selected reservations, then render the refreshed table with a message."""
    require_permission(request, "allocation.approve_reservation",
                       "Deciding on reservations needs the 'approve or reject reservations' permission.")
    decision = request.POST.get("decision")
    values = request.POST.getlist("ids")
    ids = [int(value) for value in values if _is_id(value)]
    reason = request.POST.get("reason", "")
    messages, errors = [], []

    if decision not in ("approve", "reject"):
        errors.append("Choose Approve or Reject.")
    elif len(ids) < len(values):
        malformed = ", ".join(repr(value[:20]) for value in values if not _is_id(value))
        errors.append(f"Reservation ids must be whole numbers; these are not: {malformed}. Select rows in the table.")
        logger.info("Approval decision by %s rejected: ids that are not whole numbers: %s", request.user, malformed)
    elif not ids:
        errors.append("Select at least one reservation.")
    else:
        for reservation_id in ids:
            try:
                if decision == "approve":
                    reservation_approve(reservation_id=reservation_id, actor=request.user)
                else:
                    reservation_reject(reservation_id=reservation_id, actor=request.user, reason=reason)
            except MarketplaceError as error:
                errors.append(f"Reservation {reservation_id}: {error}")
                logger.info("Decision %s on reservation %s failed: %s", decision, reservation_id, error)
                continue
            messages.append(f"Reservation {reservation_id} {'approved' if decision == 'approve' else 'rejected'}.")

    context = {**_queue_context(request.POST), "messages_done": messages, "messages_failed": errors}
    return render(request, "approvals/_table.html", context, status=400 if errors and not messages else 200)


def _is_id(value: str) -> bool:
    """Return whether ``value`` is a row id: ASCII digits that fit a bigint (``"²".isdigit()`` is true)."""
    return value.isascii() and value.isdigit() and len(value) < 19


def _queue_context(params) -> dict:
    pending = (
        Reservation.objects.filter(status=ReservationStatus.PENDING_APPROVAL)
        .select_related("customer", "allocation__node__region", "allocation__gpu_model")
        .order_by("hold_expires_at", "id")
    )
    filters = {"customer": params.get("customer", ""), "gpu_model": params.get("gpu_model", ""),
               "min_gpus": params.get("min_gpus", "")}
    if filters["customer"]:
        pending = pending.filter(customer__slug=filters["customer"])
    if filters["gpu_model"]:
        pending = pending.filter(allocation__gpu_model__name=filters["gpu_model"])
    if filters["min_gpus"].isascii() and filters["min_gpus"].isdigit() and len(filters["min_gpus"]) < 6:
        pending = pending.filter(gpu_count__gte=int(filters["min_gpus"]))

    now = timezone.now()
    rows = [_row(reservation, now) for reservation in pending[:QUEUE_LIMIT]]
    return {"rows": rows, "filters": filters, "total": pending.count(), "now": now}


def _row(reservation: Reservation, now: datetime) -> QueueRow:
    allocation = reservation.allocation
    free = offers(reservation.start_at, reservation.end_at, NodeFilter((allocation.gpu_model_id,)))
    quota = Quota.objects.filter(organization_id=reservation.customer_id, gpu_model__isnull=True).first()
    usage = customer_usage(reservation.customer_id, reservation.start_at, reservation.end_at)
    return QueueRow(
        reservation=reservation,
        node=allocation.node.hostname,
        gpu_model=allocation.gpu_model.name,
        region=allocation.node.region.code,
        needed_gpu_milli=allocation.gpu_milli_total,
        free_gpu_milli=sum(offer.gpu_milli_free for offer in free),
        estimated_cost=estimated_cost(price_per_gpu_hour=allocation.price_per_gpu_hour,
                                      billed_milli=allocation.billed_gpu_milli,
                                      start_at=allocation.start_at, end_at=allocation.end_at),
        currency=allocation.currency,
        quota_used_milli=usage.total,
        quota_limit_milli=quota.max_gpu_milli if quota else None,
        hold_minutes_left=max(int((reservation.hold_expires_at - now).total_seconds() // 60), 0)
        if reservation.hold_expires_at else 0,
    )
