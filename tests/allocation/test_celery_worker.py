"""The trace replay as a Celery task, run by a real worker process over Redis."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from allocation.models import Reservation
from allocation.tasks import replay_trace_task
from allocation.trace import NODES_CSV
from allocation.trace.importer import trace_import

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def celery_worker_process(require_postgres):
    """Start a worker on a private queue, connected to the test database; stop it afterwards."""
    if not settings.REDIS_URL:
        pytest.skip("needs Redis: set REDIS_URL")
    queue = f"test-{uuid.uuid4().hex[:8]}"
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "marketplace", "worker", "--pool=solo", "-Q", queue,
         "--without-heartbeat", "--without-mingle", "--without-gossip", "--loglevel=WARNING"],
        cwd=REPO_ROOT, env=env,
    )
    try:
        yield queue
    finally:
        worker.terminate()
        worker.wait(timeout=30)


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
