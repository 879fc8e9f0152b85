"""Rebalancing plans: propose the migrations that most improve placement, apply them once an admin approves.

A proposal looks at the reservations scheduled to start within ``REBALANCE_HORIZON_HOURS`` and
skips those whose customer set ``do_not_migrate``. For each of the others it scores moves to the
best few nodes of the same GPU model that can hold it for its whole window at no higher price.
The gain and disruption come from ``allocation.solvers.rebalance``. At most one plan waits for a
decision at a time.

Approval commits the plan's status, then applies each move in its own transaction. The move
locks the reservation, its allocation, the customer and the target node (the services' order),
places the request again on the node's fresh state, and moves the allocation and its GPU shares.
The database triggers check capacity and quota once more. A move that no longer fits, or whose
target changed, is skipped with the reason, and the others still apply.

NOTE: only reservations that have not started move. Moving running work needs the scheduler's
migration (stop, checkpoint, restart), which does not exist yet, so ``running_hours`` is 0 for
every move proposed today.
"""

import logging
import time
from dataclasses import dataclass, replace
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from marketplace.audit import audit_record
from marketplace.exceptions import InvalidRequest, MarketplaceError, NotFound
from marketplace.metrics import solver_run_observe
from marketplace.models import Gpu, Node

from .models import Allocation, RebalanceMove, RebalancePlan, ReservationStatus, SolverRun
from .placement import placement_rank
from .placement_policy import placement_policy, target_workload
from .pricing import billed_gpu_milli
from .selectors import NodeFilter, node_states
from .solvers import NodeState, PlacementRequest
from .solvers.fleet import Fleet
from .solvers.fragmentation import FragmentationTracker
from .solvers.rebalance import MoveCandidate, TargetFree, choose_moves
from scheduler.migrating import migration_advance, migration_plan
from scheduler.models import Migration

logger = logging.getLogger(__name__)

TARGETS_PER_RESERVATION = 5
"""Best-ranked target nodes whose move is scored for each reservation."""
MAX_NOTE_CHARS = 2000


class RebalancePlanWaiting(MarketplaceError):
    """A proposed rebalancing plan still waits for a decision (HTTP 409)."""

    def __init__(self, plan_id: int):
        super().__init__(
            detail=f"Rebalancing plan {plan_id} is still waiting for a decision. Approve or reject it first.",
            code="rebalance_plan_waiting", status=409, title="Plan already proposed", extra={"plan_id": plan_id},
        )


@dataclass(frozen=True)
class _Movable:
    allocation: Allocation
    request: PlacementRequest
    degraded_milli: int


def rebalance_propose(*, max_moves: int | None = None, now: datetime | None = None,
                      on_progress: Callable[[int, int], None] | None = None) -> RebalancePlan | None:
    """Record a solver run and save a plan of at most ``max_moves`` moves; return None when no move gains.

    ``on_progress(done, total)`` is called after each movable reservation is scored. Raises ``RebalancePlanWaiting`` while another plan waits for a decision, and ``InvalidRequest``
    for a ``max_moves`` outside 1 to 100.
    """
    config = settings.MARKETPLACE
    max_moves = config["REBALANCE_MAX_MOVES"] if max_moves is None else max_moves
    if not 1 <= max_moves <= 100:
        raise InvalidRequest(f"max_moves is {max_moves}; choose 1 to 100 moves per plan.")
    now = now or timezone.now()
    waiting = RebalancePlan.objects.filter(status=RebalancePlan.Status.PROPOSED).values_list("id", flat=True).first()
    if waiting is not None:
        raise RebalancePlanWaiting(waiting)

    started = time.perf_counter()
    logger.info("Rebalancing proposal started: at most %d moves", max_moves)
    movable = _movable_allocations(now, now + timedelta(hours=config["REBALANCE_HORIZON_HOURS"]))
    policy = placement_policy()
    candidates, nodes_seen = [], set()
    for examined, item in enumerate(movable, start=1):
        for candidate in _candidates(item, policy):
            candidates.append(candidate)
            nodes_seen.update((candidate.from_node_id, candidate.to_node_id))
        if on_progress is not None:
            on_progress(examined, len(movable))
    moves = choose_moves(candidates, max_moves)
    total = float(sum(move.score for move in moves))

    wall_seconds = time.perf_counter() - started
    solver_run_observe(kind=SolverRun.Kind.REBALANCE, policy=f"greedy_moves/{policy.name}", wall_seconds=wall_seconds)
    with transaction.atomic():
        run = SolverRun.objects.create(
            kind=SolverRun.Kind.REBALANCE, policy=f"greedy_moves/{policy.name}", requests=len(movable),
            nodes=len(nodes_seen), objective=total, status=_run_status(movable, moves),
            wall_ms=int(1000 * wall_seconds),
            detail={"candidates": len(candidates), "chosen": len(moves), "max_moves": max_moves},
        )
        if not moves:
            logger.info("Rebalancing proposal finished: no move gains (%d reservations, %d candidates)",
                        len(movable), len(candidates))
            return None
        try:
            with transaction.atomic():
                plan = RebalancePlan.objects.create(max_moves=max_moves, total_score=total, solver_run=run)
        except IntegrityError:
            # Another proposal committed first; the partial unique index allows one waiting plan.
            raise RebalancePlanWaiting(
                RebalancePlan.objects.filter(status=RebalancePlan.Status.PROPOSED).values_list("id", flat=True).first()
            ) from None
        prices = dict(Node.objects.filter(pk__in=[move.to_node_id for move in moves])
                      .values_list("id", "price_per_gpu_hour"))
        RebalanceMove.objects.bulk_create(
            RebalanceMove(plan=plan, reservation_id=move.reservation_id, from_node_id=move.from_node_id,
                          to_node_id=move.to_node_id, target_price_per_gpu_hour=prices[move.to_node_id],
                          gain=move.gain, disruption=move.disruption, score=move.score,
                          explanation=move.explanation())
            for move in moves
        )
    logger.info("Rebalancing proposal finished: plan %s with %d moves, score %.1f, %d ms", plan.pk, len(moves),
                total, run.wall_ms)
    return plan


