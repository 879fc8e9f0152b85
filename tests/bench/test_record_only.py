"""The record-only bench mix: with its replacements, a request that fits is recorded as rejected, with no capacity read."""

from datetime import timedelta

import pytest
from django.utils import timezone

from allocation.models import Allocation, Reservation, ReservationStatus
from bench.record_only import NO_CAPACITY_DETAIL, record_only_patches

pytestmark = pytest.mark.usefixtures("require_postgres")


@pytest.fixture
def record_only(monkeypatch):
    for module, attribute, replacement in record_only_patches():
        monkeypatch.setattr(module, attribute, replacement)


def test_fitting_request_is_recorded_rejected(api, t4_node, record_only):
    start = timezone.now() + timedelta(hours=1)
    body = {"gpu_count": 1, "start_at": start.isoformat(), "end_at": (start + timedelta(hours=2)).isoformat()}

    response = api.post("/api/v1/reservations/", body, format="json")

    assert response.status_code == 409
    assert response.json()["code"] == "no_capacity"
    assert response.json()["detail"] == NO_CAPACITY_DETAIL
    assert response.json()["alternatives"] == {"earliest_start_at": None, "options": []}
    reservation = Reservation.objects.get(pk=response.json()["reservation"]["id"])
    assert reservation.status == ReservationStatus.REJECTED
    assert not Allocation.objects.exists()


def test_without_replacements_same_request_is_placed(api, t4_node):
    start = timezone.now() + timedelta(hours=1)
    body = {"gpu_count": 1, "start_at": start.isoformat(), "end_at": (start + timedelta(hours=2)).isoformat()}

    response = api.post("/api/v1/reservations/", body, format="json")

    assert response.status_code == 201
