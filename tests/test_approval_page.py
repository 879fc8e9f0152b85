"""The approval queue page, through Django's test client."""

import pytest
from django.utils import timezone

from allocation.models import ApprovalPolicy, ReservationStatus
from allocation.services import ReservationSpec, reservation_create

from .conftest import hours

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("boss", "boss@example.com", "pw-for-tests"))
    return client


@pytest.fixture
def pending(customer, t4_node):
    ApprovalPolicy.objects.create(organization=customer, flagged=True)
    now = timezone.now()
    spec = ReservationSpec(gpu_count=1, gpu_milli_per_gpu=500, cpu_millicores=1000, memory_mib=1024,
                           start_at=now + hours(1), end_at=now + hours(2), external_ref="train-7")
    return reservation_create(customer=customer, spec=spec)


def test_page_lists_pending_with_capacity(staff_client, pending):
    response = staff_client.get("/ops/approvals/")

    content = response.content.decode()
    assert response.status_code == 200
    assert f'id="reservation-{pending.pk}"' in content
    assert "train-7" in content
    assert "1500 milli free besides this hold" in content
    assert "htmx" in content


def test_page_needs_staff(client, pending):
    response = client.get("/ops/approvals/")

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_filter_hides_other_models(staff_client, pending):
    response = staff_client.get("/ops/approvals/table/", {"gpu_model": "V100M32"})

    assert f'id="reservation-{pending.pk}"' not in response.content.decode()


def test_bulk_approve(staff_client, pending):
    response = staff_client.post("/ops/approvals/decide/", {"decision": "approve", "ids": [pending.pk]})

    pending.refresh_from_db()
    assert f"Reservation {pending.pk} approved." in response.content.decode()
    assert pending.status == ReservationStatus.SCHEDULED


def test_reject_without_reason_shows_error(staff_client, pending):
    response = staff_client.post("/ops/approvals/decide/", {"decision": "reject", "ids": [pending.pk]})

    pending.refresh_from_db()
    assert "needs a reason" in response.content.decode()
    assert pending.status == ReservationStatus.PENDING_APPROVAL


def test_decide_rejects_missing_csrf(pending, django_user_model):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(django_user_model.objects.create_superuser("csrf", "c@example.com", "pw-for-tests"))

    response = client.post("/ops/approvals/decide/", {"decision": "approve", "ids": [pending.pk]})

    assert response.status_code == 403


def test_api_shows_pending_then_decision(api, pending, staff_client):
    before = api.get(f"/api/v1/reservations/{pending.pk}/").json()
    staff_client.post("/ops/approvals/decide/", {"decision": "reject", "ids": [pending.pk], "reason": "No budget"})
    after = api.get(f"/api/v1/reservations/{pending.pk}/").json()

    assert before["status"] == "pending_approval"
    assert before["hold_expires_at"] is not None
    assert after["status"] == "rejected"
    assert after["reason_code"] == "rejected_by_admin"
    assert after["reason_detail"] == "No budget"


def test_api_create_pending_is_202(api, customer, t4_node):
    ApprovalPolicy.objects.create(organization=customer, flagged=True)
    now = timezone.now()

    response = api.post("/api/v1/reservations/", {"gpu_count": 1, "start_at": (now + hours(1)).isoformat(),
                                                  "end_at": (now + hours(2)).isoformat()}, format="json")

    assert response.status_code == 202
    assert response.json()["status"] == "pending_approval"


def test_unicode_digits_are_named_and_refused(staff_client, pending):
    page = staff_client.get("/ops/approvals/", {"min_gpus": "\u00b2"})
    decide = staff_client.post("/ops/approvals/decide/", {"decision": "approve", "ids": ["\u00b2"]})

    assert page.status_code == 200
    assert decide.status_code == 400
    assert "must be whole numbers" in decide.content.decode()


def test_unknown_decision_is_400(staff_client, pending):
    response = staff_client.post("/ops/approvals/decide/", {"decision": "maybe", "ids": [pending.pk]})

    assert response.status_code == 400
    assert "Choose Approve or Reject" in response.content.decode()
