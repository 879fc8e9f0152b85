"""Migrations of reservations between nodes, as a crash-safe state machine; and node drains.

Each step commits on its own and records the new status, so ``migration_advance`` can run
again after a crash, a killed worker or a duplicate task and go on from where the last commit
left it. The lock order is the services': migration, reservation, allocation, customer, node.

- planned -> target_reserved: a hold allocation keeps the target's capacity (no reservation,
  no quota, no price), checked by the database triggers like any allocation.
- target_reserved -> moving: the source's agent gets a request to stop the work by a deadline.
- moving -> done: once the agent stopped (or the deadline passed, or no agent ran it), one
  transaction checks again that the reservation is still on the source and that the target is
  active with its held GPUs healthy and in service. It meters the source's run up to now,
  deletes the hold, cuts the source's GPU shares at now, and moves the allocation to the target
  with shares from now to its end. The booked price stays; rebalancing plans,
  which only move reservations that have not started, take the target's lower price as before.
- Any step that fails rolls back: the hold goes, the stop request is withdrawn, and the
  reservation stays where it was.

NOTE: when running work moves, the allocation's node becomes the target for its whole window, so
the CPU and memory trigger also checks the target over the part already run; a target that was
full then refuses the move (it rolls back) although nothing would be overcommitted.
"""

import logging
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from allocation.models import Allocation, GpuShare, RebalanceMove, Reservation, ReservationEvent, ReservationStatus
from allocation.placement_policy import placement_policy
from allocation.pricing import billed_gpu_milli
from allocation.selectors import NodeFilter, node_states
from allocation.placement import placement_rank
from allocation.solvers import PlacementRequest
from marketplace.audit import audit_record
from marketplace.broker import enqueue
from marketplace.exceptions import InvalidRequest, NotFound
from marketplace.models import Gpu, Node, Organization
from providers.metering import usage_record

from .models import Assignment, Decision, Migration, Preemption, PreemptionVictim

logger = logging.getLogger(__name__)

OPEN_STATUSES = (Migration.Status.PLANNED, Migration.Status.TARGET_RESERVED, Migration.Status.MOVING)


class MoveSkipped(Exception):
    """The move no longer applies; the message gives the reason."""


def migration_plan(*, reservation_id: int, to_node_id: int, kind: str, reason: str, now: datetime,
                   rebalance_move: RebalanceMove | None = None, actor: AbstractBaseUser | None = None) -> Migration | None:
    """Record a planned move of the reservation to ``to_node_id``; None when one is already open for it."""
    from_node_id = (Allocation.objects.filter(reservation_id=reservation_id, released_at__isnull=True)
                    .values_list("node_id", flat=True).first())
    if from_node_id is None:
        return None
    try:
        with transaction.atomic():
            return Migration.objects.create(
                reservation_id=reservation_id, kind=kind, from_node_id=from_node_id, to_node_id=to_node_id,
                rebalance_move=rebalance_move, reason=reason[:2000], created_by=actor, created_at=now,
            )
    except IntegrityError:
        logger.info("Migration of reservation %s not planned: another one is open", reservation_id)
        return None


def migration_advance(*, migration_id: int, now: datetime | None = None, max_steps: int | None = None) -> Migration:
    """Run the migration's remaining steps, or at most ``max_steps``; stop early while the source's agent runs."""
    pause = settings.MARKETPLACE["MIGRATION_STEP_PAUSE_SECONDS"]
    steps = 0
    while max_steps is None or steps < max_steps:
        steps += 1
        moment = now or timezone.now()
        with transaction.atomic():
            try:
                migration = Migration.objects.select_for_update().get(pk=migration_id)
            except Migration.DoesNotExist:
                raise NotFound(f"Migration {migration_id} does not exist.") from None
            if migration.status not in OPEN_STATUSES:
                return migration
            step = {Migration.Status.PLANNED: _reserve_target, Migration.Status.TARGET_RESERVED: _stop_source,
                    Migration.Status.MOVING: _switch}[migration.status]
            before = migration.status
            try:
                with transaction.atomic():
                    progressed = step(migration, moment)
            except MoveSkipped as skipped:
                _roll_back(migration, str(skipped), moment)
                return migration
            except IntegrityError as error:
                _roll_back(migration, f"The database refused the move ({str(error).splitlines()[0]}); the "
                                      f"reservation stays where it was.", moment)
                return migration
            if not progressed:
                return migration
        logger.info("Migration %s of reservation %s: %s -> %s", migration.pk, migration.reservation_id, before,
                    migration.status)
        if pause and migration.status in OPEN_STATUSES:
            time.sleep(pause)
    return migration


