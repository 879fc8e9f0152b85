"""Celery tasks of the scheduler; each one is thin and calls a service."""

import logging

from celery import shared_task
from django.db import transaction

from marketplace.broker import enqueue

from .cycle import scheduling_cycle
from .migrating import migration_advance, open_migrations
from .preemptions import preemptions_finish

logger = logging.getLogger(__name__)


@shared_task(name="scheduler.run_cycle", acks_late=True)
def run_cycle_task(trigger: str = "periodic") -> int | None:
    """Run one scheduling cycle; return its id, or None when skipped. Safe to run twice or at once."""
    cycle = scheduling_cycle(trigger=trigger)
    return cycle.pk if cycle else None


@shared_task(name="scheduler.finish_preemptions", acks_late=True)
def finish_preemptions_task() -> int:
    """Stop the victims whose grace period ended, then let a cycle place the beneficiaries."""
    finished = preemptions_finish()
    if finished:
        request_cycle("preemption")
    return finished


@shared_task(name="scheduler.advance_migration", acks_late=True)
def advance_migration_task(migration_id: int) -> str:
    """Run a migration's remaining steps; a redelivery after a crash goes on from the last committed step."""
    return migration_advance(migration_id=migration_id).status


@shared_task(name="scheduler.advance_migrations", acks_late=True)
def advance_migrations_task() -> int:
    """Advance every open migration, such as those waiting for an agent to stop; return how many were open."""
    migrations = open_migrations()
    for migration_id in migrations:
        migration_advance(migration_id=migration_id)
    return len(migrations)


def request_cycle(trigger: str) -> None:
    """Run a cycle once the current transaction commits (at once when there is none)."""
    transaction.on_commit(lambda: enqueue(run_cycle_task, kwargs={"trigger": trigger},
                                          reason=f"the periodic cycle ({trigger})"))
