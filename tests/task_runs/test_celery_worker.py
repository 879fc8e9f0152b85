"""Progress of a trace replay on a real Celery worker over Redis, read by this process while the task runs."""

import time
import uuid

import pytest

from allocation.tasks import replay_trace_task
from allocation.trace import NODES_CSV
from allocation.trace.importer import trace_import
from task_runs.models import TaskRun
from task_runs.progress import run_progress

from ..celery_worker import celery_worker

TRACE_START = "2026-01-01T00:00:00+00:00"


@pytest.fixture
def worker_queue(require_postgres):
    with celery_worker() as queue:
        yield queue


def wait_for_progress(task_id: str, *, timeout: float) -> list:
    """Poll the run of ``task_id`` from this process until it finishes; return every snapshot read."""
    snapshots = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = TaskRun.objects.filter(task_id=task_id).first()
        if run is not None:
            snapshots.append(run_progress(run))
            if not snapshots[-1].is_active:
                return snapshots
        time.sleep(0.2)
    raise AssertionError(f"Run of task {task_id} did not finish within {timeout} s; last read: {snapshots[-1:]}")


@pytest.mark.django_db(transaction=True)
def test_replay_progress_readable_while_running(worker_queue):
    trace_import(nodes_path=NODES_CSV)
    task_id = str(uuid.uuid4())

    result = replay_trace_task.apply_async(kwargs={"limit": 1000, "trace_start_at": TRACE_START}, queue=worker_queue,
                                           task_id=task_id)
    snapshots = wait_for_progress(task_id, timeout=240)
    summary = result.get(timeout=60)

    midway = [item for item in snapshots if item.state == TaskRun.State.RUNNING and 0 < item.done < 1000]
    assert midway, f"no progress read while the replay ran: {[(s.state, s.done) for s in snapshots]}"
    assert midway[0].total == 1000
    assert midway[0].unit == "trace tasks"
    assert 0 < midway[0].percent < 100
    done_counts = [item.done for item in snapshots]
    assert done_counts == sorted(done_counts)

    run = TaskRun.objects.get()
    assert run.state == TaskRun.State.SUCCEEDED
    assert run.done == 1000
    assert run.total == 1000
    assert run.result["submitted"] == summary["submitted"] == 1000
    assert run.deliveries == 1
    assert snapshots[-1].percent == 100


@pytest.mark.django_db(transaction=True)
def test_same_task_id_twice_keeps_one_run(worker_queue):
    """The task ledger skips the second delivery, so the run keeps the first delivery's result."""
    trace_import(nodes_path=NODES_CSV)
    task_id = str(uuid.uuid4())
    kwargs = {"limit": 20, "trace_start_at": TRACE_START}

    first_result = replay_trace_task.apply_async(kwargs=kwargs, queue=worker_queue, task_id=task_id)
    first = first_result.get(timeout=120)
    first_result.forget()  # Otherwise the result backend returns the first result for the second delivery too.
    second = replay_trace_task.apply_async(kwargs=kwargs, queue=worker_queue, task_id=task_id).get(timeout=120)

    run = TaskRun.objects.get()
    assert first["submitted"] == 20
    assert second is None
    assert run.deliveries == 1
    assert run.state == TaskRun.State.SUCCEEDED
    assert run.result == first
