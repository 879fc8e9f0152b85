"""Record the runs of long tasks and their progress, readable by other processes while the task works.

Live counters go to the cache: Redis under ``REDIS_URL``, so every web process and worker reads
them, and process memory in the demo, where tasks run eagerly inside the web process. A cache
write is visible at once even while the task's own database transaction is still open, which a
progress row written on the task's connection would not be. The ``TaskRun`` row stores each state
change and the final counters.

A worker killed mid-task (hard time limit, out of memory, SIGKILL) runs no code that could mark
its run. Redis delivers its message again once the visibility timeout passes, and the next delivery
takes the run over. So every read marks a running run without a sign of life for longer than the
visibility timeout (plus two restore sweeps) as failed (lost): by then its message did not come back.
"""

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from redis.exceptions import RedisError

from .models import TaskRun

logger = logging.getLogger(__name__)

WRITE_INTERVAL_SECONDS = 1.0
"""Minimum time between two progress writes of one run, in seconds; state changes are always written."""
MAX_MESSAGE_CHARS = 500


@dataclass(frozen=True)
class RunProgress:
    """A run as readers see it: the row, overlaid with the live counters while the run is active.

    ``percent`` is None while the total is unknown. ``duration_seconds`` counts from the start
    to the finish, or to now while the run is active. It is None before the run starts.
    """

    run: TaskRun
    state: str
    done: int
    total: int | None
    unit: str
    message: str
    last_seen_at: datetime
    percent: int | None
    duration_seconds: float | None

    @property
    def is_active(self) -> bool:
        return self.state in TaskRun.ACTIVE_STATES


def _live_key(task_id: str) -> str:
    return f"task_runs:live:{task_id}"


def lost_after_seconds() -> int:
    """Return the seconds of silence after which a running run counts as lost.

    That is the visibility timeout, after which Redis delivers a dead worker's message again, plus two
    of the workers' restore sweeps. No live task is silent that long, because the task time limit is
    shorter than the visibility timeout and stops a task first.
    """
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    visibility = int(options.get("visibility_timeout", 2 * settings.CELERY_TASK_TIME_LIMIT))
    return visibility + 2 * int(options.get("unacked_restore_interval", 10))


def _live_timeout_seconds() -> int:
    """Keep live counters longer than any run can be silent before it counts as lost."""
    return lost_after_seconds() + 60


def _write_live(task_id: str, *, state: str, done: int, total: int | None, unit: str, message: str) -> bool:
    """Store the live counters of a run; return False when the cache is unreachable.

    Redis and socket errors are logged and dropped, so an unreachable cache does not fail the task.
    """
    live = {"state": state, "done": done, "total": total, "unit": unit, "message": message, "at": time.time()}
    try:
        cache.set(_live_key(task_id), live, timeout=_live_timeout_seconds())
    except (RedisError, OSError) as error:
        logger.warning("Progress of task run %s not written to the cache: %s", task_id, error)
        return False
    return True


def _read_live(task_id: str) -> dict | None:
    try:
        return cache.get(_live_key(task_id))
    except (RedisError, OSError) as error:
        logger.warning("Progress of task run %s not read from the cache: %s", task_id, error)
        return None


def run_queue(kind: str, *, task_id: str, started_by=None, parameters: dict | None = None,
              now: datetime | None = None) -> TaskRun:
    """Create the queued run of a task about to be sent to the broker; the task picks it up by ``task_id``."""
    now = now or timezone.now()
    run = TaskRun.objects.create(kind=kind, task_id=task_id, started_by=started_by, parameters=parameters or {},
                                 queued_at=now, updated_at=now)
    _write_live(task_id, state=TaskRun.State.QUEUED, done=0, total=None, unit="", message="")
    logger.info("Task run %s queued: kind %s, task %s, by %s", run.pk, kind, task_id, started_by or "nobody")
    return run


