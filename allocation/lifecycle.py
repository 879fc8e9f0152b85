"""The reservation state machine: which status may follow which.

Every change goes through ``allocation.services.reservation_transition``, which checks this table
and writes the event row. On PostgreSQL a trigger rejects any other update of the status column.
A queued reservation holds nothing: the scheduling cycle places it later, or it expires.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings

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


@dataclass(frozen=True)
class PlacedStatus:
    """The status a newly placed reservation moves to, the note that explains it, and its approval hold."""

    status: str
    note: str
    hold_expires_at: datetime | None = None


def placed_status(*, placed_note: str, needs_approval: str, start_at: datetime, now: datetime) -> PlacedStatus:
    """Return where a placed reservation goes: pending approval when ``needs_approval`` gives a reason, else active or scheduled.

    ``placed_note`` names the node and policy. A hold lasts ``APPROVAL_HOLD_SECONDS`` from ``now``.
    """
    if needs_approval:
        hold_expires_at = now + timedelta(seconds=settings.MARKETPLACE["APPROVAL_HOLD_SECONDS"])
        note = (f"{placed_note} Needs an admin's approval because {needs_approval}; the capacity is held until "
                f"{hold_expires_at.isoformat()}.")
        return PlacedStatus(S.PENDING_APPROVAL, note, hold_expires_at)
    return PlacedStatus(S.ACTIVE if start_at <= now else S.SCHEDULED, placed_note)


def can_transition(current: str, target: str) -> bool:
    return target in ALLOWED_TRANSITIONS.get(current, frozenset())


def transition_pairs() -> list[tuple[str, str]]:
    """Return every allowed ``(from, to)`` pair, for the database trigger."""
    return sorted((str(src), str(dst)) for src, targets in ALLOWED_TRANSITIONS.items() for dst in targets)
