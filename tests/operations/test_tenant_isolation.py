"""Tenant isolation on every endpoint that returns or changes an organization's objects.

One customer's reservation, its decisions and its usage are created; another customer then tries
each endpoint by id, by filter and by list. Nothing of the first may show, and nothing may change.
"""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from allocation.models import ReservationStatus
from allocation.services import ReservationSpec, reservation_create
from marketplace.models import Membership
from scheduler.agents import agent_assignments, agent_report, node_credential_issue

from ..factories import NodeFactory, UserFactory, gpu_model

pytestmark = pytest.mark.django_db


@pytest.fixture
def victim(customer, t4_node):
    """The first customer's running reservation, with a decision, an assignment and metered usage."""
    now = timezone.now()
    reservation = reservation_create(customer=customer, spec=ReservationSpec(
        gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=0, memory_mib=0, start_at=now,
        end_at=now + timedelta(hours=1)))
    [assignment] = agent_assignments(node=t4_node)
    agent_report(node=t4_node, assignment_id=assignment.pk, state="started")
    agent_report(node=t4_node, assignment_id=assignment.pk, state="exited", exit_code=0)
    reservation.refresh_from_db()
    assert reservation.status == ReservationStatus.COMPLETED
    return reservation


@pytest.mark.parametrize("path", [
    "/api/v1/reservations/{id}/",
    "/api/v1/decisions/?reservation={id}",
    "/api/v1/reservations/?status=completed",
    "/api/v1/decisions/",
    "/api/v1/invoices/",
])
def test_other_customer_reads_nothing(victim, other_api, path):
    response = other_api.get(path.format(id=victim.pk))

    assert response.status_code in (200, 404)
    body = response.json()
    if response.status_code == 200:
        assert body.get("results", body.get("lines", [])) == []
        assert body.get("entries", 0) == 0


def test_other_customer_cannot_cancel(victim, other_api, customer, t4_node):
    now = timezone.now()
    live = reservation_create(customer=customer, spec=ReservationSpec(
        gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=0, memory_mib=0, start_at=now,
        end_at=now + timedelta(hours=1)))

    response = other_api.post(f"/api/v1/reservations/{live.pk}/cancel/")

    assert response.status_code == 404
    live.refresh_from_db()
    assert live.status == ReservationStatus.ACTIVE


def test_decision_ids_of_others_are_not_found(victim, other_api):
    decision_id = victim.decisions.first().pk

    assert other_api.get(f"/api/v1/decisions/{decision_id}/").status_code == 404


def test_provider_user_reads_no_customer_data(victim, t4_node):
    user = UserFactory(username="prov-user")
    Membership.objects.create(user=user, organization=t4_node.provider)
    client = APIClient()
    client.force_authenticate(user)

    assert client.get("/api/v1/reservations/").status_code == 403
    assert client.get("/api/v1/invoices/").status_code == 403


def test_node_key_reaches_no_customer_endpoint(victim, t4_node):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {node_credential_issue(node=t4_node)}")

    assert client.get("/api/v1/reservations/").status_code == 401
    assert client.get(f"/api/v1/decisions/?reservation={victim.pk}").status_code == 401


def test_other_provider_sees_no_node_and_no_payout(victim, region):
    other = NodeFactory(hostname="other-prov-node", gpu_model=gpu_model("T4"), region=region)
    user = UserFactory(username="other-prov")
    Membership.objects.create(user=user, organization=other.provider)
    client = Client()
    client.force_login(user)

    page = client.get("/provider/").content.decode()
    payouts = client.get(f"/provider/payouts.csv?month={timezone.now():%Y-%m}").content.decode()

    assert "t4-a" not in page
    assert str(victim.pk) not in payouts.splitlines()[1:-1]
    assert len(payouts.strip().splitlines()) == 2


@pytest.mark.parametrize("path", ["/ops/approvals/", "/ops/rebalancing/", "/ops/preemptions/", "/ops/capacity/"])
def test_ops_pages_need_staff(customer, path):
    user = UserFactory(username="plain")
    Membership.objects.create(user=user, organization=customer)
    client = Client()
    client.force_login(user)

    response = client.get(path)

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
