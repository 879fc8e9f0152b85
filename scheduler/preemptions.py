"""Preemption proposals: approval, the grace period, and stopping the victims.

A proposal names one beneficiary and its victims on one node. When the beneficiary's class needs
an admin's approval it waits on ``/ops/preemptions/``; otherwise it starts at once. Starting it
tells each victim's agent to stop by the end of the victim class's grace period. When the grace
period is over, ``preemptions_finish`` moves each victim to ``preempted`` (which releases its
capacity) and, for the requeue mode, puts a copy of it back in the queue. The next cycle then
places the beneficiary.
"""

import logging
from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from allocation.models import Reservation, ReservationStatus
from allocation.services import reservation_requeue, reservation_transition
from marketplace.audit import audit_record
from marketplace.exceptions import FieldProblem, InvalidRequest, InvalidTransition, NotFound

from .models import Assignment, Decision, Migration, Preemption, PreemptionVictim, PriorityClass, Workload

logger = logging.getLogger(__name__)


def preemption_open() -> Q:
    return Q(status__in=[Preemption.Status.PENDING_APPROVAL, Preemption.Status.GRACE])


def preemption_propose(*, plan, node_id: int, cycle=None, now: datetime) -> Preemption | None:
    """Save the cycle's ``plan`` (a ``core.PreemptionPlan``); start it unless the beneficiary's class needs approval.

    Returns None when the beneficiary already has an open preemption.
    """
    beneficiary = Workload.objects.select_related("priority_class").get(pk=plan.beneficiary)
    needs_approval = beneficiary.priority_class.preemption_needs_approval
    try:
        with transaction.atomic():
            preemption = Preemption.objects.create(
                beneficiary_id=plan.beneficiary, node_id=node_id, cycle=cycle, created_at=now,
                status=Preemption.Status.PENDING_APPROVAL if needs_approval else Preemption.Status.GRACE,
                explanation=plan.explanation, cost=[float(part) for part in plan.cost],
            )
    except IntegrityError:
        logger.info("Preemption for reservation %s not proposed: one is already open", plan.beneficiary)
        return None
    modes = dict(Workload.objects.filter(pk__in=plan.victims)
                 .values_list("reservation_id", "priority_class__preemption_mode"))
    PreemptionVictim.objects.bulk_create(
        PreemptionVictim(preemption=preemption, reservation_id=victim, mode=modes.get(victim, PriorityClass.Mode.CANCEL))
        for victim in plan.victims
    )
    # Customers read decisions, so they name no other organization's reservations; the admin page does.
    Decision.objects.create(
        reservation_id=plan.beneficiary, cycle=cycle, kind=Decision.Kind.PREEMPTION_PROPOSED, at=now,
        reason_code="preemption_proposed",
        reason=("Lower-priority work on one node will be preempted so that this request can start"
                + (", once an admin approves." if needs_approval else ", after the work's grace period.")),
        detail={"preemption_id": preemption.pk},
    )
    logger.info("Preemption %s proposed for reservation %s: victims %s%s", preemption.pk, plan.beneficiary,
                list(plan.victims), ", awaiting approval" if needs_approval else "")
    if not needs_approval:
        _start_grace(preemption, now)
        _audit_decision(preemption, "preemption.start", None, before=None,
                        reason=f"Priority class {beneficiary.priority_class.name} preempts without an admin's "
                               f"approval.")
    return preemption


def _start_grace(preemption: Preemption, now: datetime) -> None:
    """Tell the victims' agents to stop by the end of their grace periods."""
    longest = 0
    for victim in preemption.victims.select_related("reservation"):
        if victim.reservation.status not in (ReservationStatus.ACTIVE, ReservationStatus.SCHEDULED):
            continue
        grace = (Workload.objects.filter(pk=victim.reservation_id)
                 .values_list("priority_class__grace_period_seconds", flat=True).first() or 0)
        longest = max(longest, grace)
        stop_by = now + timedelta(seconds=grace)
        Assignment.objects.filter(reservation_id=victim.reservation_id, stop_requested_at__isnull=True).update(
            stop_requested_at=now, stop_by=stop_by)
        Decision.objects.create(
            reservation_id=victim.reservation_id, kind=Decision.Kind.PREEMPTED, reason_code="preemption_grace",
            reason=(f"Preempted for a request of a higher priority; it has {grace} s to stop, until "
                    f"{stop_by.isoformat()}, and is then "
                    f"{'requeued' if victim.mode == PriorityClass.Mode.REQUEUE else 'cancelled'}."),
            at=now, detail={"preemption_id": preemption.pk},
        )
    preemption.status = Preemption.Status.GRACE
    preemption.grace_ends_at = now + timedelta(seconds=longest)
    preemption.save(update_fields=["status", "grace_ends_at"])


