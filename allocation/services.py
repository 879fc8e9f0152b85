"""Reservation services: the only code that creates, places, cancels or advances reservations.

The REST API, the admin, Celery tasks and the trace replay all call these functions.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from marketplace.catalogue_cache import cached
from marketplace.logs import bind_reservation
from marketplace.metrics import SOURCE_REQUEST, SOURCE_SCHEDULER, reservation_decision_record
from marketplace.exceptions import FieldProblem, InvalidRequest, InvalidTransition, MarketplaceError, NotFound
from marketplace.models import GPU_MILLI_PER_GPU, GpuModel, Node, Organization, Region

from .lifecycle import CONFIRMED_STATUSES, HOLDING_STATUSES, RELEASING_STATUSES, can_transition, placed_status
from .models import Allocation, GpuShare, IdempotencyKey, Quota, RejectionReason, Reservation, ReservationEvent, ReservationStatus
from .approval_policy import approval_reason
from .budgets import budget_admit, combined_price_cap
from .express import express_available, reservation_create_express
from .placement import placement_find_and_commit
from .pricing import estimated_cost, node_price_cap
from .quotas import quota_admit
from .selectors import NodeFilter, candidate_ids
from .placement_policy import placement_policy
from .solvers import PlacementRequest
from scheduler.models import Decision, Workload
from scheduler.terms import workload_terms

logger = logging.getLogger(__name__)

MAX_PRICE_PER_GPU_HOUR = Decimal("999999.9999")


@dataclass(frozen=True)
class ReservationSpec:
    """What a customer requests; the API and the trace replay both build one.

    Datetimes must be timezone-aware. ``gpu_models`` holds catalogue names; empty means any model.
    """

    gpu_count: int
    gpu_milli_per_gpu: int
    cpu_millicores: int
    memory_mib: int
    start_at: datetime
    end_at: datetime
    gpu_models: tuple[str, ...] = ()
    region: str | None = None
    max_price_per_gpu_hour: Decimal | None = None
    external_ref: str = ""
    do_not_migrate: bool = False
    priority_class: str | None = None
    """A ``scheduler.PriorityClass`` name; None uses the default class."""
    queue: str | None = None
    """A ``scheduler.Queue`` name; None uses the default queue."""
    interruptible: bool = False
    queue_if_unavailable: bool = False
    """Wait in the queue instead of being rejected when capacity or quota is short now."""
    latest_start_at: datetime | None = None
    """For a queued request: the latest start it accepts; None allows the configured maximum wait."""


@dataclass(frozen=True)
class ResolvedSpec:
    spec: ReservationSpec
    models: list[GpuModel]
    region: Region | None
    request: PlacementRequest = field(init=False)

    def __post_init__(self) -> None:
        spec = self.spec
        object.__setattr__(self, "request", PlacementRequest(
            gpu_count=spec.gpu_count, gpu_milli_per_gpu=spec.gpu_milli_per_gpu,
            cpu_millicores=spec.cpu_millicores, memory_mib=spec.memory_mib,
        ))


class DuplicateExternalRef(MarketplaceError):
    """The customer already has a reservation, not rejected, with this ``external_ref`` (HTTP 409)."""

    def __init__(self, external_ref: str, reservation_id: int):
        super().__init__(
            detail=(
                f"Reservation {reservation_id} already uses external_ref {external_ref!r}. "
                f"Use a new external_ref, or GET /api/v1/reservations/{reservation_id}/ to see it."
            ),
            code="duplicate_external_ref",
            status=409,
            title="Duplicate external reference",
            errors=[FieldProblem("external_ref", "This value is already used by another reservation.", "unique")],
            extra={"reservation_id": reservation_id},
        )


def reservation_create(
    *, customer: Organization, spec: ReservationSpec, actor: AbstractBaseUser | None = None,
    now: datetime | None = None, policy_name: str | None = None,
) -> Reservation:
    """Admit, place and commit one reservation in a single transaction.

    Returns the reservation, ``scheduled`` or ``active`` with its allocation, or ``rejected`` with a
    reason code from ``RejectionReason``. Raises ``InvalidRequest`` for input that can never succeed
    and ``DuplicateExternalRef`` for a reused ``external_ref``; neither writes anything.
    """
    now = now or timezone.now()
    policy = placement_policy(policy_name)
    if customer.kind != Organization.Kind.CUSTOMER:
        raise InvalidRequest(
            f"Organization {customer.slug!r} is a {customer.kind}; only customer organizations reserve GPUs.",
            code="not_a_customer",
        )
    resolved = resolve_spec(spec, now)
    terms = workload_terms(spec, now)

    if express_available(spec):
        price_factor = interruptible_price_factor() if spec.interruptible else Decimal(1)
        reservation = reservation_create_express(customer=customer, resolved=resolved, terms=terms, policy=policy,
                                                 actor=actor, now=now, price_factor=price_factor)
        if reservation is not None:
            logger.debug("Reservation %s for %s ended %s %s", reservation.pk, customer.slug, reservation.status,
                         reservation.reason_code)
            return reservation

    with transaction.atomic():
        if connection.features.has_select_for_update:
            # Serialises the admissions of one customer, so concurrent requests cannot jointly pass a
            # quota. SQLite needs no lock: BEGIN IMMEDIATE already serialises every writer.
            Organization.objects.select_for_update().only("id").get(pk=customer.pk)
        _reject_duplicate_external_ref(customer, spec.external_ref)

        reservation = Reservation.objects.create(
            customer=customer, created_by=actor, external_ref=spec.external_ref,
            gpu_count=spec.gpu_count, gpu_milli_per_gpu=spec.gpu_milli_per_gpu,
            region=resolved.region, cpu_millicores=spec.cpu_millicores, memory_mib=spec.memory_mib,
            start_at=spec.start_at, end_at=spec.end_at, max_price_per_gpu_hour=spec.max_price_per_gpu_hour,
            currency=settings.MARKETPLACE["DEFAULT_CURRENCY"], status=ReservationStatus.PENDING,
            do_not_migrate=spec.do_not_migrate,
        )
        bind_reservation(reservation.pk)
        if spec.gpu_models:
            reservation.gpu_models.set(resolved.models)
        _record_event(reservation, from_status="", to_status=ReservationStatus.PENDING, actor=actor, at=now,
                      note="Submitted.")
        workload = Workload.objects.create(
            reservation=reservation, priority_class=terms.priority_class, queue=terms.queue,
            interruptible=spec.interruptible, latest_start_at=terms.latest_start_at,
            duration_seconds=max(int((spec.end_at - spec.start_at).total_seconds()), 1),
        )

        _admit_and_place(reservation, resolved, policy, actor=actor, now=now, workload=workload,
                         queue_if_unavailable=spec.queue_if_unavailable)

    logger.debug("Reservation %s for %s ended %s %s", reservation.pk, customer.slug, reservation.status,
                 reservation.reason_code)
    return reservation


QUEUEABLE_REASONS = frozenset({RejectionReason.NO_CAPACITY, RejectionReason.QUOTA_EXCEEDED})
"""Refusals that may pass with time, so a request that asked to queue waits instead of being rejected."""


@dataclass(frozen=True)
class Refusal:
    reason: str
    detail: str


def _admit_and_place(reservation: Reservation, resolved: ResolvedSpec, policy, *, actor, now: datetime,
                     workload: Workload | None = None, queue_if_unavailable: bool = False,
                     only_node_ids: tuple[int, ...] | None = None, placed_reason: str = "") -> Refusal | None:
    """Admit and place ``reservation``; on refusal, reject it, queue it, or leave it queued.

    A ``pending`` reservation that asked to queue and was refused for capacity or quota becomes
    ``queued``; other refusals reject it. A ``queued`` reservation (placed by the scheduling cycle)
    stays queued whatever the refusal. Returns the refusal, or None when it was placed.
    """
    source = SOURCE_SCHEDULER if reservation.status == ReservationStatus.QUEUED else SOURCE_REQUEST
    refusal = _place(reservation, resolved, policy, actor=actor, now=now, workload=workload,
                     only_node_ids=only_node_ids, placed_reason=placed_reason)
    if refusal is None:
        reservation_decision_record(status=reservation.status, reason="", source=source)
        return None
    if reservation.status == ReservationStatus.QUEUED:
        return refusal
    if queue_if_unavailable and refusal.reason in QUEUEABLE_REASONS:
        workload.queued_at = now
        workload.waiting_reason_code = refusal.reason
        workload.waiting_reason = refusal.detail
        workload.save(update_fields=["queued_at", "waiting_reason_code", "waiting_reason"])
        reservation_transition(reservation=reservation, to_status=ReservationStatus.QUEUED, actor=actor, now=now,
                               reason_code=refusal.reason,
                               note=f"Waiting in queue {workload.queue.name}: {refusal.detail}")
        Decision.objects.create(reservation=reservation, kind=Decision.Kind.WAITING, reason_code=refusal.reason,
                                reason=refusal.detail, at=now, detail={"queue": workload.queue.name})
        reservation_decision_record(status=reservation.status, reason=refusal.reason, source=source)
        return refusal
    reservation_transition(reservation=reservation, to_status=ReservationStatus.REJECTED, actor=actor, now=now,
                           reason_code=refusal.reason, note=refusal.detail)
    reservation_decision_record(status=reservation.status, reason=refusal.reason, source=source)
    return refusal


def _place(reservation: Reservation, resolved: ResolvedSpec, policy, *, actor, now: datetime,
           workload: Workload | None, only_node_ids: tuple[int, ...] | None, placed_reason: str) -> Refusal | None:
    """Run quota, budget and placement; on success confirm the reservation, otherwise return why not."""
    model_names = {model.id: model.name for model in resolved.models}
    decision = quota_admit(
        customer_id=reservation.customer_id, model_ids=tuple(model_names), model_names=model_names,
        gpu_milli=resolved.request.gpu_milli_total, start_at=reservation.start_at, end_at=reservation.end_at,
    )
    if not decision.admitted_model_ids:
        return Refusal(RejectionReason.QUOTA_EXCEEDED, decision.detail)

    budget = budget_admit(customer_id=reservation.customer_id, gpu_milli=resolved.request.gpu_milli_total,
                          start_at=reservation.start_at, end_at=reservation.end_at)
    if budget.refusal:
        return Refusal(RejectionReason.BUDGET_EXCEEDED, budget.refusal)

    price_factor = interruptible_price_factor() if workload is not None and workload.interruptible else Decimal(1)
    price_cap, budget_binds = combined_price_cap(resolved.spec.max_price_per_gpu_hour, budget)
    node_filter = NodeFilter(
        gpu_model_ids=decision.admitted_model_ids,
        region_id=resolved.region.id if resolved.region else None,
        max_price_per_gpu_hour=node_price_cap(price_cap, price_factor),
    )
    outcome = placement_find_and_commit(
        reservation=reservation, request=resolved.request, node_filter=node_filter, policy=policy,
        borrowed_gpu_milli=decision.borrowed_gpu_milli, budget=budget.budget, price_factor=price_factor,
        only_node_ids=only_node_ids,
    )
    if outcome.allocation is None:
        reason, detail = outcome.reason, outcome.detail
        if budget_binds and reason == RejectionReason.PRICE_ABOVE_MAXIMUM:
            reason = RejectionReason.BUDGET_EXCEEDED
            detail = (f"What is left of the organization's budget pays at most {price_cap} per GPU-hour for this "
                      f"window, and no node that fits is that cheap. Shorten the window, use fewer GPUs, or ask "
                      f"an admin to raise the budget.")
        return Refusal(reason, detail)

    _confirm(reservation, outcome.allocation, policy, actor=actor, now=now, placed_reason=placed_reason)
    return None


def _confirm(reservation: Reservation, allocation: Allocation, policy, *, actor, now: datetime,
             placed_reason: str = "") -> None:
    """Move a placed reservation to scheduled or active, or to pending approval when its policy requires it.

    Records a ``placed`` decision with ``placed_reason`` added to the placement's own note.
    """
    needs_approval = approval_reason(
        customer_id=reservation.customer_id, gpu_count=reservation.gpu_count,
        estimated_cost=estimated_cost(price_per_gpu_hour=allocation.price_per_gpu_hour,
                                      billed_milli=allocation.billed_gpu_milli,
                                      start_at=allocation.start_at, end_at=allocation.end_at),
    )
    placed = placed_status(placed_note=f"Placed on node {allocation.node.hostname} by policy {policy.name}.",
                           needs_approval=needs_approval, start_at=reservation.start_at, now=now)
    if placed.hold_expires_at is not None:
        reservation.hold_expires_at = placed.hold_expires_at
        reservation.save(update_fields=["hold_expires_at"])
    reservation_transition(reservation=reservation, to_status=placed.status, actor=actor, now=now, note=placed.note)
    Decision.objects.create(reservation=reservation, kind=Decision.Kind.PLACED, at=now,
                            reason=f"{placed.note} {placed_reason}".strip(),
                            detail={"node_id": allocation.node_id, "status": reservation.status})


def interruptible_price_factor() -> Decimal:
    """Return the share of a node's price that interruptible reservations pay, from the settings."""
    return Decimal(str(settings.MARKETPLACE["INTERRUPTIBLE_PRICE_FACTOR"]))


