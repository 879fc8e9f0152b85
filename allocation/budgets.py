"""Budget admission: GPU-hours and spend per calendar period, booked and consumed."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal

from marketplace.models import GPU_MILLI_PER_GPU

from .models import Allocation, Budget

SECONDS_PER_HOUR = Decimal(3600)


@dataclass(frozen=True)
class BudgetDecision:
    """Whether the request fits the budget, and the highest price per GPU-hour it can still afford.

    ``budget`` is the customer's budget row (``None`` without one), for ``budget_fits`` to reuse.
    """

    refusal: str = ""
    max_affordable_price: Decimal | None = None
    budget: Budget | None = None


def period_start(moment: datetime, period: str) -> datetime:
    """Return the start (UTC midnight) of the calendar period containing ``moment``."""
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == Budget.Period.DAY:
        return midnight
    if period == Budget.Period.WEEK:
        return midnight - timedelta(days=midnight.weekday())
    return midnight.replace(day=1)


def period_end(start: datetime, period: str) -> datetime:
    if period == Budget.Period.DAY:
        return start + timedelta(days=1)
    if period == Budget.Period.WEEK:
        return start + timedelta(days=7)
    return (start + timedelta(days=32)).replace(day=1)


def periods_overlapping(start_at: datetime, end_at: datetime, period: str) -> list[tuple[datetime, datetime]]:
    """Return the ``(start, end)`` of every calendar period that ``[start_at, end_at)`` overlaps."""
    periods = []
    start = period_start(start_at, period)
    while start < end_at:
        end = period_end(start, period)
        periods.append((start, end))
        start = end
    return periods


def _gpu_hours(milli: int, start_at: datetime, end_at: datetime) -> Decimal:
    seconds = Decimal((end_at - start_at) / timedelta(seconds=1))
    return Decimal(milli) / GPU_MILLI_PER_GPU * seconds / SECONDS_PER_HOUR


def budget_spent(customer_id: int, start: datetime, end: datetime) -> tuple[Decimal, Decimal]:
    """Return the GPU-hours and spend the customer's allocations charge to ``[start, end)``."""
    gpu_hours = spend = Decimal(0)
    rows = Allocation.objects.filter(customer_id=customer_id, end_at__gt=start, start_at__lt=end).values_list(
        "start_at", "end_at", "billed_gpu_milli", "price_per_gpu_hour",
    )
    for allocation_start, allocation_end, billed_milli, price in rows.iterator(chunk_size=2000):
        hours = _gpu_hours(billed_milli, max(allocation_start, start), min(allocation_end, end))
        gpu_hours += hours
        spend += hours * price
    return gpu_hours, spend


def budget_admit(*, customer_id: int, gpu_milli: int, start_at: datetime, end_at: datetime) -> BudgetDecision:
    """Check ``gpu_milli`` over the window against the budget of every period it overlaps.

    GPU-hours are checked here. Money depends on the node's price, so this returns the highest
    price per GPU-hour that every period can still pay, for placement to use as a price cap, and
    ``budget_fits`` checks the chosen node's actual charge again. The caller holds the customer's
    row lock, so concurrent requests of one customer are checked one after another. On PostgreSQL
    a trigger (migration 0012) rejects any allocation that would overspend, whatever the caller.
    """
    budget = Budget.objects.filter(organization_id=customer_id).first()
    if budget is None or gpu_milli == 0:
        return BudgetDecision(budget=budget)

    max_price = None
    for start, end in periods_overlapping(start_at, end_at, budget.period):
        requested = _gpu_hours(gpu_milli, max(start_at, start), min(end_at, end))
        spent_hours, spent_money = budget_spent(customer_id, start, end)
        label = f"the {budget.period} starting {start:%Y-%m-%d}"
        if budget.max_gpu_hours is not None and spent_hours + requested > budget.max_gpu_hours:
            return BudgetDecision(budget=budget, refusal=(
                f"The budget for {label} allows {budget.max_gpu_hours} GPU-hours; {spent_hours:.3f} are booked "
                f"or used and this request needs {requested:.3f} more. Shorten the window, use fewer GPUs, or "
                f"ask an admin to raise the budget."
            ))
        if budget.max_spend is not None and requested > 0:
            affordable = ((budget.max_spend - spent_money) / requested).quantize(Decimal("0.0001"), ROUND_DOWN)
            if affordable <= 0:
                return BudgetDecision(budget=budget, refusal=(
                    f"The budget for {label} allows {budget.max_spend} {budget.currency}; {spent_money:.2f} is "
                    f"booked or spent, so nothing is left. Ask an admin to raise the budget."
                ))
            max_price = affordable if max_price is None else min(max_price, affordable)
    return BudgetDecision(max_affordable_price=max_price, budget=budget)


def budget_fits(
    *, budget: Budget | None, billed_milli: int, price_per_gpu_hour: Decimal, start_at: datetime, end_at: datetime,
) -> bool:
    """Return whether an allocation at this price and billed milli stays within every period of ``budget``."""
    if budget is None:
        return True
    customer_id = budget.organization_id
    if budget.max_gpu_hours is None and budget.max_spend is None:
        return True
    for start, end in periods_overlapping(start_at, end_at, budget.period):
        hours = _gpu_hours(billed_milli, max(start_at, start), min(end_at, end))
        spent_hours, spent_money = budget_spent(customer_id, start, end)
        if budget.max_gpu_hours is not None and spent_hours + hours > budget.max_gpu_hours:
            return False
        if budget.max_spend is not None and spent_money + hours * price_per_gpu_hour > budget.max_spend:
            return False
    return True


def combined_price_cap(customer_cap: Decimal | None, decision: BudgetDecision) -> tuple[Decimal | None, bool]:
    """Return the price cap for placement and whether the budget, not the customer's own cap, sets it."""
    affordable = decision.max_affordable_price
    if affordable is not None and (customer_cap is None or affordable < customer_cap):
        return affordable, True
    return customer_cap, False
