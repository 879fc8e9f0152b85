"""Quotes and alternatives: what a request would cost and when it could start, without booking."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from marketplace.models import GpuModel, Node, Organization

from .alternatives import Alternatives, alternatives_find
from .models import RejectionReason, Reservation
from .placement import placement_diagnose, placement_rank
from .pricing import billed_gpu_milli, estimated_cost
from .quotas import quota_admit
from .selectors import NodeFilter
from .services import ReservationSpec, resolve_spec
from .solvers import PlacementRequest, get_policy


@dataclass(frozen=True)
class Quote:
    """The answer to "what would this cost, and when could it start", as of now.

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


def reservation_quote(
    *, customer: Organization, spec: ReservationSpec, now: datetime | None = None, policy_name: str | None = None,
) -> Quote:
    """Price ``spec`` as ``reservation_create`` would place it now, writing nothing.

    Raises ``InvalidRequest`` for input that can never succeed, as ``reservation_create`` does.
    A quote holds no capacity: a later reservation may find the capacity taken.
    """
    now = now or timezone.now()
    policy = get_policy(policy_name or settings.MARKETPLACE["PLACEMENT_POLICY"])
    resolved = resolve_spec(spec, now)
    request = resolved.request
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
        return _no_fit(customer, request, spec, node_filter, policy, now,
                       RejectionReason.QUOTA_EXCEEDED, decision.detail)

    admitted = NodeFilter(decision.admitted_model_ids, node_filter.region_id, node_filter.max_price_per_gpu_hour)
    ranked = placement_rank(request=request, start_at=spec.start_at, end_at=spec.end_at, node_filter=admitted,
                            policy=policy)
    if not ranked:
        outcome = placement_diagnose(request, spec.start_at, spec.end_at, admitted)
        return _no_fit(customer, request, spec, node_filter, policy, now, outcome.reason, outcome.detail)

    node = Node.objects.select_related("gpu_model", "region").get(pk=ranked[0].node_id)
    billed = billed_gpu_milli(request, node_gpu_count=node.gpu_count, node_cpu_millicores=node.cpu_millicores,
                              node_memory_mib=node.memory_mib)
    return Quote(
        fits=True, start_at=spec.start_at, end_at=spec.end_at, gpu_model=node.gpu_model.name,
        region=node.region.code, price_per_gpu_hour=node.price_per_gpu_hour, currency=node.currency,
        billed_gpu_milli=billed,
        estimated_cost=estimated_cost(price_per_gpu_hour=node.price_per_gpu_hour, billed_milli=billed,
                                      start_at=spec.start_at, end_at=spec.end_at),
    )


def _no_fit(customer, request, spec, node_filter, policy, now, reason: str, detail: str) -> Quote:
    alternatives = alternatives_find(
        customer_id=customer.id, request=request, start_at=spec.start_at, end_at=spec.end_at,
        node_filter=node_filter, policy=policy, now=now,
    )
    return Quote(fits=False, start_at=spec.start_at, end_at=spec.end_at, reason_code=str(reason), detail=detail,
                 alternatives=alternatives)


def reservation_alternatives(
    *, reservation: Reservation, now: datetime | None = None, policy_name: str | None = None,
) -> Alternatives:
    """Find alternatives for a rejected reservation, from the models, region and price it requested."""
    now = now or timezone.now()
    policy = get_policy(policy_name or settings.MARKETPLACE["PLACEMENT_POLICY"])
    model_ids = tuple(reservation.gpu_models.values_list("id", flat=True))
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
        policy=policy, now=now,
    )