def reservation_place_queued(*, reservation: Reservation, node_id: int, now: datetime,
                             reason: str = "") -> Refusal | None:
    """Place a queued reservation on ``node_id`` for ``[now, now + duration)``, as the scheduling cycle decided.

    Runs the same quota, budget, placement and approval rules as a new request, in a savepoint:
    on refusal nothing changes, the reservation stays queued, and the refusal is returned.
    ``reason`` is added to the ``placed`` decision.
    """
    bind_reservation(reservation.pk)
    workload = reservation.workload
    models = list(reservation.gpu_models.all()) or list(GpuModel.objects.all())
    spec = ReservationSpec(
        gpu_count=reservation.gpu_count, gpu_milli_per_gpu=reservation.gpu_milli_per_gpu,
        cpu_millicores=reservation.cpu_millicores, memory_mib=reservation.memory_mib, start_at=now,
        end_at=now + timedelta(seconds=workload.duration_seconds),
        max_price_per_gpu_hour=reservation.max_price_per_gpu_hour,
    )
    resolved = ResolvedSpec(spec=spec, models=models, region=reservation.region)
    original = (reservation.start_at, reservation.end_at)
    try:
        with transaction.atomic():
            if connection.features.has_select_for_update:
                # The same lock as reservation_create takes, so the customer's admissions stay one at a time.
                Organization.objects.select_for_update().only("id").get(pk=reservation.customer_id)
            reservation.start_at, reservation.end_at = spec.start_at, spec.end_at
            reservation.save(update_fields=["start_at", "end_at", "updated_at"])
            refusal = _admit_and_place(reservation, resolved, placement_policy(), actor=None, now=now,
                                       workload=workload, only_node_ids=(node_id,), placed_reason=reason)
            if refusal is not None:
                raise _PlacementRefused(refusal)
    except _PlacementRefused as refused:
        reservation.start_at, reservation.end_at = original
        return refused.refusal
    return None