def run_start(kind: str, *, task_id: str, unit: str, parameters: dict | None = None, now: datetime | None = None,
              clock: Callable[[], float] = time.monotonic) -> "ProgressReporter":
    """Mark the run of ``task_id`` running, creating it when nothing queued it, and return its reporter.

    Idempotent by ``task_id``: a redelivered task (acknowledged late, so a worker that dies makes
    the broker deliver it again) reuses its run, counts the delivery, and clears a previous
    failure such as "lost". ``clock`` is the monotonic clock of the write throttle, in seconds.
    """
    now = now or timezone.now()
    run, created = TaskRun.objects.get_or_create(
        task_id=task_id, defaults={"kind": kind, "parameters": parameters or {}, "queued_at": now, "updated_at": now},
    )
    if run.kind != kind:
        raise ValueError(f"Task id {task_id} belongs to a {run.kind} run, not {kind}; give each task a new id.")
    run.state, run.unit, run.done, run.total = TaskRun.State.RUNNING, unit, 0, None
    run.message, run.error, run.result, run.finished_at = "", "", None, None
    run.started_at = run.started_at or now
    run.deliveries += 1
    run.updated_at = now
    run.save(update_fields=["state", "unit", "done", "total", "message", "error", "result", "finished_at",
                            "started_at", "deliveries", "updated_at"])
    _write_live(task_id, state=run.state, done=0, total=None, unit=unit, message="")
    logger.info("Task run %s started: kind %s, task %s, delivery %d%s", run.pk, kind, task_id, run.deliveries,
                "" if created else " of a queued or redelivered run")
    return ProgressReporter(run, clock=clock)


class ProgressReporter:
    """Report the progress of one running run; the task calls ``advance`` as often as it likes."""

    def __init__(self, run: TaskRun, *, clock: Callable[[], float] = time.monotonic):
        self.run = run
        self.done = run.done
        self.total = run.total
        self.message = run.message
        self.finished = False
        self.writes = 0
        self._clock = clock
        self._last_write = clock()

    def advance(self, done: int, total: int | None = None, message: str | None = None) -> bool:
        """Record that ``done`` of ``total`` units are done; return whether this call wrote to the cache.

        Writes happen at most once per ``WRITE_INTERVAL_SECONDS``, so calling this for every unit
        is cheap. A ``total`` or ``message`` of None keeps the previous value.
        """
        if done < 0 or (total is not None and total < 0):
            raise ValueError(f"Progress {done} of {total} is invalid; done and total count units and cannot be negative.")
        self.done = done
        if total is not None:
            self.total = total
        if message is not None:
            self.message = message[:MAX_MESSAGE_CHARS]
        if self.finished:
            return False
        now = self._clock()
        if now - self._last_write < WRITE_INTERVAL_SECONDS:
            return False
        self._last_write = now
        self.writes += 1
        return _write_live(self.run.task_id, state=TaskRun.State.RUNNING, done=self.done, total=self.total,
                           unit=self.run.unit, message=self.message)

    def finish(self, result=None, message: str | None = None):
        """Mark the run succeeded with ``result`` (JSON-serialisable) and return ``result``."""
        if message is not None:
            self.message = message[:MAX_MESSAGE_CHARS]
        run_finish(self.run.task_id, done=self.done, total=self.total, result=result, message=self.message)
        self.finished = True
        return result

    def fail(self, error: BaseException | str) -> None:
        """Mark the run failed with ``error``, keeping the last counters."""
        run_fail(self.run.task_id, error=error, done=self.done, total=self.total)
        self.finished = True


def run_finish(task_id: str, *, done: int, total: int | None, result=None, message: str = "",
               now: datetime | None = None) -> None:
    """Store the succeeded state, the final counters and the result summary of the run of ``task_id``."""
    now = now or timezone.now()
    message = message[:MAX_MESSAGE_CHARS]
    updated = TaskRun.objects.filter(task_id=task_id).update(
        state=TaskRun.State.SUCCEEDED, done=done, total=total, result=result, message=message, error="",
        finished_at=now, updated_at=now,
    )
    unit = TaskRun.objects.filter(task_id=task_id).values_list("unit", flat=True).first() or ""
    _write_live(task_id, state=TaskRun.State.SUCCEEDED, done=done, total=total, unit=unit, message=message)
    logger.info("Task run of task %s succeeded: %d of %s done, %s", task_id, done, total, message or result)
    if not updated:
        logger.warning("Task run of task %s is missing; its success is only in the cache", task_id)


def run_fail(task_id: str, *, error: BaseException | str, done: int | None = None, total: int | None = None,
             now: datetime | None = None) -> None:
    """Store the failed state and ``error`` of the run of ``task_id``; None counters keep the stored ones."""
    now = now or timezone.now()
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    fields = {"state": TaskRun.State.FAILED, "error": text, "finished_at": now, "updated_at": now}
    if done is not None:
        fields["done"] = done
    if total is not None:
        fields["total"] = total
    TaskRun.objects.filter(task_id=task_id).update(**fields)
    stored = TaskRun.objects.filter(task_id=task_id).values("done", "total", "unit", "message").first() or {}
    _write_live(task_id, state=TaskRun.State.FAILED, done=stored.get("done", done or 0),
                total=stored.get("total", total), unit=stored.get("unit", ""), message=stored.get("message", ""))
    logger.warning("Task run of task %s failed: %s", task_id, text)


