"""The Django admin: every model is listed, records are read-only, actions go through services."""

import pytest
from django.contrib import admin
from django.urls import reverse

from allocation.models import Quota, Reservation, ReservationStatus
from allocation.services import ReservationSpec, reservation_create
from allocation.trace import NODES_CSV
from allocation.trace.importer import trace_import

from .conftest import hours

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, django_user_model):
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests")
    client.force_login(user)
    return client


@pytest.fixture
def reservation(customer, t4_node):
    from django.utils import timezone

    now = timezone.now()
    spec = ReservationSpec(gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024,
                           start_at=now + hours(1), end_at=now + hours(2))
    return reservation_create(customer=customer, spec=spec)


@pytest.mark.parametrize("model", list(admin.site._registry), ids=lambda model: model._meta.label)
def test_changelist_renders(admin_client, reservation, model):
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")

    response = admin_client.get(url)

    assert response.status_code == 200


def test_fleet_changelist_after_import(admin_client):
    trace_import(nodes_path=NODES_CSV)

    response = admin_client.get(reverse("admin:marketplace_node_changelist"), {"q": "openb-node-0001"})

    assert response.status_code == 200
    assert b"openb-node-0001" in response.content


def test_reservation_list_shows_node(admin_client, reservation):
    response = admin_client.get(reverse("admin:allocation_reservation_changelist"))

    assert b"t4-a" in response.content


def test_reservation_page_is_read_only(admin_client, reservation):
    url = reverse("admin:allocation_reservation_change", args=[reservation.pk])

    page = admin_client.get(url)
    post = admin_client.post(url, {"status": "completed"})

    assert page.status_code == 200
    assert b'name="status"' not in page.content
    assert post.status_code == 403
    reservation.refresh_from_db()
    assert reservation.status == ReservationStatus.SCHEDULED


def test_allocation_cannot_be_added(admin_client):
    response = admin_client.get(reverse("admin:allocation_allocation_add"))

    assert response.status_code == 403


def test_cancel_action_uses_service(admin_client, reservation):
    response = admin_client.post(
        reverse("admin:allocation_reservation_changelist"),
        {"action": "cancel_reservations", "_selected_action": [reservation.pk]},
        follow=True,
    )

    reservation.refresh_from_db()
    assert response.status_code == 200
    assert reservation.status == ReservationStatus.CANCELLED
    assert reservation.events.last().actor.username == "root"
    assert reservation.allocation.released_at is not None


def test_quota_edit_through_admin(admin_client, customer):
    response = admin_client.post(
        reverse("admin:allocation_quota_add"),
        {"organization": customer.pk, "gpu_model": "", "max_gpu_milli": 4000},
    )

    assert response.status_code == 302
    assert Quota.objects.get(organization=customer, gpu_model=None).max_gpu_milli == 4000
    assert Reservation.objects.count() == 0


def test_quota_for_provider_is_form_error(admin_client, t4_node):
    response = admin_client.post(
        reverse("admin:allocation_quota_add"),
        {"organization": t4_node.provider.pk, "gpu_model": "", "max_gpu_milli": 4000},
    )

    assert response.status_code == 200
    assert b"Select a valid choice" in response.content
    assert Quota.objects.count() == 0