class _PlacementRefused(Exception):
    def __init__(self, refusal: Refusal):
        super().__init__(refusal.detail)
        self.refusal = refusal


def reservation_requeue(*, original: Reservation, now: datetime, note: str) -> Reservation:
    """Create a queued copy of a preempted reservation, with the same terms and duration, earliest start now."""
    workload = original.workload
    duration = timedelta(seconds=workload.duration_seconds)
    copy = Reservation.objects.create(
        customer_id=original.customer_id, created_by_id=original.created_by_id, external_ref="",
        gpu_count=original.gpu_count, gpu_milli_per_gpu=original.gpu_milli_per_gpu, region_id=original.region_id,
        cpu_millicores=original.cpu_millicores, memory_mib=original.memory_mib, start_at=now, end_at=now + duration,
        max_price_per_gpu_hour=original.max_price_per_gpu_hour, currency=original.currency,
        status=ReservationStatus.PENDING, do_not_migrate=original.do_not_migrate,
    )
    copy.gpu_models.set(original.gpu_models.all())
    _record_event(copy, from_status="", to_status=ReservationStatus.PENDING, actor=None, at=now,
                  note=f"Requeued after reservation {original.pk} was preempted.")
    max_wait = timedelta(seconds=settings.MARKETPLACE["QUEUE_MAX_WAIT_SECONDS"])
    copy_workload = Workload.objects.create(
        reservation=copy, priority_class_id=workload.priority_class_id, queue_id=workload.queue_id,
        interruptible=workload.interruptible, duration_seconds=workload.duration_seconds,
        latest_start_at=now + max_wait, queued_at=now, requeued_from=original,
        waiting_reason_code="requeued", waiting_reason=note,
    )
    reservation_transition(reservation=copy, to_status=ReservationStatus.QUEUED, now=now, reason_code="requeued",
                           note=note)
    copy.workload = copy_workload
    return copy