def open_migrations() -> list[int]:
    return list(Migration.objects.filter(status__in=OPEN_STATUSES).order_by("id").values_list("id", flat=True))


def _locked(migration: Migration) -> tuple[Reservation, Allocation | None]:
    reservation = Reservation.objects.select_for_update().get(pk=migration.reservation_id)
    allocation = (Allocation.objects.select_for_update()
                  .filter(reservation_id=migration.reservation_id, released_at__isnull=True).first())
    return reservation, allocation


def _reserve_target(migration: Migration, now: datetime) -> bool:
    reservation, allocation = _locked(migration)
    if reservation.status not in (ReservationStatus.SCHEDULED, ReservationStatus.ACTIVE) or allocation is None \
            or allocation.end_at <= now:
        raise MoveSkipped("The reservation is no longer scheduled or active, so it stays where it is.")
    if allocation.node_id != migration.from_node_id:
        raise MoveSkipped("The reservation's allocation changed since the move was planned.")
    if reservation.do_not_migrate and migration.kind != Migration.Kind.GPU_RETIRED:
        raise MoveSkipped("The customer asked that the reservation never moves.")
    if migration.kind == Migration.Kind.REBALANCE and (reservation.status != ReservationStatus.SCHEDULED
                                                       or allocation.start_at <= now):
        raise MoveSkipped("The reservation is no longer scheduled to start later, so it stays where it is.")

    Organization.objects.select_for_update().only("id").get(pk=reservation.customer_id)
    target = Node.objects.select_for_update().get(pk=migration.to_node_id)
    check_target(reservation, allocation, target, migration.rebalance_move)
    start = max(now, allocation.start_at)
    request = _request_of(reservation)
    placements = placement_policy().rank(request, node_states([target.pk], start, allocation.end_at))
    if not placements:
        raise MoveSkipped(f"Node {target.hostname} can no longer hold the reservation for its window.")

    hold = Allocation.objects.create(
        reservation=None, customer_id=reservation.customer_id, node=target, gpu_model_id=target.gpu_model_id,
        start_at=start, end_at=allocation.end_at, cpu_millicores=allocation.cpu_millicores,
        memory_mib=allocation.memory_mib, gpu_milli_total=0, billed_gpu_milli=0, price_per_gpu_hour=0,
        currency=target.currency,
    )
    GpuShare.objects.bulk_create(GpuShare(allocation=hold, gpu_id=gpu_id, gpu_milli=milli, start_at=start,
                                          end_at=allocation.end_at) for gpu_id, milli in placements[0].gpu_shares)
    migration.hold = hold
    migration.status = Migration.Status.TARGET_RESERVED
    migration.save(update_fields=["hold", "status", "updated_at"])
    return True


def _stop_source(migration: Migration, now: datetime) -> bool:
    grace = timedelta(seconds=settings.MARKETPLACE["MIGRATION_STOP_SECONDS"])
    (Assignment.objects.filter(reservation_id=migration.reservation_id, node_id=migration.from_node_id,
                               status__in=[Assignment.Status.ASSIGNED, Assignment.Status.STARTED],
                               stop_requested_at__isnull=True)
     .update(stop_requested_at=now, stop_by=now + grace))
    migration.status = Migration.Status.MOVING
    migration.save(update_fields=["status", "updated_at"])
    return True


