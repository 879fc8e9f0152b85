"""The scheduling cycle as a service: read the queue and the fleet, decide with ``scheduler.core``, apply.

The whole cycle runs in one transaction, so a cycle that crashes midway leaves nothing half
done. On PostgreSQL it first takes a transaction-scoped advisory lock; a second cycle that
starts meanwhile finds the lock taken and does nothing. SQLite serialises writers anyway.

Each placement goes through ``allocation.services.reservation_place_queued``: the same quota,
budget and placement rules as an API request, and the database triggers behind them. A refused
placement leaves the reservation queued with the refusal as its waiting reason.
"""

import dataclasses
import logging
import math
import time
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from allocation.lifecycle import HOLDING_STATUSES
from allocation.models import Allocation, GpuShare, Reservation, ReservationStatus, SolverRun
from allocation.placement_policy import placement_policy
from allocation.services import (
    interruptible_price_factor, node_price_cap, reservation_place_queued, reservation_transition,
)
from allocation.solvers.base import NodeState, PlacementRequest
from allocation.solvers.fleet import Fleet
from marketplace.metrics import SCHEDULING_CYCLE_SECONDS, solver_run_observe
from marketplace.models import Gpu, MaintenanceWindow, Node

from .core import Booking, CycleConfig, Running, Timeline, Waiting, run_cycle
from .models import Decision, Preemption, PreemptionVictim, Queue, SchedulingCycle, Workload
from .preemptions import preemption_open, preemption_propose, preemptions_obsolete

logger = logging.getLogger(__name__)

CYCLE_LOCK_KEY = 0x5C4ED01E
"""The PostgreSQL advisory lock that one scheduling cycle holds at a time."""


def scheduling_cycle(*, now: datetime | None = None, trigger: str = "periodic") -> SchedulingCycle | None:
    """Run one cycle; return its record, or None when another cycle holds the lock or nothing waits."""
    now = now or timezone.now()
    started = time.perf_counter()
    with transaction.atomic():
        if not _take_cycle_lock():
            logger.info("Scheduling cycle skipped (%s): another cycle is running", trigger)
            return None
        expired = _expire_overdue(now)
        preemptions_obsolete(now=now)
        workloads = list(
            Workload.objects.select_related("reservation", "priority_class", "queue")
            .prefetch_related("reservation__gpu_models")
            .filter(reservation__status=ReservationStatus.QUEUED)
        )
        if not workloads:
            if expired:
                logger.info("Scheduling cycle (%s): expired %d, nothing waits", trigger, expired)
            return None
        logger.info("Scheduling cycle started (%s): %d waiting", trigger, len(workloads))

        cycle = SchedulingCycle.objects.create(started_at=now, trigger=trigger, waiting=len(workloads))
        fleet, gpu_columns, regions = fleet_capacity()
        running = running_work(now, fleet, gpu_columns)
        busy = _open_preemption_parties()
        waiting = [_waiting(workload, now, busy) for workload in workloads]
        running = [work if work.booking.key not in busy else _not_preemptible(work) for work in running]
        config = CycleConfig(
            strict_fifo_queues=frozenset(Queue.objects.filter(strict_fifo=True).values_list("name", flat=True)),
            reserve_depth=settings.MARKETPLACE["SCHEDULER_RESERVE_DEPTH"],
            max_preemptions=settings.MARKETPLACE["SCHEDULER_MAX_PREEMPTIONS"],
            max_placements=settings.MARKETPLACE["SCHEDULER_MAX_PLACEMENTS"],
            batch_solver=settings.MARKETPLACE["SCHEDULER_BATCH_SOLVER"],
            batch_max_requests=settings.MARKETPLACE["SCHEDULER_BATCH_MAX_REQUESTS"],
            batch_time_limit_seconds=settings.MARKETPLACE["SCHEDULER_BATCH_TIME_LIMIT_SECONDS"],
        )
        timeline = Timeline(fleet, [work.booking for work in running], regions=regions)
        result = run_cycle(timeline, waiting, running, placement_policy(), usage=fair_share_usage(now),
                           config=config)

        _record_batch_runs(result.batch_runs, fleet.size, cycle)
        by_key = {workload.reservation_id: workload for workload in workloads}
        placed = _apply_placements(result.placed, by_key, fleet, cycle, now)
        proposals = _apply_preemptions(result.preemptions, fleet, cycle, now)
        _record_waiting(result.waiting, by_key, cycle, now)

        cycle.placed, cycle.preemptions = placed, proposals
        cycle.decide_seconds = result.seconds
        cycle.seconds = time.perf_counter() - started
        cycle.detail = {"expired": expired, "decided_placements": len(result.placed), "nodes": fleet.size,
                        "running": len(running)}
        cycle.save(update_fields=["placed", "preemptions", "decide_seconds", "seconds", "detail"])
    SCHEDULING_CYCLE_SECONDS.observe(cycle.seconds)
    logger.info("Scheduling cycle %s finished: %d placed, %d preemptions proposed, %d waiting, %.3f s",
                cycle.pk, placed, proposals, len(result.waiting), cycle.seconds)
    return cycle