def _run_status(movable: list, moves: list) -> str:
    """Return the planner run's status: "moves", "no_gain", or "nothing_scheduled" when nothing could move."""
    if moves:
        return "moves"
    if movable:
        return "no_gain"
    return "nothing_scheduled"


def _movable_allocations(now: datetime, until: datetime) -> list[_Movable]:
    """Return the live allocations of scheduled reservations that start after ``now`` and before ``until``."""
    limit = settings.MARKETPLACE["REBALANCE_MAX_RESERVATIONS"]
    allocations = list(
        Allocation.objects.filter(
            reservation__status=ReservationStatus.SCHEDULED, reservation__do_not_migrate=False,
            released_at__isnull=True, start_at__gt=now, start_at__lt=until,
        ).select_related("reservation").prefetch_related("shares__gpu").order_by("start_at", "id")[:limit]
    )
    movable = []
    for allocation in allocations:
        reservation = allocation.reservation
        request = PlacementRequest(gpu_count=reservation.gpu_count, gpu_milli_per_gpu=reservation.gpu_milli_per_gpu,
                                   cpu_millicores=reservation.cpu_millicores, memory_mib=reservation.memory_mib)
        degraded = sum(share.gpu_milli for share in allocation.shares.all() if share.gpu.health != Gpu.Health.HEALTHY)
        movable.append(_Movable(allocation=allocation, request=request, degraded_milli=degraded))
    return movable


def _candidates(item: _Movable, policy) -> list[MoveCandidate]:
    """Score moving ``item`` to each of the policy's best other nodes for its window."""
    allocation, reservation = item.allocation, item.allocation.reservation
    # The same GPU model keeps the customer's per-model quota usage unchanged.
    model_ids = (allocation.gpu_model_id,)
    cap = allocation.price_per_gpu_hour
    if reservation.max_price_per_gpu_hour is not None:
        cap = min(cap, reservation.max_price_per_gpu_hour)
    node_filter = NodeFilter(gpu_model_ids=model_ids, region_id=reservation.region_id, max_price_per_gpu_hour=cap)
    ranked = [placement for placement in placement_rank(
        request=item.request, start_at=allocation.start_at, end_at=allocation.end_at, node_filter=node_filter,
        policy=policy, summed_first=True,
    ) if placement.node_id != allocation.node_id][:TARGETS_PER_RESERVATION]
    if not ranked:
        return []

    states = {state.node_id: state for state in node_states(
        [allocation.node_id, *(placement.node_id for placement in ranked)], allocation.start_at, allocation.end_at)}
    source_now = states[allocation.node_id]
    source_after = _with_shares(source_now, item.request, {share.gpu_id: share.gpu_milli
                                                           for share in allocation.shares.all()}, sign=+1)
    hours = (allocation.end_at - allocation.start_at).total_seconds() / 3600
    candidates = []
    for placement in ranked:
        target_now = states[placement.node_id]
        target_after = _with_shares(target_now, item.request, dict(placement.gpu_shares), sign=-1)
        billed = billed_gpu_milli(item.request, node_gpu_count=target_now.gpu_count,
                                  node_cpu_millicores=target_now.cpu_capacity_millicores,
                                  node_memory_mib=target_now.memory_capacity_mib)
        saving = (allocation.price_per_gpu_hour * allocation.billed_gpu_milli
                  - Decimal(str(target_now.price_per_gpu_hour)) * billed) / 1000 * Decimal(str(hours))
        if saving < 0:
            continue  # A move never makes the customer pay more.
        fragments = _fragments([source_now, source_after, target_now, target_after])
        candidates.append(MoveCandidate(
            reservation_id=reservation.pk, from_node_id=allocation.node_id, to_node_id=placement.node_id,
            gpu_shares=placement.gpu_shares,
            fragment_removed_milli=float(fragments[0] + fragments[2] - fragments[1] - fragments[3]),
            degraded_milli=item.degraded_milli, saving=float(saving), running_hours=0.0,
            request=item.request,
            target_free=TargetFree(gpu_milli=tuple(free for _, free in target_now.gpu_free_milli),
                                   cpu_millicores=target_now.cpu_free_millicores,
                                   memory_mib=target_now.memory_free_mib),
        ))
    return candidates


