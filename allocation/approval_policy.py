"""Whether a placed reservation needs an admin's approval, from its organization's approval policy."""

from decimal import Decimal

from .models import ApprovalPolicy


def approval_reason(*, customer_id: int, gpu_count: int, estimated_cost: Decimal) -> str:
    """Return why the request needs approval, or an empty string when it does not."""
    policy = ApprovalPolicy.objects.filter(organization_id=customer_id).first()
    return policy_approval_reason(policy, gpu_count=gpu_count, estimated_cost=estimated_cost)


def policy_approval_reason(policy: ApprovalPolicy | None, *, gpu_count: int, estimated_cost: Decimal) -> str:
    """Return why ``policy`` (None: the organization has none) sends the request to approval, or ``""``."""
    if policy is None:
        return ""
    if policy.flagged:
        return "the organization is flagged for review"
    if policy.max_gpus_without_approval is not None and gpu_count > policy.max_gpus_without_approval:
        return f"it asks for {gpu_count} GPUs, more than the {policy.max_gpus_without_approval} allowed without approval"
    if policy.max_cost_without_approval is not None and estimated_cost > policy.max_cost_without_approval:
        return (f"its estimated cost of {estimated_cost} exceeds the {policy.max_cost_without_approval} "
                f"allowed without approval")
    return ""
