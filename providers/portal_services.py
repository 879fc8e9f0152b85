"""Provider portal services: prices, the minimum price, maintenance windows and the payouts report."""

import csv
import io
import re
import logging
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from allocation.models import Allocation, ReservationStatus
from marketplace.audit import audit_record
from marketplace.exceptions import FieldProblem, InvalidRequest, NotFound
from marketplace.models import MaintenanceWindow, Node, Organization
from scheduler.migrating import migration_plan_off_node

from .models import ProviderProfile, UsageEntry

logger = logging.getLogger(__name__)

MAX_PRICE = Decimal("9999.9999")
PRICE = re.compile(r"[0-9]{1,4}(\.[0-9]{1,4})?", re.ASCII)
MAX_MAINTENANCE = timedelta(days=30)


def parse_price(raw: str, field: str) -> Decimal:
    """Return ``raw`` as a price per GPU-hour; raise ``InvalidRequest`` naming ``field`` otherwise."""
    text = str(raw).strip()
    try:
        price = Decimal(text) if PRICE.fullmatch(text) else None
    except InvalidOperation:
        price = None
    if price is None or price > MAX_PRICE:
        raise InvalidRequest(f"{str(raw)[:20]!r} is not a price; use an amount from 0 to {MAX_PRICE} with at most "
                             f"4 decimals, such as 2.50.", errors=[FieldProblem(field, "Use an amount such as 2.50.")])
    return price


def provider_node(provider: Organization, node_id: int) -> Node:
    node = Node.objects.filter(pk=node_id, provider=provider).first()
    if node is None:
        raise NotFound(f"Node {node_id} does not exist or belongs to another provider.")
    return node


def minimum_price(provider: Organization) -> Decimal:
    return (ProviderProfile.objects.filter(organization=provider).values_list("min_price_per_gpu_hour", flat=True)
            .first() or Decimal(0))


def node_price_set(*, provider: Organization, node_id: int, price: Decimal, actor=None) -> Node:
    """Set one node's price; new bookings pay it, existing ones keep their booked price.

    ``actor`` is the provider's user, recorded in the audit trail (None records the system).
    """
    floor = minimum_price(provider)
    if price < floor:
        raise InvalidRequest(f"{price} is below your minimum price of {floor} per GPU-hour; raise the price or "
                             f"lower the minimum.", errors=[FieldProblem("price", f"Use {floor} or more.")])
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=provider_node(provider, node_id).pk)
        before = node.price_per_gpu_hour
        node.price_per_gpu_hour = price
        node.save(update_fields=["price_per_gpu_hour", "updated_at"])
        audit_record(action="node.price_set", obj=node, actor=actor, organization=provider,
                     details={"before": {"price_per_gpu_hour": before}, "after": {"price_per_gpu_hour": price}})
    logger.info("Provider %s set the price of %s to %s", provider.slug, node.hostname, price)
    return node


def model_price_set(*, provider: Organization, gpu_model_id: int, price: Decimal, actor=None) -> int:
    """Set the price of every node of one GPU model; return how many changed. ``actor`` is audited."""
    floor = minimum_price(provider)
    if price < floor:
        raise InvalidRequest(f"{price} is below your minimum price of {floor} per GPU-hour.",
                             errors=[FieldProblem("price", f"Use {floor} or more.")])
    with transaction.atomic():
        nodes = Node.objects.select_for_update().filter(provider=provider, gpu_model_id=gpu_model_id)
        before = {hostname: price_before for hostname, price_before in nodes.values_list("hostname",
                                                                                         "price_per_gpu_hour")}
        count = nodes.update(price_per_gpu_hour=price, updated_at=timezone.now())
        if not count:
            raise InvalidRequest("You have no node of that GPU model.", errors=[FieldProblem("gpu_model", "Choose a "
                                                                                              "model of your nodes.")])
        audit_record(action="node.model_price_set", actor=actor, organization=provider,
                     object_type="marketplace.gpumodel", object_id=gpu_model_id,
                     details={"before": {"price_per_gpu_hour": before}, "after": {"price_per_gpu_hour": price},
                              "nodes": count})
    logger.info("Provider %s set the price of %d nodes of model %s to %s", provider.slug, count, gpu_model_id, price)
    return count


def minimum_price_set(*, provider: Organization, price: Decimal, actor=None) -> ProviderProfile:
    """Set the provider's minimum price; nodes priced below it keep their price until changed. ``actor`` is audited."""
    with transaction.atomic():
        before = minimum_price(provider)
        profile, _ = ProviderProfile.objects.update_or_create(organization=provider,
                                                              defaults={"min_price_per_gpu_hour": price})
        audit_record(action="provider.minimum_price_set", obj=profile, actor=actor, organization=provider,
                     details={"before": {"min_price_per_gpu_hour": before}, "after": {"min_price_per_gpu_hour": price}})
    return profile


def _maintenance_lead() -> timedelta:
    """Return how far ahead a maintenance window may start: as far as the last booking may end.

    A date in year 9999 of one time zone may fall in year 10000 in UTC, which PostgreSQL stores
    and Python cannot read back, so an unbounded start is refused.
    """
    limits = settings.MARKETPLACE
    return timedelta(seconds=limits["MAX_HORIZON_SECONDS"] + limits["MAX_DURATION_SECONDS"])