def reservation_finish_early(*, reservation: Reservation, succeeded: bool, now: datetime, note: str) -> None:
    """End an active reservation whose work stopped before its window did, releasing the rest of the window.

    ``succeeded`` completes it; otherwise it fails. Either way its capacity and quota are free from ``now``.
    """
    release_allocation(reservation, now)
    reservation_transition(reservation=reservation,
                           to_status=ReservationStatus.COMPLETED if succeeded else ReservationStatus.FAILED,
                           now=now, reason_code="" if succeeded else "work_failed", note=note)


def reservation_move_after_failed_start(*, reservation: Reservation, exclude_node_ids: list[int],
                                        now: datetime) -> Node | None:
    """Move an active reservation whose work failed to start to another node, from ``now`` to its end.

    Its allocation is replaced: no work ran on it, so nothing is billed for it. Returns the new
    node, or None (nothing changed) when no other node has room.
    """
    old = Allocation.objects.select_related("node").get(reservation=reservation, released_at__isnull=True)
    workload = getattr(reservation, "workload", None)
    request = PlacementRequest(gpu_count=reservation.gpu_count, gpu_milli_per_gpu=reservation.gpu_milli_per_gpu,
                               cpu_millicores=reservation.cpu_millicores, memory_mib=reservation.memory_mib)
    model_ids = tuple(reservation.gpu_models.values_list("id", flat=True)) or tuple(
        GpuModel.objects.values_list("id", flat=True))
    price_factor = interruptible_price_factor() if workload is not None and workload.interruptible else Decimal(1)
    cap = reservation.max_price_per_gpu_hour
    node_filter = NodeFilter(gpu_model_ids=model_ids, region_id=reservation.region_id,
                             max_price_per_gpu_hour=node_price_cap(cap, price_factor))
    original = (reservation.start_at, reservation.end_at)
    try:
        with transaction.atomic():
            GpuShare.objects.filter(allocation=old).delete()
            old.delete()
            reservation.start_at = max(now, reservation.start_at)
            reservation.save(update_fields=["start_at", "updated_at"])
            shortlist = settings.MARKETPLACE["PLACEMENT_SHORTLIST_SIZE"]
            ids = [node_id for node_id in candidate_ids(request, reservation.start_at, reservation.end_at, node_filter,
                                                        used_limit=shortlist, free_limit=shortlist, exact=True)
                   if node_id not in set(exclude_node_ids)]
            outcome = placement_find_and_commit(
                reservation=reservation, request=request, node_filter=node_filter, policy=placement_policy(),
                borrowed_gpu_milli=old.borrowed_gpu_milli, price_factor=price_factor, only_node_ids=tuple(ids),
            ) if ids else None
            if outcome is None or outcome.allocation is None:
                raise _PlacementRefused(Refusal(RejectionReason.NO_CAPACITY, "no other node has room"))
    except _PlacementRefused:
        reservation.start_at, reservation.end_at = original
        return None
    logger.info("Reservation %s moved from %s to %s after a failed start", reservation.pk, old.node.hostname,
                outcome.allocation.node.hostname)
    return outcome.allocation.node


