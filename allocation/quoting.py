"""Quotes and alternatives: what a request would cost and when it could start, without booking."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from marketplace.models import GpuModel, Node, Organization

from .alternatives import Alternatives, alternatives_find
from .approval_policy import approval_reason
from .budgets import budget_admit, budget_fits, combined_price_cap
from .models import RejectionReason, Reservation
from .placement import placement_diagnose, placement_rank
from .pricing import billed_gpu_milli, charged_price, estimated_cost
from .quotas import quota_admit
from .selectors import NodeFilter
from .services import ReservationSpec, interruptible_price_factor, node_price_cap, resolve_spec
from scheduler.terms import workload_terms
from .placement_policy import placement_policy
from .solvers import PlacementRequest


@dataclass(frozen=True)
class Quote:
    """The price and start of a request as placement would see it now, without booking.

    When ``fits`` is true, the best placement's model, region and price are given; otherwise
    ``reason_code`` says why and ``alternatives`` says when it would fit and where else it fits now.
    """

    fits: bool
    start_at: datetime
    end_at: datetime
    reason_code: str = ""
    detail: str = ""
    gpu_model: str = ""
    region: str = ""
    price_per_gpu_hour: Decimal | None = None
    currency: str = ""
    billed_gpu_milli: int = 0
    estimated_cost: Decimal | None = None
    alternatives: Alternatives | None = None
    needs_approval: bool = False


def reservation_quote(
    *, customer: Organization, spec: ReservationSpec, now: datetime | None = None, policy_name: str | None = None,
) -> Quote:
    """Price ``spec`` as ``reservation_create`` would place it now, writing nothing.

    Raises ``InvalidRequest`` for input that can never succeed, as ``reservation_create`` does.
    A quote reserves no capacity, so a later reservation may find the capacity taken.
    """
    now = now or timezone.now()
    policy = placement_policy(policy_name)
    resolved = resolve_spec(spec, now)
    workload_terms(spec, now)
    request = resolved.request
    factor = interruptible_price_factor() if spec.interruptible else Decimal(1)
    model_names = {model.id: model.name for model in resolved.models}
    node_filter = NodeFilter(
        gpu_model_ids=tuple(model_names), region_id=resolved.region.id if resolved.region else None,
        max_price_per_gpu_hour=spec.max_price_per_gpu_hour,
    )

    decision = quota_admit(
        customer_id=customer.id, model_ids=tuple(model_names), model_names=model_names,
        gpu_milli=request.gpu_milli_total, start_at=spec.start_at, end_at=spec.end_at,
    )
    if not decision.admitted_model_ids:
        return _no_fit(customer, request, spec, node_filter, factor, policy, now,
                       RejectionReason.QUOTA_EXCEEDED, decision.detail)
    budget = budget_admit(customer_id=customer.id, gpu_milli=request.gpu_milli_total, start_at=spec.start_at,
                          end_at=spec.end_at)
    if budget.refusal:
        return _no_fit(customer, request, spec, node_filter, factor, policy, now, RejectionReason.BUDGET_EXCEEDED,
                       budget.refusal)

    price_cap, budget_binds = combined_price_cap(spec.max_price_per_gpu_hour, budget)
    admitted = NodeFilter(decision.admitted_model_ids, node_filter.region_id, node_price_cap(price_cap, factor))
    ranked = placement_rank(request=request, start_at=spec.start_at, end_at=spec.end_at, node_filter=admitted,
                            policy=policy)
    for placement in ranked:
        node = Node.objects.select_related("gpu_model", "region").get(pk=placement.node_id)
        billed = billed_gpu_milli(request, node_gpu_count=node.gpu_count, node_cpu_millicores=node.cpu_millicores,
                                  node_memory_mib=node.memory_mib)
        price = charged_price(node.price_per_gpu_hour, factor)
        if not budget_fits(budget=budget.budget, billed_milli=billed, price_per_gpu_hour=price,
                           start_at=spec.start_at, end_at=spec.end_at):
            continue
        cost = estimated_cost(price_per_gpu_hour=price, billed_milli=billed,
                              start_at=spec.start_at, end_at=spec.end_at)
        needs_approval = approval_reason(customer_id=customer.id, gpu_count=request.gpu_count, estimated_cost=cost)
        return Quote(
            fits=True, start_at=spec.start_at, end_at=spec.end_at, gpu_model=node.gpu_model.name,
            region=node.region.code, price_per_gpu_hour=price, currency=node.currency,
            billed_gpu_milli=billed, estimated_cost=cost,
            detail=f"Needs an admin's approval because {needs_approval}." if needs_approval else "",
            needs_approval=bool(needs_approval),
        )

    if ranked:
        return _no_fit(customer, request, spec, node_filter, factor, policy, now, RejectionReason.BUDGET_EXCEEDED,
                       "On every node that fits, the charge would take the organization past its budget.")
    outcome = placement_diagnose(request, spec.start_at, spec.end_at, admitted, price_factor=factor)
    reason, detail = outcome.reason, outcome.detail
    if budget_binds and reason == RejectionReason.PRICE_ABOVE_MAXIMUM:
        reason = RejectionReason.BUDGET_EXCEEDED
        detail = f"What is left of the organization's budget pays at most {price_cap} per GPU-hour for this window."
    return _no_fit(customer, request, spec, node_filter, factor, policy, now, reason, detail)


def _no_fit(customer, request, spec, node_filter, price_factor, policy, now, reason: str, detail: str) -> Quote:
    alternatives = alternatives_find(
        customer_id=customer.id, request=request, start_at=spec.start_at, end_at=spec.end_at,
        node_filter=node_filter, policy=policy, now=now, price_factor=price_factor,
    )
    return Quote(fits=False, start_at=spec.start_at, end_at=spec.end_at, reason_code=str(reason), detail=detail,
                 alternatives=alternatives)


def reservation_alternatives(
    *, reservation: Reservation, now: datetime | None = None, policy_name: str | None = None,
) -> Alternatives:
    """Find alternatives for a rejected reservation, from the models, region and price it requested."""
    now = now or timezone.now()
    workload = getattr(reservation, "workload", None)  # Attached by the services that rejected it.
    factor = interruptible_price_factor() if workload is not None and workload.interruptible else Decimal(1)
    policy = placement_policy(policy_name)
    # all() reads the prefetched models that a reservation built by the express path carries.
    model_ids = tuple(model.id for model in reservation.gpu_models.all())
    if not model_ids:
        model_ids = tuple(GpuModel.objects.values_list("id", flat=True))
    request = PlacementRequest(
        gpu_count=reservation.gpu_count, gpu_milli_per_gpu=reservation.gpu_milli_per_gpu,
        cpu_millicores=reservation.cpu_millicores, memory_mib=reservation.memory_mib,
    )
    return alternatives_find(
        customer_id=reservation.customer_id, request=request, start_at=reservation.start_at,
        end_at=reservation.end_at,
        node_filter=NodeFilter(model_ids, reservation.region_id, reservation.max_price_per_gpu_hour),
        policy=policy, now=now, price_factor=factor,
    )
