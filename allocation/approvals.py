"""Admin decisions on reservations pending approval, and the expiry of those left undecided."""

import logging
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from marketplace.audit import audit_record
from marketplace.exceptions import FieldProblem, InvalidRequest, InvalidTransition, NotFound

from .models import RejectionReason, Reservation, ReservationStatus
from .services import reservation_transition

logger = logging.getLogger(__name__)


def reservation_approve(*, reservation_id: int, actor: AbstractBaseUser, now: datetime | None = None) -> Reservation:
    """Confirm a reservation pending approval: it becomes scheduled, or active if its window began."""
    now = now or timezone.now()
    with transaction.atomic():
        reservation = _pending(reservation_id)
        if reservation.hold_expires_at is not None and reservation.hold_expires_at <= now:
            raise InvalidTransition(
                f"Reservation {reservation_id}'s hold expired at {reservation.hold_expires_at.isoformat()} and its "
                f"capacity is being released; the customer has to submit it again.",
                current=reservation.status, requested=ReservationStatus.SCHEDULED,
            )
        if reservation.end_at <= now:
            raise InvalidTransition(
                f"Reservation {reservation_id}'s window ended at {reservation.end_at.isoformat()}; it can no "
                f"longer be approved.", current=reservation.status, requested=ReservationStatus.SCHEDULED,
            )
        target = ReservationStatus.ACTIVE if reservation.start_at <= now else ReservationStatus.SCHEDULED
        reservation.hold_expires_at = None
        reservation.save(update_fields=["hold_expires_at"])
        reservation_transition(reservation=reservation, to_status=target, actor=actor, now=now,
                               note=f"Approved by {actor.get_username()}.")
        audit_record(action="reservation.approve", obj=reservation, actor=actor,
                     organization=reservation.customer_id,
                     details={"before": {"status": ReservationStatus.PENDING_APPROVAL}, "after": {"status": target}})
    logger.info("Reservation %s approved by %s", reservation_id, actor.get_username())
    return reservation


def reservation_reject(
    *, reservation_id: int, actor: AbstractBaseUser, reason: str, now: datetime | None = None,
) -> Reservation:
    """Reject a reservation pending approval with the admin's reason, and release its held capacity."""
    now = now or timezone.now()
    reason = reason.strip()
    if not reason:
        raise InvalidRequest("A rejection needs a reason for the customer.",
                             errors=[FieldProblem("reason", "Say why the request is rejected.", "required")])
    with transaction.atomic():
        reservation = _pending(reservation_id)
        reservation.hold_expires_at = None
        reservation.save(update_fields=["hold_expires_at"])
        reservation_transition(reservation=reservation, to_status=ReservationStatus.REJECTED, actor=actor, now=now,
                               reason_code=RejectionReason.REJECTED_BY_ADMIN, note=reason[:2000])
        audit_record(action="reservation.reject", obj=reservation, actor=actor,
                     organization=reservation.customer_id,
                     details={"before": {"status": ReservationStatus.PENDING_APPROVAL},
                              "after": {"status": ReservationStatus.REJECTED}, "reason": reason[:2000]})
    logger.info("Reservation %s rejected by %s", reservation_id, actor.get_username())
    return reservation


def reservations_expire(*, now: datetime | None = None) -> int:
    """Expire reservations whose approval hold ran out, releasing their capacity; return how many.

    Rows are claimed with ``SKIP LOCKED``, and each row is checked again under its lock, so a
    concurrent run or an approval at the same moment never acts twice on one reservation.
    """
    now = now or timezone.now()
    expired = 0
    while True:
        with transaction.atomic():
            batch = list(
                Reservation.objects.select_for_update(skip_locked=True)
                .filter(status=ReservationStatus.PENDING_APPROVAL, hold_expires_at__lte=now)
                .order_by("id")[:200]
            )
            for reservation in batch:
                expired_hold = reservation.hold_expires_at
                reservation.hold_expires_at = None
                reservation.save(update_fields=["hold_expires_at"])
                reservation_transition(
                    reservation=reservation, to_status=ReservationStatus.EXPIRED, now=now,
                    reason_code="approval_timeout",
                    note=f"No admin decided by {expired_hold.isoformat()}; the held capacity "
                         f"was released. Submit the request again.",
                )
        if not batch:
            break
        expired += len(batch)
    if expired:
        logger.info("Expired %d reservations pending approval at %s", expired, now.isoformat())
    return expired


def _pending(reservation_id: int) -> Reservation:
    try:
        reservation = Reservation.objects.select_for_update().get(pk=reservation_id)
    except Reservation.DoesNotExist:
        raise NotFound(f"Reservation {reservation_id} does not exist.") from None
    if reservation.status != ReservationStatus.PENDING_APPROVAL:
        raise InvalidTransition(
            f"Reservation {reservation_id} is {reservation.status}, not pending approval; nothing to decide.",
            current=reservation.status, requested="decision",
        )
    return reservation
