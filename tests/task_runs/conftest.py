import pytest

from marketplace.celery import app


@pytest.fixture
def eager_tasks(monkeypatch):
    """Run queued tasks in the test process, as the demo does, even when REDIS_URL names a broker."""
    monkeypatch.setitem(app.conf, "task_always_eager", True)