def preemption_approve(*, preemption_id: int, actor: AbstractBaseUser, now: datetime | None = None) -> Preemption:
    """Approve a pending preemption: its grace period starts now."""
    now = now or timezone.now()
    with transaction.atomic():
        preemption = _pending(preemption_id)
        status = Reservation.objects.filter(pk=preemption.beneficiary_id).values_list("status", flat=True).first()
        if status != ReservationStatus.QUEUED:
            raise InvalidTransition(
                f"Reservation {preemption.beneficiary_id}, the beneficiary of preemption {preemption_id}, is "
                f"{status} and no longer waits; reject the preemption instead.",
                current=preemption.status, requested="approved",
            )
        preemption.decided_by, preemption.decided_at = actor, now
        preemption.save(update_fields=["decided_by", "decided_at"])
        _start_grace(preemption, now)
        _audit_decision(preemption, "preemption.approve", actor, before=Preemption.Status.PENDING_APPROVAL)
    logger.info("Preemption %s approved by %s", preemption_id, actor.get_username())
    return preemption


def preemption_reject(*, preemption_id: int, actor: AbstractBaseUser, reason: str,
                      now: datetime | None = None) -> Preemption:
    """Reject a pending preemption with a reason; the victims keep running and the beneficiary keeps waiting."""
    now = now or timezone.now()
    reason = reason.strip()
    if not reason:
        raise InvalidRequest("A rejection needs a reason.",
                             errors=[FieldProblem("reason", "Say why the preemption is rejected.", "required")])
    with transaction.atomic():
        preemption = _pending(preemption_id)
        preemption.status = Preemption.Status.REJECTED
        preemption.decided_by, preemption.decided_at, preemption.decision_note = actor, now, reason[:2000]
        preemption.save(update_fields=["status", "decided_by", "decided_at", "decision_note"])
        _audit_decision(preemption, "preemption.reject", actor, before=Preemption.Status.PENDING_APPROVAL,
                        reason=reason[:2000])
        Decision.objects.create(
            reservation_id=preemption.beneficiary_id, kind=Decision.Kind.WAITING, reason_code="preemption_rejected",
            reason=f"An admin rejected the preemption it needed: {reason[:500]}", at=now,
            detail={"preemption_id": preemption.pk},
        )
    logger.info("Preemption %s rejected by %s", preemption_id, actor.get_username())
    return preemption


def _audit_decision(preemption: Preemption, action: str, actor: AbstractBaseUser | None, *, before: str | None,
                    reason: str = "") -> None:
    """Record a decision on ``preemption`` in the audit trail, under the beneficiary's organization.

    ``actor`` None records the system (the scheduling cycle's task) as the actor. ``before`` None
    leaves out the earlier status, for a preemption that started as soon as it was proposed.
    """
    beneficiary = Reservation.objects.filter(pk=preemption.beneficiary_id).values_list("customer_id", flat=True).first()
    details = {"after": {"status": preemption.status}, "beneficiary": preemption.beneficiary_id,
               "node": preemption.node_id,
               "victims": list(preemption.victims.values_list("reservation_id", flat=True))}
    if before is not None:
        details["before"] = {"status": before}
    if reason:
        details["reason"] = reason
    audit_record(action=action, obj=preemption, actor=actor, organization=beneficiary, details=details)


def preemptions_finish(*, now: datetime | None = None) -> int:
    """Stop the victims of preemptions whose grace period is over; return how many preemptions finished.

    A preemption whose beneficiary no longer waits is closed instead, and its victims keep running.

    Rows are claimed with ``SKIP LOCKED`` and each victim is checked under its lock, so a second
    run, or a redelivered task, changes nothing.
    """
    now = now or timezone.now()
    finished = 0
    while True:
        with transaction.atomic():
            batch = list(Preemption.objects.select_for_update(skip_locked=True, of=("self",))
                         .select_related("beneficiary")
                         .filter(status=Preemption.Status.GRACE, grace_ends_at__lte=now).order_by("id")[:50])
            for preemption in batch:
                if preemption.beneficiary.status != ReservationStatus.QUEUED:
                    _close_obsolete(preemption, now)
                    continue
                _stop_victims(preemption, now)
                preemption.status = Preemption.Status.DONE
                preemption.save(update_fields=["status"])
                finished += 1
        if not batch:
            break
    if finished:
        logger.info("Finished %d preemptions at %s", finished, now.isoformat())
    return finished


