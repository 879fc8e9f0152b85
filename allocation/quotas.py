"""Quota admission: which GPU models a customer may still use for a request in a window."""

from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from django.db import connection
from django.db.models import Sum

from .models import Cohort, CohortMembership, Quota
from .selectors import CustomerUsage, cohort_peak_usage, customer_usage


@dataclass(frozen=True)
class QuotaDecision:
    """The GPU models the quota admits; ``detail`` explains a rejection when none is admitted.

    ``borrowed_gpu_milli`` is the part of the request above the organization's own quota over all
    models, admitted from its cohort's unused quota.
    """

    admitted_model_ids: tuple[int, ...]
    detail: str = ""
    borrowed_gpu_milli: int = 0


def quota_admit(
    *, customer_id: int, model_ids: tuple[int, ...], model_names: dict[int, str], gpu_milli: int,
    start_at: datetime, end_at: datetime, quotas: list[tuple[int | None, int]] | None = None,
    read_usage: Callable[..., CustomerUsage] = customer_usage,
) -> QuotaDecision:
    """Return the models in ``model_ids`` on which ``gpu_milli`` more fits the customer's quotas.

    Usage is the customer's peak over the instants of the window, so the limit applies at every
    instant. The caller has locked the customer's row, so concurrent requests of one customer are
    checked one after another. ``quotas`` gives the customer's ``(gpu_model_id, max_gpu_milli)``
    rows when the caller has read them already. ``read_usage`` reads the customer's usage, with the
    signature of ``selectors.customer_usage``. The express path passes the capacity ledger's.
    """
    if quotas is None:
        quotas = list(Quota.objects.filter(organization_id=customer_id).values_list("gpu_model_id", "max_gpu_milli"))
    if not quotas or gpu_milli == 0:
        return QuotaDecision(admitted_model_ids=model_ids)

    limits = dict(quotas)
    usage_bound = read_usage(customer_id, start_at, end_at, exact=False)
    if _within_limits(limits, usage_bound, model_ids, gpu_milli):
        return QuotaDecision(admitted_model_ids=model_ids)
    peaks = read_usage(customer_id, start_at, end_at)
    usage, total_usage = peaks.by_model, peaks.total

    overall_limit = limits.get(None)
    borrowed = 0
    if overall_limit is not None and total_usage + gpu_milli > overall_limit:
        borrowed, refusal = _borrow_from_cohort(customer_id, overall_limit, total_usage, gpu_milli, start_at, end_at)
        if refusal:
            return QuotaDecision(admitted_model_ids=(), detail=refusal)

    admitted = tuple(
        model_id for model_id in model_ids
        if limits.get(model_id) is None or usage.get(model_id, 0) + gpu_milli <= limits[model_id]
    )
    if admitted:
        return QuotaDecision(admitted_model_ids=admitted, borrowed_gpu_milli=borrowed)

    names = ", ".join(sorted(model_names[model_id] for model_id in model_ids))
    return QuotaDecision(
        admitted_model_ids=(),
        detail=(
            f"The organization's quota for {names} cannot hold {gpu_milli} more GPU milli in this "
            f"window. Allow another GPU model, choose another window, or ask an admin to raise the quota."
        ),
    )


def _within_limits(limits: dict, usage: CustomerUsage, model_ids: tuple[int, ...], gpu_milli: int) -> bool:
    """Return whether ``gpu_milli`` more fits every limit on every model, judged from ``usage``."""
    overall = limits.get(None)
    if overall is not None and usage.total + gpu_milli > overall:
        return False
    return all(
        limits.get(model_id) is None or usage.by_model.get(model_id, 0) + gpu_milli <= limits[model_id]
        for model_id in model_ids
    )


def _borrow_from_cohort(
    customer_id: int, own_limit: int, usage: int, gpu_milli: int, start_at: datetime, end_at: datetime,
) -> tuple[int, str]:
    """Return ``(borrowed_milli, "")`` when the cohort can lend what exceeds ``own_limit``, else ``(0, reason)``.

    The organization may go above its own quota by at most its borrowing limit, and the cohort's
    members together may not go above the sum of their own quotas over all models. The cohort row
    is locked, so members' concurrent admissions are checked one after another.

    NOTE: a member within its own quota is always admitted, because its quota is guaranteed, even
    when others have borrowed that quota meanwhile. The cohort can then use more than its summed
    quota until the borrowed allocations (``borrowed_gpu_milli``) end or are preempted, and
    preemption of borrowed usage does not exist yet.
    """
    over_own_quota = (
        f"The organization uses up to {usage} GPU milli at once in this window and its quota over all "
        f"models is {own_limit}; {gpu_milli} more do not fit."
    )
    fix = "Cancel a reservation, choose a window with less usage, or ask an admin to raise the quota."
    membership = CohortMembership.objects.filter(organization_id=customer_id).select_related("cohort").first()
    if membership is None:
        return 0, f"{over_own_quota} {fix}"

    if connection.features.has_select_for_update and connection.in_atomic_block:
        # Admissions lock the cohort; read-only callers (quotes, alternatives) run outside a transaction.
        Cohort.objects.select_for_update().only("id").get(pk=membership.cohort_id)
    borrowed = usage + gpu_milli - own_limit
    limit = membership.borrowing_limit_gpu_milli
    if limit is not None and borrowed > limit:
        return 0, (f"{over_own_quota} Borrowing {borrowed} from cohort {membership.cohort.slug!r} would exceed the "
                   f"organization's borrowing limit of {limit}. {fix}")

    member_ids = CohortMembership.objects.filter(cohort_id=membership.cohort_id).values("organization_id")
    cohort_quota = Quota.objects.filter(organization_id__in=member_ids, gpu_model__isnull=True).aggregate(
        total=Sum("max_gpu_milli"))["total"] or 0
    cohort_usage = cohort_peak_usage(membership.cohort_id, start_at, end_at)
    if cohort_usage + gpu_milli > cohort_quota:
        return 0, (f"{over_own_quota} Cohort {membership.cohort.slug!r} uses up to {cohort_usage} of its "
                   f"{cohort_quota} GPU milli in this window, so it cannot lend {borrowed}. {fix}")
    return min(borrowed, gpu_milli), ""
