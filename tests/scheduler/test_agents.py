"""The agent pull API: node keys, assignments, status reports, completion and retried starts."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from allocation.models import Allocation, ReservationStatus
from allocation.services import ReservationSpec, reservation_create
from scheduler.agents import node_credential_issue
from scheduler.models import Assignment, Decision

from ..factories import NodeFactory, gpu_model

pytestmark = pytest.mark.django_db


def agent(node) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {node_credential_issue(node=node)}")
    return client


@pytest.fixture
def running(customer, t4_node):
    now = timezone.now()
    return reservation_create(customer=customer, spec=ReservationSpec(
        gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024, start_at=now,
        end_at=now + timedelta(hours=2)))


def assignments(client) -> list[dict]:
    response = client.get("/api/v1/agent/assignments/")
    assert response.status_code == 200, response.content
    return response.json()["assignments"]


def test_agent_gets_the_active_work_on_its_node(running, t4_node):
    rows = assignments(agent(t4_node))

    assert [(row["reservation"], row["action"]) for row in rows] == [(running.pk, "start")]
    assert rows[0]["gpu_uuids"] == [f"GPU-{running.allocation.shares.get().gpu.uuid}"]


def test_exit_zero_completes_the_reservation_and_frees_the_rest(running, t4_node):
    client = agent(t4_node)
    assignment_id = assignments(client)[0]["id"]

    assert client.post(f"/api/v1/agent/assignments/{assignment_id}/status/", {"state": "started"},
                       format="json").status_code == 200
    assert assignments(client)[0]["action"] == "run"
    response = client.post(f"/api/v1/agent/assignments/{assignment_id}/status/", {"state": "exited", "exit_code": 0},
                           format="json")

    assert response.status_code == 200
    running.refresh_from_db()
    assert running.status == ReservationStatus.COMPLETED
    assert Allocation.objects.get(reservation=running).end_at <= timezone.now()
    assert client.post(f"/api/v1/agent/assignments/{assignment_id}/status/", {"state": "exited", "exit_code": 0},
                       format="json").status_code == 200


def test_nonzero_exit_fails_the_reservation(running, t4_node):
    client = agent(t4_node)
    assignment_id = assignments(client)[0]["id"]

    client.post(f"/api/v1/agent/assignments/{assignment_id}/status/", {"state": "exited", "exit_code": 3},
                format="json")

    running.refresh_from_db()
    assert running.status == ReservationStatus.FAILED


def test_failed_start_moves_the_work_to_another_node(running, t4_node, region):
    spare = NodeFactory(hostname="t4-b", gpu_model=gpu_model("T4"), gpu_count=2, region=region)
    client = agent(t4_node)
    assignment_id = assignments(client)[0]["id"]

    response = client.post(f"/api/v1/agent/assignments/{assignment_id}/status/",
                           {"state": "failed", "message": "CUDA driver mismatch"}, format="json")

    assert response.status_code == 200
    running.refresh_from_db()
    assert running.status == ReservationStatus.ACTIVE
    assert Allocation.objects.get(reservation=running).node == spare
    assert [row["reservation"] for row in assignments(agent(spare))] == [running.pk]
    assert Decision.objects.filter(reservation=running, kind=Decision.Kind.START_RETRIED).exists()


def test_failed_start_with_no_other_node_fails_the_reservation(running, t4_node):
    client = agent(t4_node)
    assignment_id = assignments(client)[0]["id"]

    client.post(f"/api/v1/agent/assignments/{assignment_id}/status/", {"state": "failed"}, format="json")

    running.refresh_from_db()
    assert running.status == ReservationStatus.FAILED
    assert Allocation.objects.get(reservation=running).end_at <= timezone.now()


def test_a_node_key_reaches_only_its_own_node(running, t4_node, region):
    other = NodeFactory(hostname="t4-c", gpu_model=gpu_model("T4"), gpu_count=2, region=region)
    assignment_id = assignments(agent(t4_node))[0]["id"]

    response = agent(other).post(f"/api/v1/agent/assignments/{assignment_id}/status/", {"state": "started"},
                                 format="json")

    assert response.status_code == 404
    assert Assignment.objects.get(pk=assignment_id).status == Assignment.Status.ASSIGNED


@pytest.mark.parametrize("header", ["", "Node mpn_nothing_here", "Token abc", "Node not-a-key"])
def test_requests_without_a_valid_node_key_get_401(t4_node, header):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get("/api/v1/agent/assignments/")

    assert response.status_code == 401
    assert response.json()["code"] in ("node_key_required", "invalid_node_key")
    assert "Authorization: Node <key>" in response.json()["detail"]


def test_replaced_key_stops_working(t4_node):
    old = agent(t4_node)
    agent(t4_node)

    assert old.get("/api/v1/agent/assignments/").status_code == 401


@pytest.mark.parametrize("body, field", [
    ({"state": "done"}, "state"), ({"state": "exited"}, "exit_code"), ({"state": "started", "extra": 1}, "extra"),
    ({"state": "exited", "exit_code": True}, "exit_code"),
])
def test_bad_reports_name_the_field(running, t4_node, body, field):
    client = agent(t4_node)
    assignment_id = assignments(client)[0]["id"]

    response = client.post(f"/api/v1/agent/assignments/{assignment_id}/status/", body, format="json")

    assert response.status_code == 400
    assert field in {problem["field"] for problem in response.json()["errors"]}


def test_customers_read_only_their_own_decisions(api, other_api, customer, other_customer, t4_node):
    now = timezone.now()
    blocker = reservation_create(customer=other_customer, spec=ReservationSpec(
        gpu_count=2, gpu_milli_per_gpu=1000, cpu_millicores=0, memory_mib=0, start_at=now,
        end_at=now + timedelta(hours=1)))
    response = api.post("/api/v1/reservations/", {"gpu_count": 1, "end_at": (now + timedelta(hours=1)).isoformat(),
                                                  "queue_if_unavailable": True}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "queued"
    assert response.json()["scheduling"]["waiting_reason_code"] == "no_capacity"
    queued_id = response.json()["id"]

    mine = api.get("/api/v1/decisions/").json()["results"]
    theirs = other_api.get(f"/api/v1/decisions/?reservation={queued_id}").json()["results"]

    assert [row["reservation"] for row in mine] == [queued_id]
    assert theirs == []
    assert other_api.get(f"/api/v1/decisions/{mine[0]['id']}/").status_code == 404
    assert blocker.status == ReservationStatus.ACTIVE


def test_failed_after_started_is_refused(running, t4_node):
    client = agent(t4_node)
    assignment_id = assignments(client)[0]["id"]
    client.post(f"/api/v1/agent/assignments/{assignment_id}/status/", {"state": "started"}, format="json")

    response = client.post(f"/api/v1/agent/assignments/{assignment_id}/status/", {"state": "failed"}, format="json")

    assert response.status_code == 409
    running.refresh_from_db()
    assert running.status == ReservationStatus.ACTIVE


def test_second_exit_code_is_refused(running, t4_node):
    client = agent(t4_node)
    assignment_id = assignments(client)[0]["id"]
    url = f"/api/v1/agent/assignments/{assignment_id}/status/"
    client.post(url, {"state": "exited", "exit_code": 0}, format="json")

    response = client.post(url, {"state": "exited", "exit_code": 7}, format="json")

    assert response.status_code == 409
    assert Assignment.objects.get(pk=assignment_id).exit_code == 0


def test_unstarted_work_of_a_cancelled_reservation_leaves_the_list(running, t4_node):
    from allocation.services import reservation_cancel

    client = agent(t4_node)
    assignment_id = assignments(client)[0]["id"]
    reservation_cancel(reservation_id=running.pk)

    assert assignments(client) == []
    assert Assignment.objects.get(pk=assignment_id).status == Assignment.Status.STOPPED


def test_decision_filter_takes_whole_ids_only(api):
    response = api.get("/api/v1/decisions/?reservation=1.9")

    assert response.status_code == 400
