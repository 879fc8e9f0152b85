"""Metering: usage from the starts and stops that agents report, priced into a Decimal ledger.

A usage entry covers one assignment from the agent's ``started`` report to its ``exited`` report,
cut to the allocation's window, at the allocation's booked price and billed milli. Work that
never reported its stop is closed when its allocation ends (the capacity was held until then).
Amounts keep six decimals; invoices and earnings round their sums to cents, half up, once.
"""

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max, Sum
from django.utils import timezone

from allocation.models import Allocation, GpuShare, ReservationStatus

from .models import UsageEntry

logger = logging.getLogger(__name__)

MICRO = Decimal("0.000001")
CENT = Decimal("0.01")
SECONDS_PER_HOUR = 3600
MILLI_PER_GPU = 1000


def usage_amount(*, price_per_gpu_hour: Decimal, billed_gpu_milli: int, seconds: int) -> Decimal:
    """Return price x GPUs x hours, to a millionth, from integers and Decimals only."""
    return (price_per_gpu_hour * billed_gpu_milli * seconds / (MILLI_PER_GPU * SECONDS_PER_HOUR)).quantize(
        MICRO, rounding=ROUND_HALF_UP)


def usage_record(*, assignment, stopped_at: datetime) -> UsageEntry | None:
    """Record the usage of a started assignment up to ``stopped_at``; None if nothing ran or it was recorded."""
    if assignment.started_at is None:
        return None
    allocation = Allocation.objects.select_related("node").filter(reservation_id=assignment.reservation_id).first()
    if allocation is None:
        return None
    start = max(assignment.started_at, allocation.start_at)
    stop = min(stopped_at, _billable_until(allocation, assignment.node_id))
    stop = max(stop, start)
    seconds = int((stop - start).total_seconds())
    amount = usage_amount(price_per_gpu_hour=allocation.price_per_gpu_hour,
                          billed_gpu_milli=allocation.billed_gpu_milli, seconds=seconds)
    fee = Decimal(str(settings.MARKETPLACE["PLATFORM_FEE_RATE"]))
    try:
        with transaction.atomic():
            entry = UsageEntry.objects.create(
                assignment=assignment, reservation_id=assignment.reservation_id,
                customer_id=allocation.customer_id, provider_id=assignment.node.provider_id,
                node_id=assignment.node_id, started_at=start, stopped_at=stop,
                billed_gpu_milli=allocation.billed_gpu_milli, gpu_milli_seconds=allocation.billed_gpu_milli * seconds,
                price_per_gpu_hour=allocation.price_per_gpu_hour, amount=amount,
                provider_share=(amount * (1 - fee)).quantize(MICRO, rounding=ROUND_HALF_UP),
                currency=allocation.currency,
            )
    except IntegrityError:
        return None  # a retried report: the usage is already recorded
    logger.info("Metered reservation %s on %s: %d s, %s %s", assignment.reservation_id, assignment.node.hostname,
                seconds, amount, allocation.currency)
    return entry


def _billable_until(allocation: Allocation, node_id: int) -> datetime:
    """Return when ``allocation`` stopped holding ``node_id``: its end on its node, else the end of its shares there.

    A move cuts the allocation's shares on the source at the switch and keeps them, so a run
    that the source's agent reports late, or starts after the switch, is billed up to the switch
    at most. A CPU-only allocation keeps no shares, so a run on a node it left bills nothing.
    """
    if allocation.node_id == node_id:
        return allocation.end_at
    left_at = (GpuShare.objects.filter(allocation=allocation, gpu__node_id=node_id)
               .aggregate(left_at=Max("end_at"))["left_at"])
    return left_at or allocation.start_at


def open_assignments_close(*, now: datetime | None = None) -> int:
    """Close started assignments whose reservation ended without a stop report; meter them to the allocation's end."""
    from scheduler.models import Assignment

    now = now or timezone.now()
    closed = 0
    stale = (Assignment.objects.select_related("node").filter(status=Assignment.Status.STARTED)
             .exclude(reservation__status=ReservationStatus.ACTIVE)
             .filter(reservation__allocation__end_at__lte=now))
    for assignment in stale:
        end = Allocation.objects.filter(reservation_id=assignment.reservation_id).values_list("end_at", flat=True).first()
        with transaction.atomic():
            usage_record(assignment=assignment, stopped_at=end)
            assignment.status, assignment.finished_at = Assignment.Status.EXITED, end
            assignment.message = "No stop report; closed at the end of the allocation."
            assignment.save(update_fields=["status", "finished_at", "message", "updated_at"])
        closed += 1
    if closed:
        logger.info("Closed %d assignments that never reported their stop", closed)
    return closed


@dataclass(frozen=True)
class Statement:
    """An organization's total for a period in cents: what a customer owes or what a provider earned."""

    organization_id: int
    start: datetime
    end: datetime
    currency: str
    entries: int
    gpu_hours: Decimal
    total: Decimal


def invoice(*, customer_id: int, start: datetime, end: datetime, currency: str = "USD") -> Statement:
    """Return the customer's usage stopped in ``[start, end)``: GPU-hours and the total in cents."""
    return _statement(UsageEntry.objects.filter(customer_id=customer_id), customer_id, start, end, currency, "amount")


def earnings(*, provider_id: int, start: datetime, end: datetime, currency: str = "USD") -> Statement:
    """Return the provider's share of the usage stopped in ``[start, end)``, in cents."""
    return _statement(UsageEntry.objects.filter(provider_id=provider_id), provider_id, start, end, currency,
                      "provider_share")


def _statement(entries, organization_id: int, start: datetime, end: datetime, currency: str, column: str) -> Statement:
    rows = entries.filter(stopped_at__gte=start, stopped_at__lt=end, currency=currency)
    totals = rows.aggregate(total=Sum(column), milli_seconds=Sum("gpu_milli_seconds"))
    milli_seconds = totals["milli_seconds"] or 0
    return Statement(
        organization_id=organization_id, start=start, end=end, currency=currency, entries=rows.count(),
        gpu_hours=(Decimal(milli_seconds) / (MILLI_PER_GPU * SECONDS_PER_HOUR)).quantize(MICRO),
        total=(totals["total"] or Decimal(0)).quantize(CENT, rounding=ROUND_HALF_UP),
    )


MONTH = re.compile(r"(\d{4})-(\d{2})", re.ASCII)


def month_bounds(text: str) -> tuple[datetime, datetime] | None:
    """Return the UTC start and end of a ``YYYY-MM`` month from 1970 to 9000, or None for anything else."""
    match = MONTH.fullmatch(text.strip())
    if match is None:
        return None
    year, month = int(match.group(1)), int(match.group(2))
    if not (1970 <= year <= 9000 and 1 <= month <= 12):
        return None
    start = datetime(year, month, 1, tzinfo=dt_timezone.utc)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=dt_timezone.utc)
    return start, end
