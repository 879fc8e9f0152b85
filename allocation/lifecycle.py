"""The reservation state machine: which status may follow which.

Every change goes through ``allocation.services.reservation_transition``, which checks this table
and writes the event row. On PostgreSQL a trigger rejects any other update of the status column.
A queued reservation holds nothing: the scheduling cycle places it later, or it expires.
"""

from .models import ReservationStatus as S

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.PENDING_APPROVAL, S.QUEUED, S.SCHEDULED, S.ACTIVE, S.REJECTED, S.CANCELLED, S.FAILED}),
    S.QUEUED: frozenset({S.PENDING_APPROVAL, S.SCHEDULED, S.ACTIVE, S.REJECTED, S.EXPIRED, S.CANCELLED, S.FAILED}),
    S.PENDING_APPROVAL: frozenset({S.SCHEDULED, S.ACTIVE, S.REJECTED, S.EXPIRED, S.CANCELLED, S.FAILED}),
    S.SCHEDULED: frozenset({S.ACTIVE, S.COMPLETED, S.CANCELLED, S.FAILED, S.PREEMPTED}),
    S.ACTIVE: frozenset({S.COMPLETED, S.CANCELLED, S.FAILED, S.PREEMPTED}),
    S.COMPLETED: frozenset(),
    S.CANCELLED: frozenset(),
    S.FAILED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
    S.PREEMPTED: frozenset(),
}

TERMINAL_STATUSES = frozenset(status for status, targets in ALLOWED_TRANSITIONS.items() if not targets)
HOLDING_STATUSES = frozenset({S.PENDING_APPROVAL, S.SCHEDULED, S.ACTIVE})
"""Statuses whose allocation holds capacity and quota."""
RELEASING_STATUSES = TERMINAL_STATUSES - {S.COMPLETED}
"""Final statuses reached before the window ends: moving into one releases capacity, quota and budget."""
CONFIRMED_STATUSES = frozenset({S.SCHEDULED, S.ACTIVE})
"""Statuses that advance with the clock: scheduled starts, and both complete when the window ends."""


def can_transition(current: str, target: str) -> bool:
    return target in ALLOWED_TRANSITIONS.get(current, frozenset())


def transition_pairs() -> list[tuple[str, str]]:
    """Return every allowed ``(from, to)`` pair, for the database trigger."""
    return sorted((str(src), str(dst)) for src, targets in ALLOWED_TRANSITIONS.items() for dst in targets)