@contextmanager
def track(task, kind: str, *, unit: str) -> Iterator[ProgressReporter]:
    """Run the body as the run of the bound Celery ``task``: start it, fail it on an error, finish it at the end.

    The body reports through the yielded reporter and may call its ``finish`` with a result. A
    body that ends without doing so finishes with no result. An error is stored and re-raised. A
    task called directly, without Celery, has no task id, so it gets a new one and is recorded too.
    """
    task_id = task.request.id or f"local-{uuid.uuid4()}"
    reporter = run_start(kind, task_id=task_id, unit=unit, parameters=task.request.kwargs or {})
    try:
        yield reporter
    except Exception as error:
        reporter.fail(error)
        raise
    # A SystemExit or KeyboardInterrupt (a worker shutting down) leaves the run running: the broker delivers
    # the message again and the next delivery takes the run over.
    if not reporter.finished:
        reporter.finish()


def run_progress(run: TaskRun, *, now: datetime | None = None) -> RunProgress:
    """Return ``run`` as readers see it, marking it failed (lost) first when it stopped reporting.

    The row wins once it is finished; while it is active, the live counters from the cache win.
    """
    now = now or timezone.now()
    live = _read_live(run.task_id) if run.is_active else None
    last_seen_at = run.updated_at
    if live is not None and live["at"] > last_seen_at.timestamp():
        last_seen_at = datetime.fromtimestamp(live["at"], tz=last_seen_at.tzinfo)

    # NOTE: only running runs can be lost. A queued run waits for its message in the broker with
    # no limit, so a message lost before any worker took it leaves the run queued.
    if run.state == TaskRun.State.RUNNING and (now - last_seen_at).total_seconds() > lost_after_seconds():
        run = _mark_lost(run, live, last_seen_at, now)
        live = None

    state, done, total = run.state, run.done, run.total
    unit, message = run.unit, run.message
    if live is not None:
        state, done, total = live["state"], live["done"], live["total"]
        unit, message = live["unit"] or unit, live["message"]
    return RunProgress(run=run, state=state, done=done, total=total, unit=unit, message=message,
                       last_seen_at=last_seen_at, percent=_percent(state, done, total),
                       duration_seconds=_duration_seconds(run, now))


def runs_recent(limit: int = 50, *, now: datetime | None = None) -> list[RunProgress]:
    """Return the newest ``limit`` runs as readers see them, marking lost ones failed on the way."""
    runs = TaskRun.objects.select_related("started_by")[:limit]
    return [run_progress(run, now=now) for run in runs]


def runs_mark_lost(*, now: datetime | None = None) -> int:
    """Mark every running run that stopped reporting as failed (lost); return how many.

    The reads do this for the runs they show. This function also covers runs that no page shows.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=lost_after_seconds())
    stale = TaskRun.objects.filter(state=TaskRun.State.RUNNING, updated_at__lt=cutoff)
    return sum(run_progress(run, now=now).state == TaskRun.State.FAILED for run in stale)


def _mark_lost(run: TaskRun, live: dict | None, last_seen_at: datetime, now: datetime) -> TaskRun:
    """Store a lost run as failed, with its last live counters, unless another process changed it meanwhile."""
    silent = int((now - last_seen_at).total_seconds())
    error = (f"Lost: no progress report for {silent} s, longer than the {lost_after_seconds()} s after which "
             f"the broker would have delivered a dead worker's task again. Start the task again.")
    fields = {"state": TaskRun.State.FAILED, "error": error, "finished_at": now, "updated_at": now}
    if live is not None:
        fields.update(done=live["done"], total=live["total"], message=live["message"])
    # Conditional on the row being unchanged, so a finish or redelivery written meanwhile wins.
    marked = TaskRun.objects.filter(pk=run.pk, state=TaskRun.State.RUNNING, updated_at=run.updated_at).update(**fields)
    if marked:
        logger.warning("Task run %s (task %s) marked lost: %s", run.pk, run.task_id, error)
    run.refresh_from_db()
    return run


def _percent(state: str, done: int, total: int | None) -> int | None:
    """Return the whole percent done; a run that succeeded with no counted work is 100 %."""
    if state == TaskRun.State.SUCCEEDED and not total:
        return 100
    if not total:
        return None
    return min(100, done * 100 // total)


def _duration_seconds(run: TaskRun, now: datetime) -> float | None:
    if run.started_at is None:
        return None
    return max(0.0, ((run.finished_at or now) - run.started_at).total_seconds())