def preemptions_obsolete(*, now: datetime) -> int:
    """Close open preemptions whose beneficiary no longer waits; their victims keep running."""
    stale = list(Preemption.objects.select_for_update(skip_locked=True).filter(preemption_open())
                 .exclude(beneficiary__status=ReservationStatus.QUEUED))
    for preemption in stale:
        _close_obsolete(preemption, now)
    if stale:
        logger.info("Closed %d preemptions whose beneficiary no longer waits", len(stale))
    return len(stale)


def _close_obsolete(preemption: Preemption, now: datetime) -> None:
    """Close a preemption whose beneficiary no longer waits and withdraw its victims' stop requests."""
    if preemption.status == Preemption.Status.GRACE:
        victims = preemption.victims.values_list("reservation_id", flat=True)
        # Past the deadline too: a victim still active was not preempted, so its agent may run on.
        # A victim that an open migration is moving keeps the stop request it shares with that move.
        moving = Migration.objects.filter(reservation_id__in=list(victims), status=Migration.Status.MOVING)
        Assignment.objects.filter(reservation_id__in=list(victims), reservation__status=ReservationStatus.ACTIVE,
                                  status__in=[Assignment.Status.ASSIGNED, Assignment.Status.STARTED],
                                  ).exclude(reservation_id__in=moving.values("reservation_id")).update(
            stop_requested_at=None, stop_by=None)
    preemption.status = Preemption.Status.OBSOLETE
    preemption.decision_note = "The beneficiary no longer waited; the victims keep running."
    preemption.save(update_fields=["status", "decision_note"])
    logger.info("Preemption %s closed: its beneficiary %s no longer waits", preemption.pk, preemption.beneficiary_id)


def _stop_victims(preemption: Preemption, now: datetime) -> None:
    for victim in preemption.victims.select_related("reservation"):
        reservation = Reservation.objects.select_for_update().get(pk=victim.reservation_id)
        if reservation.status not in (ReservationStatus.ACTIVE, ReservationStatus.SCHEDULED):
            victim.outcome = f"Already {reservation.status}; nothing to stop."
            victim.save(update_fields=["outcome"])
            continue
        if reservation.end_at <= now:
            victim.outcome = "Its window ended during the grace period; it completes as booked."
            victim.save(update_fields=["outcome"])
            continue
        note = "Preempted for a request of a higher priority after its grace period."
        reservation_transition(reservation=reservation, to_status=ReservationStatus.PREEMPTED, now=now,
                               reason_code="preempted", note=note[:2000])
        Assignment.objects.filter(reservation=reservation, stop_requested_at__isnull=True).update(
            stop_requested_at=now, stop_by=now)
        if victim.mode == PriorityClass.Mode.REQUEUE and hasattr(reservation, "workload"):
            copy = reservation_requeue(original=reservation, now=now,
                                       note=f"Requeued after preemption {preemption.pk}; it starts from scratch.")
            victim.requeued_as = copy
            victim.outcome = f"Preempted and requeued as reservation {copy.pk}."
            Decision.objects.create(reservation=reservation, kind=Decision.Kind.REQUEUED, reason_code="requeued",
                                    reason=victim.outcome, at=now, detail={"requeued_as": copy.pk})
        else:
            victim.outcome = "Preempted and cancelled."
        victim.save(update_fields=["requeued_as", "outcome"])


def _pending(preemption_id: int) -> Preemption:
    try:
        preemption = Preemption.objects.select_for_update().get(pk=preemption_id)
    except Preemption.DoesNotExist:
        raise NotFound(f"Preemption {preemption_id} does not exist.") from None
    if preemption.status != Preemption.Status.PENDING_APPROVAL:
        raise InvalidTransition(
            f"Preemption {preemption_id} is {preemption.status}, not pending approval; nothing to decide.",
            current=preemption.status, requested="decision",
        )
    return preemption
