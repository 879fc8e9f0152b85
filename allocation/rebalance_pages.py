"""HTMX page for admins: propose rebalancing plans, read each move's reasons, approve or reject them."""

import logging

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from marketplace.exceptions import MarketplaceError
from marketplace.permissions import require_permission

from .models import RebalancePlan, SolverRun
from .rebalancing import rebalance_decide, rebalance_propose

logger = logging.getLogger(__name__)

PLANS_SHOWN = 10
RUNS_SHOWN = 10


@require_GET
@staff_member_required
def rebalancing_page(request: HttpRequest) -> HttpResponse:
    require_permission(request, "allocation.view_rebalanceplan", "Seeing rebalancing plans needs the 'view rebalance plan' permission.")
    return render(request, "rebalancing/page.html", _context())


@require_POST
@staff_member_required
def rebalancing_propose(request: HttpRequest) -> HttpResponse:
    """Run the planner now and show the refreshed plans."""
    require_permission(request, "allocation.add_rebalanceplan", "Proposing a plan needs the 'add rebalance plan' permission.")
    try:
        plan = rebalance_propose()
    except MarketplaceError as error:
        logger.info("Proposing a rebalancing plan failed: %s", error)
        return render(request, "rebalancing/_plans.html", _context(failed=str(error)), status=error.status)
    except DatabaseError as error:
        return _database_failed(request, "Proposing a plan", error)
    if plan is None:
        run = SolverRun.objects.filter(kind=SolverRun.Kind.REBALANCE).first()
        hours = settings.MARKETPLACE["REBALANCE_HORIZON_HOURS"]
        message = (f"No reservation without do-not-migrate is scheduled to start within the next {hours} hours; "
                   f"nothing to move." if run is not None and run.requests == 0 else
                   "No move gains enough to be worth its disruption; nothing proposed.")
    else:
        count = plan.moves.count()
        message = f"Plan {plan.pk} proposed with {count} move{'' if count == 1 else 's'}."
    return render(request, "rebalancing/_plans.html", _context(done=message))


@require_POST
@staff_member_required
def rebalancing_decide(request: HttpRequest, plan_id: int) -> HttpResponse:
    """Apply or reject one proposed plan; a rejection needs a reason."""
    require_permission(request, "allocation.approve_rebalanceplan",
                       "Deciding on plans needs the 'approve or reject rebalancing plans' permission.")
    decision = request.POST.get("decision")
    if decision not in ("approve", "reject"):
        return render(request, "rebalancing/_plans.html", _context(failed="Choose Approve or Reject."), status=400)
    try:
        plan = rebalance_decide(plan_id=plan_id, approve=decision == "approve", actor=request.user,
                                note=request.POST.get("reason", ""))
    except MarketplaceError as error:
        logger.info("Decision %s on rebalancing plan %s failed: %s", decision, plan_id, error)
        return render(request, "rebalancing/_plans.html", _context(failed=f"Plan {plan_id}: {error}"),
                      status=error.status)
    except DatabaseError as error:
        return _database_failed(request, f"Deciding on plan {plan_id}", error)
    return render(request, "rebalancing/_plans.html", _context(done=f"Plan {plan.pk} {plan.status}: {plan.decision_note}"))


def _database_failed(request: HttpRequest, action: str, error: DatabaseError) -> HttpResponse:
    """Return a 503 page when the database rejects or drops the transaction, which rolled back, so nothing changed."""
    logger.warning("%s failed in the database: %s: %s", action, type(error).__name__, error)
    message = f"{action} failed because the database was busy or unavailable; nothing changed. Try again."
    return render(request, "rebalancing/_plans.html", {"messages_failed": [message], "plans": [], "runs": []},
                  status=503)



def _context(*, done: str = "", failed: str = "") -> dict:
    plans = RebalancePlan.objects.select_related("decided_by", "solver_run").prefetch_related(
        "moves__from_node", "moves__to_node")[:PLANS_SHOWN]
    runs = SolverRun.objects.filter(kind=SolverRun.Kind.REBALANCE)[:RUNS_SHOWN]
    return {"plans": plans, "runs": runs, "messages_done": [done] if done else [],
            "messages_failed": [failed] if failed else []}