def _switch(migration: Migration, now: datetime) -> bool:
    reservation, allocation = _locked(migration)
    if reservation.status not in (ReservationStatus.SCHEDULED, ReservationStatus.ACTIVE) or allocation is None:
        raise MoveSkipped(f"The reservation became {reservation.status} while it moved; nothing to move.")
    if allocation.node_id != migration.from_node_id:
        # A failed start moved the reservation to another node while this move waited.
        raise MoveSkipped("The reservation's allocation changed since the move was planned.")
    still_running = Assignment.objects.filter(
        reservation_id=reservation.pk, node_id=migration.from_node_id, status=Assignment.Status.STARTED,
        stop_by__gt=now).exists()
    if still_running:
        return False

    Organization.objects.select_for_update().only("id").get(pk=reservation.customer_id)
    target = Node.objects.select_for_update().get(pk=migration.to_node_id)
    check_target(reservation, allocation, target, migration.rebalance_move)
    hold = migration.hold
    shares = list(hold.shares.values_list("gpu_id", "gpu_milli")) if hold else []
    if hold is None or not shares and reservation.gpu_count:
        raise MoveSkipped("The target's hold is gone; the move starts over from planning.")
    usable = Gpu.objects.filter(pk__in=[gpu_id for gpu_id, _milli in shares], retired_at__isnull=True,
                                health=Gpu.Health.HEALTHY).count()
    if usable < len(shares):
        raise MoveSkipped(f"GPUs held on node {target.hostname} failed or were retired since they were reserved.")
    source = Node.objects.get(pk=migration.from_node_id).hostname
    migration.hold = None
    migration.save(update_fields=["hold"])
    GpuShare.objects.filter(allocation=hold).delete()
    hold.delete()

    cut = max(now, allocation.start_at)
    # The source's runs are billed up to the switch, whenever their agent reports the stop.
    for assignment in Assignment.objects.select_related("node").filter(
            reservation_id=reservation.pk, node_id=migration.from_node_id, status=Assignment.Status.STARTED):
        usage_record(assignment=assignment, stopped_at=cut)
    old_shares = GpuShare.objects.filter(allocation=allocation)
    if cut > allocation.start_at:
        old_shares.filter(end_at__gt=cut).update(end_at=cut)
    else:
        old_shares.delete()
    allocation.node, allocation.gpu_model_id = target, target.gpu_model_id
    fields = ["node", "gpu_model"]
    if migration.kind == Migration.Kind.REBALANCE:
        allocation.price_per_gpu_hour, allocation.currency = target.price_per_gpu_hour, target.currency
        allocation.billed_gpu_milli = billed_gpu_milli(_request_of(reservation), node_gpu_count=target.gpu_count,
                                                       node_cpu_millicores=target.cpu_millicores,
                                                       node_memory_mib=target.memory_mib)
        fields += ["price_per_gpu_hour", "currency", "billed_gpu_milli"]
    allocation.save(update_fields=fields)
    GpuShare.objects.bulk_create(GpuShare(allocation=allocation, gpu_id=gpu_id, gpu_milli=milli, start_at=cut,
                                          end_at=allocation.end_at) for gpu_id, milli in shares)

    note = f"Moved from node {source} to node {target.hostname} ({migration.get_kind_display().lower()})."
    if migration.rebalance_move_id:
        note = f"Moved from node {source} to node {target.hostname} by rebalancing plan " \
               f"{migration.rebalance_move.plan_id}."
        RebalanceMove.objects.filter(pk=migration.rebalance_move_id).update(
            outcome=RebalanceMove.Outcome.APPLIED, outcome_detail=note)
    ReservationEvent.objects.create(reservation=reservation, at=now, from_status=reservation.status,
                                    to_status=reservation.status, note=note)
    reservation.reason_detail = note
    reservation.save(update_fields=["reason_detail", "updated_at"])
    Decision.objects.create(reservation=reservation, kind=Decision.Kind.MIGRATED, at=now,
                            reason=f"{note} {migration.reason}".strip(),
                            detail={"migration_id": migration.pk, "from_node_id": migration.from_node_id,
                                    "to_node_id": target.pk})
    migration.status, migration.outcome = Migration.Status.DONE, note
    migration.save(update_fields=["status", "outcome", "updated_at"])
    return True