def reservation_transition(
    *, reservation: Reservation, to_status: str, actor: AbstractBaseUser | None = None, now: datetime | None = None,
    reason_code: str = "", note: str = "",
) -> None:
    """Move ``reservation`` to ``to_status`` and record the event; raise ``InvalidTransition`` if not allowed.

    Leaving a status that holds capacity for a final one other than ``completed`` (cancelled,
    failed, rejected, expired, preempted) releases the allocation from ``now`` on, so no path can
    leak capacity or quota.
    """
    now = now or timezone.now()
    from_status = reservation.status
    if not can_transition(from_status, to_status):
        raise InvalidTransition(
            f"Reservation {reservation.pk} is {from_status} and cannot become {to_status}.",
            current=from_status, requested=to_status,
        )
    if from_status in HOLDING_STATUSES and to_status in RELEASING_STATUSES:
        release_allocation(reservation, now)
    reservation.status = to_status
    update_fields = ["status", "updated_at"]
    if reason_code or note:
        reservation.reason_code = reason_code
        reservation.reason_detail = note
        update_fields += ["reason_code", "reason_detail"]
    reservation.save(update_fields=update_fields)
    _record_event(reservation, from_status=from_status, to_status=to_status, actor=actor, at=now,
                  reason_code=reason_code, note=note)


