"""At most one effective run per Celery task message: the base class of every task of the product.

Tasks are acknowledged late, so a message whose worker dies mid-run (SIGKILL, a lost machine) is
delivered again: at once to the same worker's next pool process, or to another worker once the
Redis visibility timeout passes. Redis may also deliver a message a second time while its first run
is still going. ``OnceTask`` keeps a ``TaskDelivery`` row per task id and decides per delivery:

- no row: record the run and do it;
- a run of this id is in progress in a live worker: wait for it, then skip this copy;
- a run of this id died (its worker is gone or shut down mid-run), lost the database, or asked for a
  Celery retry: take over and run again;
- a run of this id succeeded or failed: skip this copy (a failed task is acknowledged, not redelivered,
  so a second copy of it is a duplicate).

On PostgreSQL a running delivery holds a session advisory lock named after its task id. The lock
goes with the worker's database connection, so a dead worker's lock is released at once and a live
one's is not. So the ledger distinguishes the two running cases without guessing from timeouts.

Tasks run eagerly (the demo, without a broker) are never delivered twice and bypass the ledger. A run
that dies after its work committed but before its delivery was marked done is run again in full.
So each task is also safe to run again: periodic sweeps converge, and the replay skips what it
already submitted.
"""

import logging
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from celery import Task
from celery.exceptions import Retry
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

logger = logging.getLogger(__name__)

# Errors of a database that is restarting or unreachable; a task that meets one is retried, not failed.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
# Retries after such errors, 5 s apart and doubling up to a minute: about 17 minutes in all.
DATABASE_RETRIES = 20

# First key of the two-key advisory locks of task deliveries, apart from the scheduler's one-key lock.
ADVISORY_LOCK_NAMESPACE = 0x7A5C


@dataclass
class Claim:
    """Whether this delivery runs the task, why, and the ledger row that records it."""

    run: bool
    reason: str
    delivery_id: int | None = None


class OnceTask(Task):
    """A Celery task that runs once per message however often the broker delivers it."""

    def __call__(self, *args, **kwargs):
        task_id = self.request.id
        if not task_id or self.request.is_eager:
            return super().__call__(*args, **kwargs)
        try:
            with delivery_claim(task_id=task_id, task_name=self.name) as claim:
                if not claim.run:
                    logger.warning("Skipped a duplicate delivery of task %s %s: %s", self.name, task_id, claim.reason)
                    return None
                try:
                    result = super().__call__(*args, **kwargs)
                except (Retry, *DATABASE_UNAVAILABLE):
                    raise  # the delivery stays running, so the retry (same task id) takes it over
                except Exception:
                    delivery_finish(claim, succeeded=False)
                    raise
                # A SystemExit or KeyboardInterrupt (a worker shutting down) also leaves the delivery running: the
                # message goes back to the broker and its next delivery takes over.
                delivery_finish(claim, succeeded=True)
                return result
        except DATABASE_UNAVAILABLE as error:
            # The database restarts or fails over: send the message again later instead of acknowledging a failure.
            countdown = min(60, 5 * 2 ** self.request.retries)
            logger.warning("Task %s %s lost the database (%s); retrying in %d s (retry %d of %d)", self.name, task_id,
                           error, countdown, self.request.retries + 1, DATABASE_RETRIES)
            raise self.retry(exc=error, countdown=countdown, max_retries=DATABASE_RETRIES)


@contextmanager
def delivery_claim(*, task_id: str, task_name: str):
    """Yield a ``Claim`` for one delivery of ``task_id``, holding its advisory lock (PostgreSQL) while inside.

    A second delivery of a message that is running waits here until the first one ends, then finds it
    succeeded and skips. The visibility timeout is longer than the task time limit, so such waits
    only happen when a task outlives both.
    """
    from .models import TaskDelivery

    locked = _lock(task_id)
    try:
        now = timezone.now()
        delivery, created = TaskDelivery.objects.get_or_create(
            task_id=task_id, defaults={"task_name": task_name, "started_at": now})
        if created:
            yield Claim(run=True, reason="first delivery", delivery_id=delivery.pk)
            return
        if delivery.status != TaskDelivery.Status.RUNNING:
            yield Claim(run=False, reason=f"the run of {delivery.started_at.isoformat()} already {delivery.status}")
            return
        # A running row whose lock this delivery now holds belongs to a worker that died, or to a run that asked
        # Celery to retry it (a retry keeps the task id).
        TaskDelivery.objects.filter(pk=delivery.pk).update(attempts=delivery.attempts + 1, started_at=now)
        logger.warning("Task %s %s delivered again after a run that did not finish; running it again (attempt %d)",
                       task_name, task_id, delivery.attempts + 1)
        yield Claim(run=True, reason="the previous run did not finish", delivery_id=delivery.pk)
    finally:
        if locked:
            _unlock(task_id)


def delivery_finish(claim: Claim, *, succeeded: bool) -> None:
    """Mark the claimed delivery as succeeded or failed."""
    from .models import TaskDelivery

    status = TaskDelivery.Status.SUCCEEDED if succeeded else TaskDelivery.Status.FAILED
    try:
        TaskDelivery.objects.filter(pk=claim.delivery_id).update(status=status, finished_at=timezone.now())
    except Exception:  # the database may be what failed the task; the task's own outcome matters more
        logger.exception("Could not mark delivery %s as %s", claim.delivery_id, status)


def task_deliveries_purge(*, older_than: timedelta) -> int:
    """Delete finished delivery records older than ``older_than``; return how many went."""
    from .models import TaskDelivery

    deleted, _ = TaskDelivery.objects.filter(
        started_at__lt=timezone.now() - older_than).exclude(status=TaskDelivery.Status.RUNNING).delete()
    logger.info("Purged %d task delivery records older than %s", deleted, older_than)
    return deleted


def _lock_key(task_id: str) -> int:
    # A signed 32-bit key from the task id; a collision only makes deliveries of two different messages take turns.
    return zlib.crc32(task_id.encode()) - (1 << 31)


def _lock(task_id: str) -> bool:
    """Take the delivery's session advisory lock, waiting for a holder; False where there are no advisory locks.

    NOTE: on SQLite (not a supported deployment with workers) two simultaneous deliveries may both run.
    """
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", [ADVISORY_LOCK_NAMESPACE, _lock_key(task_id)])
    return True


def _unlock(task_id: str) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [ADVISORY_LOCK_NAMESPACE, _lock_key(task_id)])
    except Exception:  # a lost connection has released the lock already
        logger.warning("Could not release the advisory lock of task %s; its connection is gone", task_id)
