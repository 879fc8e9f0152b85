"""An admin starts a trace replay from the long-tasks page and watches its progress bar, in a real browser."""

import re
import time

import pytest

from allocation.trace import NODES_CSV
from allocation.trace.importer import trace_import
from task_runs.models import TaskRun
from task_runs.progress import WRITE_INTERVAL_SECONDS, run_start

from ..task_runs.conftest import eager_tasks  # noqa: F401 - a fixture shared with the task-run tests
from .conftest import admin_log_in

pytestmark = pytest.mark.django_db(transaction=True)


def log_in(page, live_server):
    admin_log_in(page, live_server, "/ops/tasks/")


def test_start_replay_reaches_full_bar(page, live_server, admin_user, eager_tasks):
    trace_import(nodes_path=NODES_CSV)
    log_in(page, live_server)

    page.fill("input[name=limit]", "30")
    page.click("text=Replay the trace")
    page.wait_for_url(re.compile(r"/ops/tasks/\d+/$"))

    page.wait_for_selector("#progress[data-state=succeeded]")
    assert page.inner_text("#percent") == "100 %"
    assert page.get_attribute("#bar", "value") == "100"
    assert "30 of 30 trace tasks" in page.inner_text("#progress")
    run = TaskRun.objects.get()
    assert run.state == TaskRun.State.SUCCEEDED
    assert run.started_by == admin_user

    page.click("text=All runs")
    assert page.get_attribute(f"#run-{run.pk}", "data-state") == "succeeded"


def test_bar_polls_until_the_run_finishes(page, live_server, admin_user):
    reporter = run_start(TaskRun.Kind.REPLAY, task_id="browser-poll", unit="trace tasks")
    log_in(page, live_server)
    polls = []
    page.on("request", lambda request: polls.append(request.url) if "/progress/" in request.url else None)

    page.goto(f"{live_server.url}/ops/tasks/{reporter.run.pk}/")
    assert page.get_attribute("#progress", "data-state") == "running"

    time.sleep(WRITE_INTERVAL_SECONDS)
    reporter.advance(5, 20)
    page.wait_for_selector("#percent:text('25 %')")

    reporter.advance(20, 20)
    reporter.finish({"placed": 20}, message="20 placed.")
    page.wait_for_selector("#progress[data-state=succeeded]")
    assert page.inner_text("#percent") == "100 %"
    assert "20 placed." in page.inner_text("#progress")

    polls_at_finish = len(polls)
    page.wait_for_timeout(2500)
    assert len(polls) == polls_at_finish