def _roll_back(migration: Migration, reason: str, now: datetime) -> None:
    """Delete the migration's hold and mark it rolled back, inside the caller's transaction."""
    hold = migration.hold
    if hold is not None:
        migration.hold = None
        GpuShare.objects.filter(allocation=hold).delete()
        hold.delete()
    # Past the deadline too: an agent that has not stopped yet runs on, and the reservation stays here.
    # A preemption in its grace period keeps the stop request it shares with this move.
    in_grace = PreemptionVictim.objects.filter(reservation_id=migration.reservation_id,
                                               preemption__status=Preemption.Status.GRACE).exists()
    if not in_grace:
        (Assignment.objects.filter(reservation_id=migration.reservation_id, node_id=migration.from_node_id,
                                   status__in=[Assignment.Status.ASSIGNED, Assignment.Status.STARTED])
         .update(stop_requested_at=None, stop_by=None))
    migration.status, migration.outcome = Migration.Status.ROLLED_BACK, reason
    migration.save(update_fields=["hold", "status", "outcome", "updated_at"])
    _not_migrated(migration.reservation_id, f"The move to another node was rolled back: {reason}", now)
    if migration.rebalance_move_id:
        RebalanceMove.objects.filter(pk=migration.rebalance_move_id).update(
            outcome=RebalanceMove.Outcome.SKIPPED, outcome_detail=reason)
    logger.warning("Migration %s of reservation %s rolled back: %s", migration.pk, migration.reservation_id, reason)


def check_target(reservation: Reservation, allocation: Allocation, target: Node, move: RebalanceMove | None) -> None:
    """Raise ``MoveSkipped`` unless ``target`` suits the reservation (and, for a rebalancing move, its proposal)."""
    if target.status != Node.Status.ACTIVE:
        raise MoveSkipped(f"Node {target.hostname} is no longer active.")
    if target.gpu_model_id != allocation.gpu_model_id:
        raise MoveSkipped(f"Node {target.hostname} no longer has the reservation's GPU model.")
    if reservation.region_id is not None and target.region_id != reservation.region_id:
        raise MoveSkipped(f"Node {target.hostname} is no longer in the region the reservation asked for.")
    if move is None:
        return
    if target.currency != allocation.currency:
        raise MoveSkipped(f"Node {target.hostname} now prices in {target.currency}, not {allocation.currency}.")
    if target.price_per_gpu_hour != move.target_price_per_gpu_hour:
        raise MoveSkipped(f"Node {target.hostname}'s price changed from {move.target_price_per_gpu_hour} to "
                          f"{target.price_per_gpu_hour} per GPU-hour since the plan was proposed.")
    if target.price_per_gpu_hour > allocation.price_per_gpu_hour or (
            reservation.max_price_per_gpu_hour is not None
            and target.price_per_gpu_hour > reservation.max_price_per_gpu_hour):
        raise MoveSkipped(f"Node {target.hostname} now costs {target.price_per_gpu_hour} per GPU-hour, more than the "
                          f"reservation pays or accepts.")
    request = _request_of(reservation)
    billed = billed_gpu_milli(request, node_gpu_count=target.gpu_count, node_cpu_millicores=target.cpu_millicores,
                              node_memory_mib=target.memory_mib)
    if target.price_per_gpu_hour * billed > allocation.price_per_gpu_hour * allocation.billed_gpu_milli:
        raise MoveSkipped(f"On node {target.hostname} the reservation would cost more than it does now.")


def _request_of(reservation: Reservation) -> PlacementRequest:
    return PlacementRequest(gpu_count=reservation.gpu_count, gpu_milli_per_gpu=reservation.gpu_milli_per_gpu,
                            cpu_millicores=reservation.cpu_millicores, memory_mib=reservation.memory_mib)


