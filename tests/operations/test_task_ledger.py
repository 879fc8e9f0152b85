"""The task ledger: a second delivery of one Celery message runs nothing; a delivery whose run died runs again."""

import threading
import time
from datetime import timedelta

import psycopg
import pytest
from celery import shared_task
from celery.exceptions import Retry
from django.db import OperationalError, connection
from django.utils import timezone

from marketplace.models import TaskDelivery
from marketplace.task_ledger import ADVISORY_LOCK_NAMESPACE, _lock_key, task_deliveries_purge

from ..stack import database_url_of_tests

runs: list[str] = []


@shared_task(name="tests.record_run")
def record_run_task(label: str) -> str:
    runs.append(label)
    return label


@shared_task(name="tests.fail_once")
def fail_once_task() -> str:
    runs.append("attempt")
    if len(runs) == 1:
        raise RuntimeError("first attempt fails")
    return "done"


@shared_task(name="tests.retry_once", bind=True)
def retry_once_task(self) -> str:
    runs.append("attempt")
    if len(runs) == 1:
        raise Retry("first attempt asks for a retry")
    return "done"


@shared_task(name="tests.lose_database_once")
def lose_database_once_task() -> str:
    runs.append("attempt")
    if len(runs) == 1:
        raise OperationalError("terminating connection due to administrator command")
    return "done"


@shared_task(name="tests.shut_down_once")
def shut_down_once_task() -> str:
    runs.append("attempt")
    if len(runs) == 1:
        raise SystemExit(-15)
    return "done"


def deliver(task, task_id: str, *args):
    """Call ``task`` as a worker does for a message with ``task_id`` (not eagerly)."""
    task.push_request(id=task_id, is_eager=False)
    try:
        return task(*args)
    finally:
        task.pop_request()


@pytest.fixture(autouse=True)
def no_runs():
    runs.clear()


@pytest.mark.django_db
def test_duplicate_of_succeeded_message_is_skipped():
    assert deliver(record_run_task, "message-1", "a") == "a"
    assert deliver(record_run_task, "message-1", "a") is None

    assert runs == ["a"]
    delivery = TaskDelivery.objects.get(task_id="message-1")
    assert (delivery.status, delivery.attempts, delivery.task_name) == ("succeeded", 1, "tests.record_run")
    assert delivery.finished_at is not None


@pytest.mark.django_db
def test_new_message_runs_again():
    deliver(record_run_task, "message-1", "a")
    deliver(record_run_task, "message-2", "a")

    assert runs == ["a", "a"]


@pytest.mark.django_db
def test_message_of_dead_worker_runs_again():
    # A worker that died mid-run leaves its delivery running, with no lock holder.
    TaskDelivery.objects.create(task_id="message-1", task_name="tests.record_run", started_at=timezone.now())

    assert deliver(record_run_task, "message-1", "a") == "a"

    assert runs == ["a"]
    delivery = TaskDelivery.objects.get(task_id="message-1")
    assert (delivery.status, delivery.attempts) == ("succeeded", 2)


@pytest.mark.django_db
def test_duplicate_of_failed_message_is_skipped():
    with pytest.raises(RuntimeError):
        deliver(fail_once_task, "message-1")
    assert TaskDelivery.objects.get(task_id="message-1").status == "failed"

    assert deliver(fail_once_task, "message-1") is None
    assert runs == ["attempt"]


@pytest.mark.django_db
def test_retry_runs_under_same_id():
    with pytest.raises(Retry):
        deliver(retry_once_task, "message-1")
    assert TaskDelivery.objects.get(task_id="message-1").status == "running"

    assert deliver(retry_once_task, "message-1") == "done"
    delivery = TaskDelivery.objects.get(task_id="message-1")
    assert (delivery.status, delivery.attempts) == ("succeeded", 2)


@pytest.mark.django_db
def test_database_loss_retries_the_message(monkeypatch):
    requested = []
    monkeypatch.setattr(lose_database_once_task, "retry",
                        lambda **options: requested.append(options) or Retry("database lost"))

    with pytest.raises(Retry):
        deliver(lose_database_once_task, "message-1")

    assert requested[0]["countdown"] == 5
    assert TaskDelivery.objects.get(task_id="message-1").status == "running"
    assert deliver(lose_database_once_task, "message-1") == "done"
    assert TaskDelivery.objects.get(task_id="message-1").attempts == 2


@pytest.mark.django_db
def test_worker_shutdown_leaves_message_claimable():
    with pytest.raises(SystemExit):
        deliver(shut_down_once_task, "message-1")
    assert TaskDelivery.objects.get(task_id="message-1").status == "running"

    assert deliver(shut_down_once_task, "message-1") == "done"
    assert TaskDelivery.objects.get(task_id="message-1").status == "succeeded"


@pytest.mark.django_db
def test_eager_calls_bypass_the_ledger():
    assert record_run_task.apply(args=["a"], task_id="message-1").get() == "a"
    assert record_run_task.apply(args=["a"], task_id="message-1").get() == "a"

    assert runs == ["a", "a"]
    assert not TaskDelivery.objects.exists()


@pytest.mark.django_db
def test_purge_keeps_running_and_recent():
    now = timezone.now()
    TaskDelivery.objects.create(task_id="old", task_name="t", status="succeeded", started_at=now - timedelta(days=3))
    TaskDelivery.objects.create(task_id="old-running", task_name="t", started_at=now - timedelta(days=3))
    TaskDelivery.objects.create(task_id="new", task_name="t", status="succeeded", started_at=now)

    assert task_deliveries_purge(older_than=timedelta(hours=48)) == 1
    assert set(TaskDelivery.objects.values_list("task_id", flat=True)) == {"old-running", "new"}


@pytest.mark.django_db(transaction=True)
def test_duplicate_waits_for_live_run(require_postgres):
    """A copy delivered while the first run is alive waits for its lock, then finds it succeeded."""
    TaskDelivery.objects.create(task_id="message-1", task_name="tests.record_run", started_at=timezone.now())
    with psycopg.connect(database_url_of_tests(), autocommit=True) as live_worker:
        live_worker.execute("SELECT pg_advisory_lock(%s, %s)", [ADVISORY_LOCK_NAMESPACE, _lock_key("message-1")])
        outcome = []

        def duplicate():
            try:
                outcome.append(deliver(record_run_task, "message-1", "duplicate"))
            finally:
                connection.close()

        thread = threading.Thread(target=duplicate)
        thread.start()
        time.sleep(1.0)
        assert thread.is_alive(), "the duplicate did not wait for the live run"
        TaskDelivery.objects.filter(task_id="message-1").update(status="succeeded")
        live_worker.execute("SELECT pg_advisory_unlock(%s, %s)", [ADVISORY_LOCK_NAMESPACE, _lock_key("message-1")])
        thread.join(timeout=30)

    assert outcome == [None]
    assert runs == []