def _with_shares(state: NodeState, request: PlacementRequest, shares: dict[int, int], *, sign: int) -> NodeState:
    """Return ``state`` with ``shares`` (GPU id to milli) and the request's CPU and memory freed (+1) or taken (-1)."""
    return NodeState(
        node_id=state.node_id, gpu_model=state.gpu_model, gpu_count=state.gpu_count,
        cpu_capacity_millicores=state.cpu_capacity_millicores,
        cpu_free_millicores=state.cpu_free_millicores + sign * request.cpu_millicores,
        memory_capacity_mib=state.memory_capacity_mib, memory_free_mib=state.memory_free_mib + sign * request.memory_mib,
        gpu_free_milli=tuple((gpu_id, free + sign * shares.get(gpu_id, 0)) for gpu_id, free in state.gpu_free_milli),
        price_per_gpu_hour=state.price_per_gpu_hour,
    )


def _fragments(states: list[NodeState]) -> np.ndarray:
    """Return FGD's fragmentation of each state against the target workload, in milli.

    The states describe the same nodes before and after a move, so each gets its position as id.
    """
    numbered = [replace(state, node_id=position) for position, state in enumerate(states)]
    return FragmentationTracker(Fleet.from_states(numbered), target_workload()).node_fragment


def rebalance_decide(*, plan_id: int, approve: bool, actor: AbstractBaseUser, note: str = "",
                     now: datetime | None = None) -> RebalancePlan:
    """Apply (approve) or reject a proposed plan; a rejection needs a reason.

    Raises ``NotFound`` for an unknown plan and ``InvalidRequest`` for a plan already decided or a
    rejection without a reason.
    """
    now = now or timezone.now()
    if not approve and not note.strip():
        raise InvalidRequest("Give a reason to reject the plan, so the next proposal can take it into account.")
    if "\x00" in note or len(note) > MAX_NOTE_CHARS:
        raise InvalidRequest(f"The reason must be plain text of at most {MAX_NOTE_CHARS} characters, without NUL bytes.")
    with transaction.atomic():
        try:
            plan = RebalancePlan.objects.select_for_update().get(pk=plan_id)
        except RebalancePlan.DoesNotExist:
            raise NotFound(f"Rebalancing plan {plan_id} does not exist.") from None
        if plan.status != RebalancePlan.Status.PROPOSED:
            raise InvalidRequest(f"Rebalancing plan {plan_id} is already {plan.status}; only a proposed plan can be decided.")
        plan.status = RebalancePlan.Status.APPLIED if approve else RebalancePlan.Status.REJECTED
        plan.decided_by, plan.decided_at, plan.decision_note = actor, now, note.strip()
        plan.save(update_fields=["status", "decided_by", "decided_at", "decision_note"])
        # The plan moves reservations of many customers, so the event belongs to no single organization.
        audit_record(action="rebalance_plan.approve" if approve else "rebalance_plan.reject", obj=plan, actor=actor,
                     details={"before": {"status": RebalancePlan.Status.PROPOSED}, "after": {"status": plan.status},
                              "reason": plan.decision_note,
                              "moves": list(plan.moves.values_list("reservation_id", "from_node_id", "to_node_id"))})

    if approve:
        # Each move is a migration whose steps commit on their own, so a move holds its reservation,
        # customer and node locks only during one step. A migration cut short by a crash is finished
        # or rolled back by the periodic scheduler.advance_migrations task.
        # NOTE: if the process dies between moves, the moves not yet started stay pending in an
        # applied plan; they are not retried, and the next proposal considers those reservations again.
        moves = list(plan.moves.select_related("from_node", "to_node"))
        applied = sum(_apply_move(move, plan, actor, now) for move in moves)
        plan.decision_note = note.strip() or f"Applied {applied} of {len(moves)} move{'' if len(moves) == 1 else 's'}."
        plan.save(update_fields=["decision_note"])
    logger.info("Rebalancing plan %s %s by %s: %s", plan.pk, plan.status, actor, plan.decision_note)
    return plan


def _apply_move(move: RebalanceMove, plan: RebalancePlan, actor, now: datetime) -> int:
    """Run one move of the plan through the migration state machine; return 1 when it was applied."""
    migration = migration_plan(reservation_id=move.reservation_id, to_node_id=move.to_node_id,
                               kind=Migration.Kind.REBALANCE, rebalance_move=move, now=now, actor=actor,
                               reason=f"Rebalancing plan {plan.pk}: {move.explanation}")
    if migration is None:
        detail = "The reservation has no allocation, or another move of it is in progress; it stays where it is."
        move.outcome, move.outcome_detail = RebalanceMove.Outcome.SKIPPED, detail
        move.save(update_fields=["outcome", "outcome_detail"])
        return 0
    migration = migration_advance(migration_id=migration.pk, now=now)
    move.refresh_from_db(fields=["outcome", "outcome_detail"])
    return int(migration.status == Migration.Status.DONE)