def reservation_cancel(
    *, reservation_id: int, customer: Organization | None = None, actor: AbstractBaseUser | None = None,
    now: datetime | None = None, note: str = "",
) -> Reservation:
    """Cancel a reservation and release what its allocation holds from ``now`` on.

    ``customer`` limits the lookup to that organization's reservations (a 404 otherwise). The
    allocation's window is cut to end at ``now`` (or at its start, if it had not begun), which frees
    capacity and quota for the rest of the window and keeps the used part for billing.
    """
    now = now or timezone.now()
    with transaction.atomic():
        reservations = Reservation.objects.select_for_update()
        if customer is not None:
            reservations = reservations.filter(customer=customer)
        try:
            reservation = reservations.get(pk=reservation_id)
        except Reservation.DoesNotExist:
            raise NotFound(f"Reservation {reservation_id} does not exist or belongs to another organization.") from None

        reservation_transition(reservation=reservation, to_status=ReservationStatus.CANCELLED, actor=actor, now=now,
                               note=note or "Cancelled.")
    logger.info("Cancelled reservation %s of %s", reservation.pk, reservation.customer_id)
    return reservation


def release_allocation(reservation: Reservation, now: datetime) -> None:
    """Cut the reservation's allocation to end at ``now`` (or its start), freeing capacity and quota after it."""
    allocation = Allocation.objects.filter(reservation=reservation, released_at__isnull=True).first()
    if allocation is None:
        return
    cut = min(max(now, allocation.start_at), allocation.end_at)
    allocation.end_at = cut
    allocation.released_at = now
    allocation.save(update_fields=["end_at", "released_at"])
    # Only shares that run past the cut change: a migrated allocation keeps its source node's shares
    # ended at the switch, and its target's shares may start after the cut.
    GpuShare.objects.filter(allocation=allocation, end_at__gt=cut).update(end_at=Greatest(F("start_at"), Value(cut)))


def reservations_advance(*, now: datetime | None = None, batch_size: int = 500) -> dict[str, int]:
    """Start scheduled reservations whose window began and complete those whose window ended.

    Rows are claimed with ``SKIP LOCKED`` on PostgreSQL, so concurrent runs never act on one row
    twice; running it again with the same ``now`` changes nothing. Returns counts per new status.
    """
    now = now or timezone.now()
    counts = {ReservationStatus.ACTIVE.value: 0, ReservationStatus.COMPLETED.value: 0}
    steps = [
        (ReservationStatus.COMPLETED, {"status__in": list(CONFIRMED_STATUSES), "end_at__lte": now}),
        (ReservationStatus.ACTIVE, {"status": ReservationStatus.SCHEDULED, "start_at__lte": now}),
    ]
    for to_status, conditions in steps:
        while True:
            with transaction.atomic():
                batch = list(
                    Reservation.objects.select_for_update(skip_locked=True).filter(**conditions)
                    .order_by("id").only("id", "status")[:batch_size]
                )
                if not batch:
                    break
                events = [
                    ReservationEvent(reservation_id=r.id, at=now, from_status=r.status, to_status=to_status,
                                     note="Window ended." if to_status == ReservationStatus.COMPLETED else "Window began.")
                    for r in batch
                ]
                Reservation.objects.filter(id__in=[r.id for r in batch]).update(status=to_status, updated_at=now)
                ReservationEvent.objects.bulk_create(events)
            counts[to_status.value] += len(batch)

    if any(counts.values()):
        logger.info("Advanced reservations at %s: %s", now.isoformat(), counts)
    return counts