def _take_cycle_lock() -> bool:
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [CYCLE_LOCK_KEY])
        return bool(cursor.fetchone()[0])


def fleet_capacity() -> tuple[Fleet, dict[int, tuple[int, int]], np.ndarray]:
    """Return the active nodes with their healthy GPUs as an idle fleet, each GPU's (row, column), and each row's region id."""
    nodes = list(Node.objects.filter(status=Node.Status.ACTIVE).select_related("gpu_model").order_by("id"))
    gpus = defaultdict(list)
    for gpu_id, node_id in (Gpu.objects.filter(node__status=Node.Status.ACTIVE, health=Gpu.Health.HEALTHY)
                            .order_by("node_id", "index").values_list("id", "node_id")):
        gpus[node_id].append(gpu_id)
    states = [
        NodeState(node_id=node.id, gpu_model=node.gpu_model.name, gpu_count=node.gpu_count,
                  cpu_capacity_millicores=node.cpu_millicores, cpu_free_millicores=node.cpu_millicores,
                  memory_capacity_mib=node.memory_mib, memory_free_mib=node.memory_mib,
                  gpu_free_milli=tuple((gpu_id, 1000) for gpu_id in gpus[node.id]),
                  price_per_gpu_hour=float(node.price_per_gpu_hour))
        for node in nodes
    ]
    if not states:
        return Fleet.build(cpu=[], memory=[], gpu_count=[], models=[]), {}, np.zeros(0, dtype=np.int64)
    fleet = Fleet.from_states(states)
    columns = {gpu_id: (row, column) for row, state in enumerate(states)
               for column, (gpu_id, _) in enumerate(state.gpu_free_milli)}
    return fleet, columns, np.array([node.region_id for node in nodes], dtype=np.int64)


def running_work(now: datetime, fleet: Fleet, gpu_columns: dict[int, tuple[int, int]]) -> list[Running]:
    """Return every allocation that uses capacity from ``now`` on, as bookings with their preemption terms.

    Migration holds are included and can never be preempted.
    """
    rows = {int(node_id): row for row, node_id in enumerate(fleet.node_ids)}
    allocations = list(
        Allocation.objects.filter(Q(reservation__status__in=HOLDING_STATUSES) | Q(reservation__isnull=True),
                                  end_at__gt=now, start_at__lt=F("end_at"), node_id__in=rows.keys())
        .select_related("reservation__workload__priority_class")
        .only("id", "node_id", "reservation_id", "customer_id", "start_at", "end_at", "cpu_millicores", "memory_mib",
              "borrowed_gpu_milli", "reservation__status", "reservation__workload__interruptible",
              "reservation__workload__priority_class__value", "reservation__workload__priority_class__preemptible",
              "reservation__workload__priority_class__min_runtime_seconds",
              "reservation__workload__priority_class__grace_period_seconds")
    )
    shares = defaultdict(list)
    for allocation_id, gpu_id, milli in (GpuShare.objects.filter(allocation_id__in=[a.id for a in allocations])
                                         .values_list("allocation_id", "gpu_id", "gpu_milli")):
        shares[allocation_id].append((gpu_id, milli))

    work = [_maintenance(window, rows[window.node_id], fleet, now)
            for window in MaintenanceWindow.objects.filter(end_at__gt=now, node_id__in=rows.keys())]
    for allocation in allocations:
        row = rows[allocation.node_id]
        columns = tuple(gpu_columns[gpu_id][1] for gpu_id, _ in shares[allocation.id] if gpu_id in gpu_columns)
        milli = shares[allocation.id][0][1] if shares[allocation.id] else 0
        # A migration's hold has no reservation; a negative key keeps it apart from reservation ids.
        booking = Booking(
            key=allocation.reservation_id or -allocation.id, row=row, columns=columns, gpu_milli_per_gpu=milli if columns else 0,
            cpu_millicores=allocation.cpu_millicores, memory_mib=allocation.memory_mib,
            start=(allocation.start_at - now).total_seconds(), end=(allocation.end_at - now).total_seconds(),
        )
        reservation = allocation.reservation
        workload = getattr(reservation, "workload", None) if reservation else None
        priority_class = workload.priority_class if workload else None
        elapsed = max((now - allocation.start_at).total_seconds(), 0.0)
        active = reservation is not None and reservation.status == ReservationStatus.ACTIVE
        preemptible = bool(active and priority_class and priority_class.preemptible
                           and (workload.interruptible or allocation.borrowed_gpu_milli > 0))
        work.append(Running(
            booking=booking, organization=allocation.customer_id,
            priority=priority_class.value if priority_class else 0, preemptible=preemptible,
            borrowed_milli=allocation.borrowed_gpu_milli,
            protected_for=(priority_class.min_runtime_seconds if priority_class else 0) - elapsed,
            elapsed=elapsed, grace=float(priority_class.grace_period_seconds if priority_class else 0),
        ))
    return work


