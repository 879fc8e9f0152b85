"""Quota admission: which GPU models a customer may still use for a request in a window."""

from dataclasses import dataclass
from datetime import datetime

from .models import Quota
from .selectors import customer_usage


@dataclass(frozen=True)
class QuotaDecision:
    """The GPU models the quota admits; ``detail`` explains a rejection when none is admitted."""

    admitted_model_ids: tuple[int, ...]
    detail: str = ""


def quota_admit(
    *, customer_id: int, model_ids: tuple[int, ...], model_names: dict[int, str], gpu_milli: int,
    start_at: datetime, end_at: datetime,
) -> QuotaDecision:
    """Return the models in ``model_ids`` on which ``gpu_milli`` more fits the customer's quotas.

    Usage is the customer's peak over the instants of the window, so the limit holds at every
    instant. The caller holds the customer's row lock, so concurrent requests of one customer are
    checked one after another.
    """
    quotas = list(Quota.objects.filter(organization_id=customer_id).values_list("gpu_model_id", "max_gpu_milli"))
    if not quotas or gpu_milli == 0:
        return QuotaDecision(admitted_model_ids=model_ids)

    peaks = customer_usage(customer_id, start_at, end_at)
    usage, total_usage = peaks.by_model, peaks.total
    limits = dict(quotas)

    overall_limit = limits.get(None)
    if overall_limit is not None and total_usage + gpu_milli > overall_limit:
        return QuotaDecision(
            admitted_model_ids=(),
            detail=(
                f"The organization holds up to {total_usage} GPU milli at once in this window and its quota "
                f"over all models is {overall_limit}; {gpu_milli} more do not fit. Cancel a reservation, choose "
                f"a window with less usage, or ask an admin to raise the quota."
            ),
        )

    admitted = tuple(
        model_id for model_id in model_ids
        if limits.get(model_id) is None or usage.get(model_id, 0) + gpu_milli <= limits[model_id]
    )
    if admitted:
        return QuotaDecision(admitted_model_ids=admitted)

    names = ", ".join(sorted(model_names[model_id] for model_id in model_ids))
    return QuotaDecision(
        admitted_model_ids=(),
        detail=(
            f"The organization's quota for {names} cannot hold {gpu_milli} more GPU milli in this "
            f"window. Allow another GPU model, choose another window, or ask an admin to raise the quota."
        ),
    )
