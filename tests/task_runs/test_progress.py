"""The task-run service: state changes, throttled progress writes, lost runs and idempotent starts."""

import threading
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from task_runs.models import TaskRun
from task_runs.progress import (WRITE_INTERVAL_SECONDS, lost_after_seconds, run_progress, run_queue, run_start, runs_mark_lost,
                                runs_recent, track)

from ..conftest import cache_empty

pytestmark = pytest.mark.django_db


class FakeClock:
    """A monotonic clock, in seconds, that advances only when the test changes ``now``."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_queue_start_finish(django_user_model):
    user = django_user_model.objects.create_user("ops", password="pw")
    run = run_queue(TaskRun.Kind.REPLAY, task_id="t-1", started_by=user, parameters={"limit": 5})
    assert run.state == TaskRun.State.QUEUED
    assert run_progress(run).percent is None

    reporter = run_start(TaskRun.Kind.REPLAY, task_id="t-1", unit="trace tasks")
    run.refresh_from_db()
    assert run.state == TaskRun.State.RUNNING
    assert run.started_at is not None
    assert run.deliveries == 1
    assert run.parameters == {"limit": 5}
    assert run.started_by == user

    reporter.finish({"placed": 5}, message="5 placed.")
    run.refresh_from_db()
    assert run.state == TaskRun.State.SUCCEEDED
    assert run.result == {"placed": 5}
    assert run.message == "5 placed."
    assert run.finished_at is not None
    assert TaskRun.objects.count() == 1


def test_progress_shows_live_counters_while_running():
    clock = FakeClock()
    reporter = run_start(TaskRun.Kind.REPLAY, task_id="t-live", unit="trace tasks", clock=clock)
    clock.now += WRITE_INTERVAL_SECONDS
    assert reporter.advance(30, 120, message="Replaying")

    progress = run_progress(TaskRun.objects.get(task_id="t-live"))
    assert progress.state == TaskRun.State.RUNNING
    assert progress.done == 30
    assert progress.total == 120
    assert progress.percent == 25
    assert progress.unit == "trace tasks"
    assert progress.message == "Replaying"
    assert TaskRun.objects.get(task_id="t-live").done == 0  # The row gets the counters at the finish.


def test_advance_writes_at_most_once_per_interval():
    clock = FakeClock()
    reporter = run_start(TaskRun.Kind.REPLAY, task_id="t-throttle", unit="trace tasks", clock=clock)
    run = reporter.run

    for done in range(1, 101):
        reporter.advance(done, 1000)
        clock.now += 0.05
    # 100 calls over 5 s: one write per elapsed second, none in the first second after the start.
    assert reporter.writes == 4
    assert run_progress(run).done < 100

    clock.now += WRITE_INTERVAL_SECONDS
    assert reporter.advance(101, 1000)
    assert run_progress(run).done == 101


def test_advance_rejects_negative_counts():
    reporter = run_start(TaskRun.Kind.REPLAY, task_id="t-negative", unit="trace tasks")
    with pytest.raises(ValueError, match="cannot be negative"):
        reporter.advance(-1, 10)


def test_fail_keeps_counters_and_error():
    clock = FakeClock()
    reporter = run_start(TaskRun.Kind.FORECASTS, task_id="t-fail", unit="series", clock=clock)
    reporter.advance(3, 10)
    reporter.fail(RuntimeError("series pool-a has no history"))

    run = TaskRun.objects.get(task_id="t-fail")
    progress = run_progress(run)
    assert progress.state == TaskRun.State.FAILED
    assert run.error == "RuntimeError: series pool-a has no history"
    assert run.done == 3
    assert run.total == 10
    assert progress.percent == 30


def test_start_is_idempotent_by_task_id():
    first = run_start(TaskRun.Kind.REPLAY, task_id="t-again", unit="trace tasks")
    first.fail("worker lost")
    second = run_start(TaskRun.Kind.REPLAY, task_id="t-again", unit="trace tasks")

    run = TaskRun.objects.get()
    assert second.run.pk == first.run.pk
    assert run.deliveries == 2
    assert run.state == TaskRun.State.RUNNING
    assert run.error == ""


def test_start_rejects_a_task_id_of_another_kind():
    run_start(TaskRun.Kind.REPLAY, task_id="t-kind", unit="trace tasks")
    with pytest.raises(ValueError, match="belongs to a replay run"):
        run_start(TaskRun.Kind.FORECASTS, task_id="t-kind", unit="series")


def test_silent_running_run_is_marked_lost_when_read():
    started = timezone.now() - timedelta(hours=2)
    run_start(TaskRun.Kind.REPLAY, task_id="t-lost", unit="trace tasks", now=started)
    limit = lost_after_seconds()
    run = TaskRun.objects.get(task_id="t-lost")

    # The cache write at the start is a sign of life now, so the run is only lost once it too is older.
    assert run_progress(run).state == TaskRun.State.RUNNING
    later = timezone.now() + timedelta(seconds=limit + 5)
    progress = run_progress(run, now=later)

    run.refresh_from_db()
    assert progress.state == TaskRun.State.FAILED
    assert run.state == TaskRun.State.FAILED
    assert run.error.startswith("Lost: no progress report for")
    assert f"longer than the {limit} s" in run.error


def test_sweep_marks_only_silent_runs_lost():
    limit = lost_after_seconds()
    run_start(TaskRun.Kind.REPLAY, task_id="t-silent", unit="trace tasks", now=timezone.now() - timedelta(hours=2))
    run_start(TaskRun.Kind.FORECASTS, task_id="t-busy", unit="series")
    later = timezone.now() + timedelta(seconds=limit // 2)

    assert runs_mark_lost(now=later) == 0  # The silent run's start wrote to the cache just now.
    TaskRun.objects.filter(task_id="t-busy").update(updated_at=timezone.now() - timedelta(hours=2))
    cache_empty()

    assert runs_mark_lost(now=later) == 2
    assert set(TaskRun.objects.values_list("state", flat=True)) == {TaskRun.State.FAILED}


def test_redelivery_revives_a_lost_run():
    run_start(TaskRun.Kind.REPLAY, task_id="t-revive", unit="trace tasks", now=timezone.now() - timedelta(hours=2))
    cache_empty()
    assert runs_mark_lost() == 1

    run_start(TaskRun.Kind.REPLAY, task_id="t-revive", unit="trace tasks")
    run = TaskRun.objects.get()
    assert run.state == TaskRun.State.RUNNING
    assert run.deliveries == 2


class FakeTask:
    """The part of a bound Celery task that ``track`` reads."""

    class request:
        id = "t-track"
        kwargs = {"limit": 3}


def test_track_fails_the_run_and_reraises():
    with pytest.raises(RuntimeError, match="trace missing"):
        with track(FakeTask(), TaskRun.Kind.REPLAY, unit="trace tasks"):
            raise RuntimeError("trace missing")

    run = TaskRun.objects.get(task_id="t-track")
    assert run.state == TaskRun.State.FAILED
    assert run.error == "RuntimeError: trace missing"
    assert run.parameters == {"limit": 3}


def test_track_finishes_a_body_without_result():
    with track(FakeTask(), TaskRun.Kind.REPLAY, unit="trace tasks") as progress:
        progress.advance(3, 3)

    run = TaskRun.objects.get(task_id="t-track")
    assert run.state == TaskRun.State.SUCCEEDED
    assert run.done == 3
    assert run_progress(run).percent == 100


def test_recent_runs_newest_first():
    run_queue(TaskRun.Kind.REPLAY, task_id="t-old", now=timezone.now() - timedelta(minutes=5))
    run_queue(TaskRun.Kind.FORECASTS, task_id="t-new")

    assert [item.run.task_id for item in runs_recent()] == ["t-new", "t-old"]


@pytest.mark.django_db(transaction=True)
def test_progress_visible_to_another_connection_inside_a_transaction(require_postgres):
    clock = FakeClock()
    reporter = run_start(TaskRun.Kind.REPLAY, task_id="t-atomic", unit="trace tasks", clock=clock)
    seen = {}

    def read_from_another_connection():
        try:
            seen["progress"] = run_progress(TaskRun.objects.get(task_id="t-atomic"))
        finally:
            connection.close()

    with transaction.atomic():
        TaskRun.objects.filter(task_id="t-atomic").update(message="written inside the open transaction")
        clock.now += WRITE_INTERVAL_SECONDS
        reporter.advance(7, 10)
        reader = threading.Thread(target=read_from_another_connection)
        reader.start()
        reader.join()

    assert seen["progress"].done == 7
    assert seen["progress"].state == TaskRun.State.RUNNING