def _maintenance(window: MaintenanceWindow, row: int, fleet: Fleet, now: datetime) -> Running:
    """Return a maintenance window as a booking of the whole node that nothing can preempt."""
    columns = tuple(range(int(fleet.gpu_count[row])))
    booking = Booking(key=-(10**12 + window.pk), row=row, columns=columns, gpu_milli_per_gpu=1000 if columns else 0,
                      cpu_millicores=int(fleet.cpu_capacity[row]), memory_mib=int(fleet.memory_free[row]),
                      start=(window.start_at - now).total_seconds(), end=(window.end_at - now).total_seconds())
    return Running(booking=booking, organization=0, priority=10**9, preemptible=False)


def fair_share_usage(now: datetime) -> dict[int, tuple[float, float, float]]:
    """Return each customer's decayed usage over the fair-share window: average GPU milli, CPU and memory held.

    Each allocation counts for the part of its window inside ``[now - window, now]``, weighted by
    ``0.5 ** (age / half-life)`` at the middle of that part.
    """
    config = settings.MARKETPLACE
    window = timedelta(hours=config["FAIR_SHARE_WINDOW_HOURS"])
    half_life = config["FAIR_SHARE_HALF_LIFE_HOURS"] * 3600
    since = now - window
    usage: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    rows = (Allocation.objects.filter(start_at__lt=now, end_at__gt=since)
            .values_list("customer_id", "start_at", "end_at", "gpu_milli_total", "cpu_millicores", "memory_mib"))
    total = window.total_seconds()
    for customer_id, start_at, end_at, milli, cpu, memory in rows:
        begin, end = max(start_at, since), min(end_at, now)
        seconds = (end - begin).total_seconds()
        if seconds <= 0:
            continue
        age = (now - (begin + (end - begin) / 2)).total_seconds()
        weight = seconds / total * math.pow(0.5, age / half_life)
        vector = usage[customer_id]
        vector[0] += milli * weight
        vector[1] += cpu * weight
        vector[2] += memory * weight
    return {customer: tuple(vector) for customer, vector in usage.items()}


def _waiting(workload: Workload, now: datetime, busy: set[int]) -> Waiting:
    reservation = workload.reservation
    max_price = None
    if reservation.max_price_per_gpu_hour is not None:
        factor = interruptible_price_factor() if workload.interruptible else Decimal(1)
        max_price = float(node_price_cap(reservation.max_price_per_gpu_hour, factor))
    return Waiting(
        key=reservation.pk, organization=reservation.customer_id,
        request=PlacementRequest(gpu_count=reservation.gpu_count, gpu_milli_per_gpu=reservation.gpu_milli_per_gpu,
                                 cpu_millicores=reservation.cpu_millicores, memory_mib=reservation.memory_mib),
        duration=float(workload.duration_seconds), priority=workload.priority_class.value,
        submitted=(workload.queued_at or reservation.created_at).timestamp(), queue=workload.queue.name,
        not_before=max((reservation.start_at - now).total_seconds(), 0.0),
        gpu_models=tuple(sorted(model.name for model in reservation.gpu_models.all())),
        max_price=max_price,
        can_preempt=workload.priority_class.can_preempt and reservation.pk not in busy,
        region=reservation.region_id,
    )


def _not_preemptible(work: Running) -> Running:
    return dataclasses.replace(work, preemptible=False)


def _open_preemption_parties() -> set[int]:
    """Return the reservations that are a beneficiary or a victim of an open preemption."""
    open_ids = Preemption.objects.filter(preemption_open()).values_list("id", flat=True)
    parties = set(Preemption.objects.filter(id__in=open_ids).values_list("beneficiary_id", flat=True))
    parties.update(PreemptionVictim.objects.filter(preemption_id__in=open_ids).values_list("reservation_id", flat=True))
    return parties


