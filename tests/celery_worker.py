"""Start a real Celery worker process on a private queue, connected to the test database and Redis."""

import os
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

REPO_ROOT = Path(__file__).resolve().parents[1]


class WorkerQueue(str):
    """The worker's queue name; ``process`` is the worker's main process."""

    process: subprocess.Popen


def child_pids(pid: int) -> list[int]:
    """Return the ids of the processes whose parent is ``pid`` (a prefork worker's pool children)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


@contextmanager
def celery_worker(pool: str = "solo"):
    """Yield the queue name of a worker with ``pool`` (solo, or prefork with one child); stop it afterwards."""
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
        [sys.executable, "-m", "celery", "-A", "marketplace", "worker", f"--pool={pool}", "--concurrency=1", "-Q",
         queue, "--without-heartbeat", "--without-mingle", "--without-gossip", "--loglevel=WARNING"],
        cwd=REPO_ROOT, env=env,
    )
    named = WorkerQueue(queue)
    named.process = worker
    try:
        yield named
    finally:
        worker.terminate()
        worker.wait(timeout=30)