def node_drain(*, node_id: int, actor: AbstractBaseUser | None = None, now: datetime | None = None) -> dict:
    """Stop new placements on the node and plan a move for each reservation it holds; return counts.

    Reservations marked do-not-migrate stay, with a decision that records it; those with no other
    node of their GPU model (and region, when they asked for one) free for the rest of their
    window stay too. Each move's target is reserved at once; the rest of each move runs in a
    ``scheduler.advance_migration`` task once this commits.
    """
    now = now or timezone.now()
    with transaction.atomic():
        try:
            node = Node.objects.select_for_update().get(pk=node_id)
        except Node.DoesNotExist:
            raise NotFound(f"Node {node_id} does not exist.") from None
        if node.status == Node.Status.OFFLINE:
            raise InvalidRequest(f"Node {node.hostname} is offline; bring it back before draining it.")
        status_before = node.status
        node.status = Node.Status.DRAINING
        node.save(update_fields=["status", "updated_at"])
        allocations = list(Allocation.objects.select_related("reservation__region", "node").filter(
            node=node, released_at__isnull=True, end_at__gt=now, reservation__isnull=False,
            reservation__status__in=[ReservationStatus.SCHEDULED, ReservationStatus.ACTIVE]))
        planned, stayed = [], 0
        for allocation in allocations:
            migration = migration_plan_off_node(reservation_id=allocation.reservation_id, actor=actor, now=now,
                                                reason=f"Node {node.hostname} is draining.", allocation=allocation)
            if migration is None:
                stayed += 1
            else:
                planned.append(migration.pk)
        audit_record(action="node.drain", obj=node, actor=actor, organization=node.provider_id,
                     details={"before": {"status": status_before}, "after": {"status": node.status},
                              "migrations": planned, "stayed": stayed})
    logger.info("Node %s draining: %d moves planned, %d reservations stay", node.hostname, len(planned), stayed)
    return {"planned": len(planned), "stayed": stayed, "migrations": planned}


def migration_plan_off_node(*, reservation_id: int, reason: str, now: datetime,
                            actor: AbstractBaseUser | None = None, allocation: Allocation | None = None,
                            kind: str = Migration.Kind.DRAIN) -> Migration | None:
    """Plan a move of the reservation to the best other node and reserve that node at once; None if it stays.

    It stays, with a ``not_migrated`` decision, when the customer asked it never moves or when no
    other active node of its GPU model (and region) has room for the rest of its window. A move
    off a retired GPU (``kind`` ``gpu_retired``) ignores do-not-migrate: the hardware is gone.
    """
    allocation = allocation or (Allocation.objects.select_related("reservation__region", "node")
                                .get(reservation_id=reservation_id, released_at__isnull=True))
    reservation, node = allocation.reservation, allocation.node
    pinned = reservation.do_not_migrate and kind != Migration.Kind.GPU_RETIRED
    target = None if pinned else _drain_target(reservation, allocation, now)
    if target is None:
        region = f" in region {reservation.region.code}" if reservation.region_id else ""
        why = ("the customer asked that it never moves" if pinned
               else f"no other active node of its GPU model{region} has room for the rest of its window")
        _not_migrated(reservation.pk, f"{reason} The reservation stays on {node.hostname}: {why}.", now)
        return None
    migration = migration_plan(reservation_id=reservation.pk, to_node_id=target, kind=kind, reason=reason, now=now,
                               actor=actor)
    if migration is None:
        return None
    # Reserve the target at once, so the next move's target is chosen with this hold counted.
    migration = migration_advance(migration_id=migration.pk, now=now, max_steps=1)
    if migration.status == Migration.Status.ROLLED_BACK:
        return None
    from .tasks import advance_migration_task

    # The rest of the move runs in a task once the caller's transaction commits.
    transaction.on_commit(lambda: enqueue(advance_migration_task, args=(migration.pk,),
                                          reason="the periodic scheduler.advance_migrations"))
    return migration


def _not_migrated(reservation_id: int, reason: str, now: datetime) -> None:
    """Record that a reservation stays where it is, unless its latest decision already records the same."""
    latest = Decision.objects.filter(reservation_id=reservation_id).order_by("-at", "-id").first()
    if latest is not None and latest.kind == Decision.Kind.NOT_MIGRATED and latest.reason == reason:
        return
    Decision.objects.create(reservation_id=reservation_id, kind=Decision.Kind.NOT_MIGRATED, at=now, reason=reason)


def _drain_target(reservation: Reservation, allocation: Allocation, now: datetime) -> int | None:
    start = max(now, allocation.start_at)
    node_filter = NodeFilter(gpu_model_ids=(allocation.gpu_model_id,), region_id=reservation.region_id,
                             max_price_per_gpu_hour=None)
    ranked = placement_rank(request=_request_of(reservation), start_at=start, end_at=allocation.end_at,
                            node_filter=node_filter, policy=placement_policy())
    others = [placement.node_id for placement in ranked if placement.node_id != allocation.node_id]
    return others[0] if others else None
