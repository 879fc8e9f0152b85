"""Celery tasks of the allocation app; each one is thin and calls a service."""

import logging
from datetime import datetime

from celery import shared_task

from task_runs.models import TaskRun
from task_runs.progress import track

from .approvals import reservations_expire
from .ledger_sync import capacity_changes_purge
from .rebalancing import RebalancePlanWaiting, rebalance_propose
from .services import idempotency_keys_purge, reservations_advance
from .trace import TASKS_CSV
from .trace.replay import trace_replay

logger = logging.getLogger(__name__)


@shared_task(name="allocation.replay_trace", acks_late=True, bind=True)
def replay_trace_task(self, limit: int | None = None, trace_start_at: str | None = None,
                      hold_until_trace_end: bool = False) -> dict:
    """Replay the bundled trace; ``trace_start_at`` is ISO 8601 with an offset.

    Progress counts trace tasks handled (submitted or skipped). A redelivered task reuses its run
    and skips the tasks that the first delivery already submitted.
    """
    start = datetime.fromisoformat(trace_start_at) if trace_start_at else None
    logger.info("Replay task started: limit=%s start=%s", limit, trace_start_at)
    with track(self, TaskRun.Kind.REPLAY, unit="trace tasks") as progress:
        summary = trace_replay(tasks_path=TASKS_CSV, trace_start_at=start, limit=limit,
                               hold_until_trace_end=hold_until_trace_end, on_progress=progress.advance)
        message = (f"{summary.placed} placed, {summary.rejected} rejected, "
                   f"{summary.skipped_already_replayed} skipped as already replayed.")
        return progress.finish(summary.as_dict(), message=message)


@shared_task(name="allocation.advance_reservations", acks_late=True)
def advance_reservations_task() -> dict[str, int]:
    """Start and complete reservations whose windows began or ended."""
    return reservations_advance()


@shared_task(name="allocation.purge_idempotency_keys", acks_late=True)
def purge_idempotency_keys_task() -> int:
    """Delete idempotency keys past their retention period."""
    return idempotency_keys_purge()


@shared_task(name="allocation.purge_capacity_changes", acks_late=True)
def purge_capacity_changes_task() -> int:
    """Delete capacity change-feed rows that every web thread has read or reloaded past."""
    return capacity_changes_purge()


@shared_task(name="allocation.expire_reservations", acks_late=True)
def expire_reservations_task() -> int:
    """Expire reservations whose approval hold ran out; safe to run twice."""
    return reservations_expire()


@shared_task(name="allocation.propose_rebalance", acks_late=True, bind=True)
def propose_rebalance_task(self, max_moves: int | None = None) -> int | None:
    """Propose a rebalancing plan unless one already waits for a decision; return the new plan's id.

    Progress counts the scheduled reservations examined. A redelivery while the first plan waits
    proposes nothing, so the task is safe to run twice.
    """
    with track(self, TaskRun.Kind.REBALANCE, unit="reservations") as progress:
        try:
            plan = rebalance_propose(max_moves=max_moves, on_progress=progress.advance)
        except RebalancePlanWaiting as waiting:
            logger.info("Rebalancing proposal skipped: %s", waiting)
            progress.finish({"plan_id": None, "moves": 0}, message=f"Nothing proposed: {waiting}")
            return None
        if plan is None:
            progress.finish({"plan_id": None, "moves": 0}, message="No move gains enough; nothing proposed.")
            return None
        moves = plan.moves.count()
        progress.finish({"plan_id": plan.pk, "moves": moves}, message=f"Plan {plan.pk} proposed with {moves} moves.")
        return plan.pk