def maintenance_create(*, provider: Organization, node_id: int, start_at: datetime, end_at: datetime, reason: str,
                       actor=None, now: datetime | None = None) -> tuple[MaintenanceWindow, dict]:
    """Book a maintenance window: no new booking may overlap it, and the reservations it overlaps move away.

    A reservation that cannot move (do-not-migrate, or no room elsewhere) stays and its customer gets a
    decision saying so. Returns the window and ``{"moving": n, "staying": n}``.
    """
    now = now or timezone.now()
    problems = []
    if "\x00" in reason or len(reason) > 300:
        problems.append(FieldProblem("reason", "Use plain text of at most 300 characters."))
    if start_at < now - timedelta(minutes=5):
        problems.append(FieldProblem("start_at", "The window must start now or later."))
    elif start_at > now + _maintenance_lead():
        problems.append(FieldProblem("start_at", f"The window must start within {_maintenance_lead().days} days, "
                                                 f"as far as bookings reach."))
    if end_at <= start_at:
        problems.append(FieldProblem("end_at", "end_at must be after start_at."))
    elif end_at - start_at > MAX_MAINTENANCE:
        problems.append(FieldProblem("end_at", f"A window lasts at most {MAX_MAINTENANCE.days} days."))
    if problems:
        raise InvalidRequest("The maintenance window is invalid. " + " ".join(p.message for p in problems),
                             errors=problems)
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=provider_node(provider, node_id).pk)
        overlapping_window = MaintenanceWindow.objects.filter(node=node, start_at__lt=end_at, end_at__gt=start_at).first()
        if overlapping_window is not None:
            raise InvalidRequest(
                f"Node {node.hostname} already has maintenance from {overlapping_window.start_at:%Y-%m-%d %H:%M} to "
                f"{overlapping_window.end_at:%Y-%m-%d %H:%M} UTC. Choose a window outside it, or remove that one first.",
                errors=[FieldProblem("start_at", "Overlaps another maintenance window of this node.")])
        window = MaintenanceWindow.objects.create(node=node, start_at=start_at, end_at=end_at, reason=reason[:300],
                                                  created_by=actor)
        overlapping = (Allocation.objects.filter(node=node, released_at__isnull=True, start_at__lt=end_at,
                                                 end_at__gt=max(start_at, now),
                                                 reservation__status__in=[ReservationStatus.SCHEDULED,
                                                                          ReservationStatus.ACTIVE])
                       .values_list("reservation_id", flat=True))
        moving = staying = 0
        for reservation_id in list(overlapping):
            migration = migration_plan_off_node(
                reservation_id=reservation_id, now=now, actor=actor,
                reason=f"Node {node.hostname} has maintenance from {start_at:%Y-%m-%d %H:%M} to "
                       f"{end_at:%Y-%m-%d %H:%M} UTC.")
            moving, staying = (moving + 1, staying) if migration else (moving, staying + 1)
        audit_record(action="maintenance.create", obj=window, actor=actor, organization=provider,
                     details={"after": {"node": node.hostname, "start_at": start_at, "end_at": end_at,
                                        "reason": window.reason}, "moving": moving, "staying": staying})
    logger.info("Maintenance on %s from %s to %s: %d reservations moving, %d staying", node.hostname,
                start_at.isoformat(), end_at.isoformat(), moving, staying)
    return window, {"moving": moving, "staying": staying}


def maintenance_delete(*, provider: Organization, window_id: int, actor=None) -> None:
    """Cancel one of the provider's maintenance windows; ``actor`` is audited."""
    with transaction.atomic():
        window = (MaintenanceWindow.objects.select_for_update().select_related("node")
                  .filter(pk=window_id, node__provider=provider).first())
        if window is None:
            raise NotFound(f"Maintenance window {window_id} does not exist or belongs to another provider.")
        audit_record(action="maintenance.delete", obj=window, actor=actor, organization=provider,
                     details={"before": {"node": window.node.hostname, "start_at": window.start_at,
                                         "end_at": window.end_at, "reason": window.reason}})
        window.delete()


def payouts_csv(*, provider: Organization, start: datetime, end: datetime) -> str:
    """Return the provider's metered usage stopped in ``[start, end)`` as CSV, one line per entry and a total."""
    output = io.StringIO()
    writer = csv.writer(output)
    writer.writerow(["reservation", "node", "started_at", "stopped_at", "gpu_hours", "price_per_gpu_hour",
                     "amount", "provider_share", "currency"])
    total = Decimal(0)
    entries = (UsageEntry.objects.filter(provider=provider, stopped_at__gte=start, stopped_at__lt=end)
               .select_related("node").order_by("stopped_at", "id"))
    for entry in entries:
        writer.writerow([entry.reservation_id, _spreadsheet_safe(entry.node.hostname), entry.started_at.isoformat(),
                         entry.stopped_at.isoformat(), f"{Decimal(entry.gpu_milli_seconds) / 3_600_000:.6f}",
                         entry.price_per_gpu_hour, entry.amount, entry.provider_share, entry.currency])
        total += entry.provider_share
    writer.writerow(["total", "", start.isoformat(), end.isoformat(), "", "", "",
                     total.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP), ""])
    return output.getvalue()


def _spreadsheet_safe(text: str) -> str:
    """Return ``text`` for a CSV cell that a spreadsheet will not run as a formula (a leading = + - or @)."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@") else text
