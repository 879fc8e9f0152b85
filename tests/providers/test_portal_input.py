"""Odd input to the provider portal and the health endpoints: a clear 4xx, never a 500 or a stored bad row."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from allocation.models import ReservationStatus
from allocation.services import ReservationSpec, reservation_create
from marketplace.models import MaintenanceWindow, Membership
from providers.portal_services import _spreadsheet_safe
from scheduler.cycle import scheduling_cycle

from ..factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def provider_client(t4_node):
    user = UserFactory(username="prov4")
    Membership.objects.create(user=user, organization=t4_node.provider)
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def book(customer, *, hours=2, start_in=1, queue=False):
    start = timezone.now() + timedelta(hours=start_in)
    return reservation_create(customer=customer, spec=ReservationSpec(
        gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=0, memory_mib=0, start_at=start,
        end_at=start + timedelta(hours=hours), queue_if_unavailable=queue))


@pytest.mark.parametrize("path, field", [("/provider/prices/", "gpu_model"), ("/provider/maintenance/", "node")])
def test_superscript_id_is_rejected(provider_client, t4_node, path, field):
    # "²".isdigit() is True, but int("²") raises ValueError.
    start = timezone.now() + timedelta(days=1)
    response = provider_client.post(path, {field: "²", "price": "1.00", "start_at": start.isoformat(),
                                           "end_at": (start + timedelta(hours=1)).isoformat()})

    assert response.status_code in (400, 404)


def test_payouts_month_with_newline_is_read_stripped(provider_client, t4_node):
    response = provider_client.get("/provider/payouts.csv", {"month": "2026-05\n"})

    assert response.status_code == 200
    assert response["Content-Disposition"].endswith('-2026-05.csv"')


def test_payouts_month_in_other_digits_is_400(provider_client):
    assert provider_client.get("/provider/payouts.csv", {"month": "٢٠٢٦-٠٥"}).status_code == 400


def test_maintenance_in_year_9999_is_400(require_postgres, provider_client, t4_node):
    response = provider_client.post("/provider/maintenance/", {
        "node": t4_node.pk, "start_at": "9999-12-30T00:00-05:00", "end_at": "9999-12-31T23:00-05:00"})

    assert response.status_code == 400
    assert not MaintenanceWindow.objects.exists()
    assert provider_client.get("/provider/").status_code == 200


def test_cycle_runs_after_far_maintenance_request(require_postgres, provider_client, customer, t4_node):
    provider_client.post("/provider/maintenance/", {
        "node": t4_node.pk, "start_at": "9999-12-30T00:00-05:00", "end_at": "9999-12-31T23:00-05:00"})
    book(customer)
    book(customer)
    waiting = book(customer, queue=True)
    assert waiting.status == ReservationStatus.QUEUED

    # The cycle loads every open maintenance window, so a stored end after year 9999 raises DataError here.
    scheduling_cycle(trigger="test")


def test_health_live_head_is_200(client):
    assert client.head("/health/live/").status_code == 200


def test_health_live_post_is_405(client):
    assert client.post("/health/live/").status_code == 405


def test_overlapping_maintenance_is_400(provider_client, t4_node):
    start = timezone.now() + timedelta(days=1)
    window = {"node": t4_node.pk, "start_at": start.strftime("%Y-%m-%dT%H:%M"),
              "end_at": (start + timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M")}
    assert provider_client.post("/provider/maintenance/", window).status_code == 200
    later = {**window, "start_at": (start + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"),
             "end_at": (start + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M")}

    response = provider_client.post("/provider/maintenance/", later)

    assert response.status_code == 400
    assert "already has maintenance" in response.content.decode()
    assert MaintenanceWindow.objects.count() == 1


def test_formula_in_hostname_is_quoted_in_csv():
    assert _spreadsheet_safe("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert _spreadsheet_safe("node-1") == "node-1"