def _apply_placements(placements, by_key: dict[int, Workload], fleet: Fleet, cycle: SchedulingCycle,
                      now: datetime) -> int:
    placed = 0
    for choice in placements:
        workload = by_key[choice.key]
        reservation = Reservation.objects.select_for_update().get(pk=choice.key)
        if reservation.status != ReservationStatus.QUEUED:
            continue
        reservation.workload = workload
        node_id = int(fleet.node_ids[choice.row])
        how = ("By backfill: it delays no request ahead of it." if choice.backfilled
               else "It was next in the queue.")
        refusal = reservation_place_queued(reservation=reservation, node_id=node_id, now=now,
                                           reason=f"{how} Scheduling cycle {cycle.pk}.")
        if refusal is not None:
            logger.info("Cycle %s could not place reservation %s on node %s: %s", cycle.pk, choice.key, node_id,
                        refusal.reason)
            if refusal.reason != workload.waiting_reason_code:
                _wait_decision(workload, cycle, now, refusal.reason, refusal.detail, position=None)
            workload.waiting_reason_code, workload.waiting_reason = refusal.reason, refusal.detail
            workload.save(update_fields=["waiting_reason_code", "waiting_reason", "position", "estimated_start_at"])
            continue
        placed += 1
        Workload.objects.filter(pk=choice.key).update(position=None, estimated_start_at=None,
                                                       waiting_reason_code="", waiting_reason="")
    return placed


def _apply_preemptions(plans, fleet: Fleet, cycle: SchedulingCycle, now: datetime) -> int:
    proposed = 0
    for plan in plans:
        if preemption_propose(plan=plan, node_id=int(fleet.node_ids[plan.row]), cycle=cycle, now=now) is not None:
            proposed += 1
    return proposed


def _record_waiting(decisions, by_key: dict[int, Workload], cycle: SchedulingCycle, now: datetime) -> None:
    changed = []
    for decision in decisions:
        workload = by_key[decision.key]
        estimated = None if decision.estimated_start is None else now + timedelta(seconds=decision.estimated_start)
        if decision.reason_code != workload.waiting_reason_code:
            _wait_decision(workload, cycle, now, decision.reason_code, decision.reason, decision.position, estimated)
        workload.position = decision.position
        workload.waiting_reason_code = decision.reason_code
        workload.waiting_reason = decision.reason
        workload.estimated_start_at = estimated
        changed.append(workload)
    Workload.objects.bulk_update(changed, ["position", "waiting_reason_code", "waiting_reason", "estimated_start_at"],
                                 batch_size=500)


def _wait_decision(workload: Workload, cycle, now: datetime, code: str, reason: str, position: int | None,
                   estimated: datetime | None = None) -> None:
    workload.waiting_reason_code, workload.waiting_reason = code, reason
    workload.position, workload.estimated_start_at = position, estimated
    Decision.objects.create(
        reservation_id=workload.reservation_id, cycle=cycle, kind=Decision.Kind.WAITING, reason_code=code,
        reason=reason, at=now,
        detail={"position": position, "estimated_start_at": estimated.isoformat() if estimated else None},
    )


def _record_batch_runs(runs: list[dict], nodes: int, cycle: SchedulingCycle) -> None:
    """Record each CP-SAT run of the cycle as a ``SolverRun``, visible in the admin, and observe its wall time."""
    for run in runs:
        solver_run_observe(kind=SolverRun.Kind.BATCH, policy="cp_sat/scheduler_cycle", wall_seconds=run["seconds"])
    SolverRun.objects.bulk_create(
        SolverRun(kind=SolverRun.Kind.BATCH, policy="cp_sat/scheduler_cycle", requests=run["requests"], nodes=nodes,
                  variables=run["variables"], objective=run["objective"], status=run["status"],
                  wall_ms=int(1000 * run["seconds"]),
                  detail={**run, "cycle_id": cycle.pk, "used": run["placed_milli"] > run["greedy_milli"]})
        for run in runs
    )


def _expire_overdue(now: datetime) -> int:
    """Expire queued reservations whose latest start passed; each gets an event and a decision."""
    overdue = list(Reservation.objects.select_for_update(skip_locked=True)
                   .filter(status=ReservationStatus.QUEUED, workload__latest_start_at__lte=now)[:500])
    for reservation in overdue:
        note = "It waited past its latest start without capacity; submit it again or allow a later start."
        reservation_transition(reservation=reservation, to_status=ReservationStatus.EXPIRED, now=now,
                               reason_code="queue_timeout", note=note)
        Decision.objects.create(reservation=reservation, kind=Decision.Kind.EXPIRED, reason_code="queue_timeout",
                                reason=note, at=now)
    if overdue:
        logger.info("Expired %d queued reservations past their latest start", len(overdue))
    return len(overdue)
