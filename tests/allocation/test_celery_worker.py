"""The trace replay as a Celery task, run by a real worker process over Redis."""

import pytest

from allocation.models import Reservation
from allocation.tasks import replay_trace_task
from allocation.trace import NODES_CSV
from allocation.trace.importer import trace_import

from ..celery_worker import celery_worker


@pytest.fixture
def celery_worker_process(require_postgres):
    with celery_worker() as queue:
        yield queue


@pytest.mark.django_db(transaction=True)
def test_replay_task_runs_on_worker(celery_worker_process):
    trace_import(nodes_path=NODES_CSV)

    result = replay_trace_task.apply_async(
        kwargs={"limit": 40, "trace_start_at": "2026-01-01T00:00:00+00:00"}, queue=celery_worker_process,
    )
    summary = result.get(timeout=120)

    assert summary["submitted"] == 40
    assert summary["placed"] == 40
    assert Reservation.objects.count() == 40


@pytest.mark.django_db(transaction=True)
def test_redelivered_replay_task_submits_nothing_twice(celery_worker_process):
    trace_import(nodes_path=NODES_CSV)
    kwargs = {"limit": 30, "trace_start_at": "2026-01-01T00:00:00+00:00"}

    first = replay_trace_task.apply_async(kwargs=kwargs, queue=celery_worker_process).get(timeout=120)
    second = replay_trace_task.apply_async(kwargs=kwargs, queue=celery_worker_process).get(timeout=120)

    assert first["submitted"] == 30
    assert second["submitted"] == 0
    assert second["skipped_already_replayed"] == 30
    assert Reservation.objects.count() == 30