def quota_set(
    *, organization: Organization, gpu_model: GpuModel | None, max_gpu_milli: int,
) -> Quota:
    """Create or change the organization's quota for ``gpu_model`` (``None``: over all models)."""
    if organization.kind != Organization.Kind.CUSTOMER:
        raise InvalidRequest(
            f"Organization {organization.slug!r} is a {organization.kind}; quotas apply to customers only.",
            errors=[FieldProblem("organization", "Choose a customer organization.")],
        )
    if max_gpu_milli < 0:
        raise InvalidRequest(
            f"max_gpu_milli is {max_gpu_milli}; use 0 or more (1000 is one whole GPU).",
            errors=[FieldProblem("max_gpu_milli", "Use 0 or more.", "min_value")],
        )
    quota, created = Quota.objects.update_or_create(
        organization=organization, gpu_model=gpu_model, defaults={"max_gpu_milli": max_gpu_milli},
    )
    logger.info("%s quota of %s for %s: %d milli", "Created" if created else "Changed", organization.slug,
                gpu_model.name if gpu_model else "any model", max_gpu_milli)
    return quota


def idempotency_keys_purge(*, now: datetime | None = None) -> int:
    """Delete idempotency keys older than the retention period; return how many were deleted."""
    now = now or timezone.now()
    retention = timedelta(seconds=settings.MARKETPLACE["IDEMPOTENCY_KEY_RETENTION_SECONDS"])
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=now - retention).delete()
    if deleted:
        logger.info("Purged %d idempotency keys older than %s", deleted, retention)
    return deleted


def _record_event(reservation: Reservation, *, from_status: str, to_status: str, actor, at: datetime,
                  reason_code: str = "", note: str = "") -> None:
    ReservationEvent.objects.create(
        reservation=reservation, actor=actor, at=at, from_status=from_status, to_status=to_status,
        reason_code=reason_code, note=note,
    )


def _reject_duplicate_external_ref(customer: Organization, external_ref: str) -> None:
    if not external_ref:
        return
    existing = (
        Reservation.objects.filter(customer=customer, external_ref=external_ref).exclude(external_ref="")
        .exclude(status=ReservationStatus.REJECTED).values_list("id", flat=True).first()
    )
    if existing is not None:
        raise DuplicateExternalRef(external_ref, existing)


def resolve_spec(spec: ReservationSpec, now: datetime) -> ResolvedSpec:
    """Validate ``spec`` and look up its GPU models and region; raise ``InvalidRequest`` listing every problem."""
    problems = _shape_problems(spec) + _window_problems(spec, now)

    catalogue = cached("gpu_models", _load_gpu_models)
    unknown = [name for name in spec.gpu_models if name not in catalogue]
    if unknown:
        # Another process may have added the model since this one cached the catalogue.
        catalogue = _load_gpu_models()
        unknown = [name for name in spec.gpu_models if name not in catalogue]
    if unknown:
        problems.append(FieldProblem(
            "gpu_models",
            f"Unknown GPU model {', '.join(map(repr, unknown))}. Use names from GET /api/v1/gpu-models/: "
            f"{', '.join(sorted(catalogue))}.",
            "unknown_gpu_model",
        ))
    models = [catalogue[name] for name in dict.fromkeys(spec.gpu_models) if name in catalogue] or list(catalogue.values())

    region = None
    if spec.region:
        region = Region.objects.filter(code=spec.region).first()
        if region is None:
            codes = ", ".join(Region.objects.values_list("code", flat=True))
            problems.append(FieldProblem("region", f"Unknown region {spec.region!r}. Use one of: {codes}.",
                                         "unknown_region"))

    if problems:
        summary = "; ".join(f"{problem.field}: {problem.message}" for problem in problems)
        raise InvalidRequest(f"The reservation request is invalid. {summary}", errors=problems)
    return ResolvedSpec(spec=spec, models=models, region=region)


def _load_gpu_models() -> dict[str, GpuModel]:
    return {model.name: model for model in GpuModel.objects.all()}


