"""HTMX page for admins: pending preemptions to approve or reject, their history, and the recent cycles."""

import logging

from django.contrib.admin.views.decorators import staff_member_required
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from marketplace.exceptions import MarketplaceError
from marketplace.permissions import require_permission

from .models import Preemption, SchedulingCycle
from .preemptions import preemption_approve, preemption_reject
from .tasks import request_cycle

logger = logging.getLogger(__name__)

HISTORY_SHOWN = 20
CYCLES_SHOWN = 10


@require_GET
@staff_member_required
def preemptions_page(request: HttpRequest) -> HttpResponse:
    require_permission(request, "scheduler.view_preemption", "Seeing preemptions needs the 'view preemption' permission.")
    return render(request, "preemptions/page.html", _context())


@require_GET
@staff_member_required
def preemptions_list(request: HttpRequest) -> HttpResponse:
    """Render the pending preemptions, history and cycles, which the page polls."""
    require_permission(request, "scheduler.view_preemption", "Seeing preemptions needs the 'view preemption' permission.")
    return render(request, "preemptions/_list.html", _context())


@require_POST
@staff_member_required
def preemptions_decide(request: HttpRequest, preemption_id: int) -> HttpResponse:
    """Approve a pending preemption (its grace period starts) or reject it with a reason."""
    require_permission(request, "scheduler.decide_preemption",
                       "Deciding on preemptions needs the 'approve or reject preemptions' permission.")
    decision = request.POST.get("decision")
    if decision not in ("approve", "reject"):
        return render(request, "preemptions/_list.html", _context(failed="Choose Approve or Reject."), status=400)
    try:
        if decision == "approve":
            preemption = preemption_approve(preemption_id=preemption_id, actor=request.user)
            message = (f"Preemption {preemption.pk} approved: the victims' agents must stop them by "
                       f"{preemption.grace_ends_at:%Y-%m-%d %H:%M:%S} UTC.")
        else:
            preemption_reject(preemption_id=preemption_id, actor=request.user, reason=request.POST.get("reason", ""))
            message = f"Preemption {preemption_id} rejected; the victims keep running."
    except MarketplaceError as error:
        logger.info("Decision %s on preemption %s failed: %s", decision, preemption_id, error)
        failed = str(error)
        if decision == "reject" and "reason" in failed:
            failed = f"Preemption {preemption_id}: give a reason to reject it."
        return render(request, "preemptions/_list.html", _context(failed=failed), status=error.status)
    except DatabaseError as error:
        logger.warning("Deciding on preemption %s failed in the database: %s", preemption_id, error)
        return render(request, "preemptions/_list.html", _context(
            failed="The database was busy or unavailable; nothing changed. Try again."), status=503)
    return render(request, "preemptions/_list.html", _context(done=message))


@require_POST
@staff_member_required
def cycle_now(request: HttpRequest) -> HttpResponse:
    """Ask for a scheduling cycle now (it runs in a worker, or at once without one)."""
    require_permission(request, "scheduler.request_schedulingcycle",
                       "Running a cycle needs the 'request a scheduling cycle now' permission.")
    request_cycle("admin")
    return render(request, "preemptions/_list.html", _context(done="A scheduling cycle was requested."))



def _context(*, done: str = "", failed: str = "") -> dict:
    related = ["beneficiary__customer", "beneficiary__workload__priority_class", "node", "decided_by"]
    victims = ["victims__reservation__customer", "victims__reservation__workload__priority_class"]
    pending = (Preemption.objects.filter(status=Preemption.Status.PENDING_APPROVAL)
               .select_related(*related).prefetch_related(*victims).order_by("created_at", "id"))
    history = (Preemption.objects.exclude(status=Preemption.Status.PENDING_APPROVAL)
               .select_related(*related).prefetch_related(*victims)[:HISTORY_SHOWN])
    return {"pending": pending, "history": history, "cycles": SchedulingCycle.objects.all()[:CYCLES_SHOWN],
            "messages_done": [done] if done else [], "messages_failed": [failed] if failed else []}
