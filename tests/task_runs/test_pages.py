"""The task-run pages over HTTP: staff and permissions, the list, the polled progress fragment, starting runs."""

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from allocation.models import RebalancePlan
from task_runs.models import TaskRun
from task_runs.progress import run_queue, run_start

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw")
    client.force_login(user)
    client.user = user
    return client


@pytest.fixture
def viewer(client, django_user_model):
    """A staff user who may see runs but start none."""
    user = django_user_model.objects.create_user("watcher", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_taskrun"))
    client.force_login(user)
    return client


def test_list_needs_staff(client):
    response = client.get("/ops/tasks/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_list_needs_view_permission(client, django_user_model):
    user = django_user_model.objects.create_user("clerk", password="pw", is_staff=True)
    client.force_login(user)

    response = client.get("/ops/tasks/")
    assert response.status_code == 403
    assert client.get("/ops/tasks/1/progress/").status_code == 403


def test_list_shows_runs_and_buttons(staff):
    run_queue(TaskRun.Kind.FORECASTS, task_id="t-list", started_by=staff.user)
    running = run_start(TaskRun.Kind.REPLAY, task_id="t-running", unit="trace tasks").run

    body = staff.get("/ops/tasks/").content.decode()
    assert 'id="runs"' in body
    assert f'href="/ops/tasks/{running.pk}/"' in body
    assert "Forecast refresh" in body
    assert "boss" in body
    assert "schedule or command" in body
    assert "Replay the trace" in body
    assert 'name="csrfmiddlewaretoken"' in body


def test_nav_links_the_page(staff):
    assert 'href="/ops/tasks/"' in staff.get("/ops/capacity/").content.decode()


def test_fragment_polls_while_running_and_stops_when_finished(staff):
    reporter = run_start(TaskRun.Kind.REPLAY, task_id="t-poll", unit="trace tasks")
    url = f"/ops/tasks/{reporter.run.pk}/progress/"

    running = staff.get(url)
    assert running.status_code == 200
    assert 'hx-trigger="every 1s"' in running.content.decode()

    detail = staff.get(f"/ops/tasks/{reporter.run.pk}/")
    assert detail.status_code == 200
    assert 'hx-trigger="every 1s"' in detail.content.decode()

    reporter.advance(10, 10)
    reporter.finish({"placed": 10}, message="10 placed.")
    finished = staff.get(url)
    body = finished.content.decode()
    assert finished.status_code == 286
    assert "hx-trigger" not in body
    assert "100 %" in body
    assert "10 placed." in body
    assert "&quot;placed&quot;: 10" in body


def test_failed_run_shows_its_error(staff):
    reporter = run_start(TaskRun.Kind.FORECASTS, task_id="t-error", unit="series")
    reporter.fail(RuntimeError("no series"))

    response = staff.get(f"/ops/tasks/{reporter.run.pk}/progress/")
    assert response.status_code == 286
    assert "RuntimeError: no series" in response.content.decode()


def test_unknown_run_is_404(staff):
    assert staff.get("/ops/tasks/999999/").status_code == 404


def test_start_rebalance_redirects_to_its_run(staff, eager_tasks):
    response = staff.post("/ops/tasks/start/", {"kind": "rebalance"})

    run = TaskRun.objects.get()
    assert response.status_code == 303
    assert response["Location"] == f"/ops/tasks/{run.pk}/"
    assert run.kind == TaskRun.Kind.REBALANCE
    assert run.started_by == staff.user
    assert run.state == TaskRun.State.SUCCEEDED  # Eager without a broker.
    assert run.result == {"plan_id": None, "moves": 0}
    assert not RebalancePlan.objects.exists()


def test_start_replay_without_trace_records_the_error(staff, eager_tasks):
    response = staff.post("/ops/tasks/start/", {"kind": "replay", "limit": "5"})

    run = TaskRun.objects.get()
    assert response.status_code == 303
    assert run.parameters == {"limit": 5}
    assert run.state == TaskRun.State.FAILED
    assert "import_trace" in run.error


@pytest.mark.parametrize("limit", ["", "abc", "0", "10001", "2.5"])
def test_start_replay_rejects_bad_limit(staff, limit):
    response = staff.post("/ops/tasks/start/", {"kind": "replay", "limit": limit})

    assert response.status_code == 400
    assert "enter a whole number of trace tasks from 1 to 10000" in response.content.decode()
    assert not TaskRun.objects.exists()


def test_start_rejects_unknown_kind(staff):
    response = staff.post("/ops/tasks/start/", {"kind": "cycle"})
    assert response.status_code == 400
    assert "choose one of replay, forecasts, rebalance" in response.content.decode()


def test_start_needs_the_kind_permission(viewer):
    assert viewer.get("/ops/tasks/").status_code == 200

    response = viewer.post("/ops/tasks/start/", {"kind": "forecasts"})
    assert response.status_code == 403
    assert not TaskRun.objects.exists()


def test_start_needs_csrf_token(django_user_model, eager_tasks):
    user = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    assert client.post("/ops/tasks/start/", {"kind": "rebalance"}).status_code == 403
    assert not TaskRun.objects.exists()

    client.get("/ops/tasks/")
    token = client.cookies["csrftoken"].value
    response = client.post("/ops/tasks/start/", {"kind": "rebalance", "csrfmiddlewaretoken": token})
    assert response.status_code == 303


def test_start_needs_post(staff):
    assert staff.get("/ops/tasks/start/").status_code == 405


def test_broker_outage_fails_the_run(staff, monkeypatch):
    from kombu.exceptions import OperationalError

    from allocation.tasks import propose_rebalance_task

    def broker_unavailable(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(propose_rebalance_task, "apply_async", broker_unavailable)
    response = staff.post("/ops/tasks/start/", {"kind": "rebalance"})

    run = TaskRun.objects.get()
    assert response.status_code == 303
    assert run.state == TaskRun.State.FAILED
    assert run.error.startswith("Queueing the task failed: OperationalError: Error 111")