def _add_clamped(moment: datetime, delta: timedelta) -> datetime:
    """Return ``moment + delta``, clamped to the datetime range instead of raising ``OverflowError``."""
    try:
        return moment + delta
    except OverflowError:
        return (datetime.max if delta > timedelta(0) else datetime.min).replace(tzinfo=moment.tzinfo)


def _shape_problems(spec: ReservationSpec) -> list[FieldProblem]:
    problems = []
    if spec.gpu_count < 0:
        problems.append(FieldProblem("gpu_count", f"gpu_count is {spec.gpu_count}; use 0 or more.", "min_value"))
    if spec.gpu_count > 0 and not 1 <= spec.gpu_milli_per_gpu <= GPU_MILLI_PER_GPU:
        problems.append(FieldProblem(
            "gpu_milli_per_gpu",
            f"gpu_milli_per_gpu is {spec.gpu_milli_per_gpu}; use 1 to 1000 (1000 is a whole GPU).", "out_of_range",
        ))
    if spec.gpu_count == 0 and spec.gpu_milli_per_gpu != 0:
        problems.append(FieldProblem(
            "gpu_milli_per_gpu", "A request with gpu_count 0 takes no GPU; set gpu_milli_per_gpu to 0.", "inconsistent",
        ))
    if spec.cpu_millicores < 0:
        problems.append(FieldProblem("cpu_millicores", "Use 0 or more millicores.", "min_value"))
    if spec.memory_mib < 0:
        problems.append(FieldProblem("memory_mib", "Use 0 or more MiB.", "min_value"))
    if spec.gpu_count == 0 and spec.cpu_millicores == 0 and spec.memory_mib == 0:
        problems.append(FieldProblem("gpu_count", "The request asks for nothing; ask for at least one GPU.", "empty"))
    price = spec.max_price_per_gpu_hour
    if price is not None:
        try:
            valid_price = Decimal(price).is_finite() and 0 < Decimal(price) <= MAX_PRICE_PER_GPU_HOUR
        except (InvalidOperation, TypeError):
            valid_price = False
        if not valid_price:
            problems.append(FieldProblem(
                "max_price_per_gpu_hour", f"{price} is not a price; use a positive amount such as 2.50.", "invalid",
            ))
    if len(spec.external_ref) > 128:
        problems.append(FieldProblem("external_ref", "Use at most 128 characters.", "max_length"))
    return problems


def _window_problems(spec: ReservationSpec, now: datetime) -> list[FieldProblem]:
    problems = []
    for name in ("start_at", "end_at"):
        value = getattr(spec, name)
        if value.tzinfo is None or value.utcoffset() is None:
            problems.append(FieldProblem(name, "Add a UTC offset, for example 2026-05-01T10:00:00Z.", "naive_datetime"))
    if problems:
        return problems
    limits = settings.MARKETPLACE
    duration = spec.end_at - spec.start_at
    if spec.end_at <= spec.start_at:
        problems.append(FieldProblem("end_at", "end_at must be after start_at (default: now).", "window_empty"))
    elif duration < timedelta(seconds=limits["MIN_DURATION_SECONDS"]):
        problems.append(FieldProblem(
            "end_at", f"The window must last at least {limits['MIN_DURATION_SECONDS']} seconds; move end_at later.",
            "too_short",
        ))
    elif duration > timedelta(seconds=limits["MAX_DURATION_SECONDS"]):
        problems.append(FieldProblem(
            "end_at", f"The window lasts {duration}; the maximum is {timedelta(seconds=limits['MAX_DURATION_SECONDS'])}. "
                      "Split it into several reservations.", "too_long",
        ))
    skew = timedelta(seconds=limits["START_CLOCK_SKEW_SECONDS"])
    horizon = timedelta(seconds=limits["MAX_HORIZON_SECONDS"])
    latest_start = _add_clamped(now, horizon)
    if spec.start_at < _add_clamped(now, -skew):
        problems.append(FieldProblem(
            "start_at", f"start_at {spec.start_at.isoformat()} is in the past; use now or a later time.", "in_past",
        ))
    elif spec.start_at > latest_start:
        problems.append(FieldProblem(
            "start_at", f"start_at {spec.start_at.isoformat()} is more than {horizon.days} days ahead; "
                        f"book no later than {latest_start.isoformat()}.", "beyond_horizon",
        ))
    return problems
