"""The ceiling mixes of the bench: with their replacements, a request that fits is rejected without placement."""

from datetime import timedelta

import pytest
from django.utils import timezone

from allocation.models import Allocation, Reservation, ReservationStatus
from bench.ceilings import NO_CAPACITY_DETAIL, record_only_patches, validate_only_patches

pytestmark = pytest.mark.usefixtures("require_postgres")


def replaced(monkeypatch, patches) -> None:
    for module, attribute, replacement in patches:
        monkeypatch.setattr(module, attribute, replacement)


def fitting_body() -> dict:
    start = timezone.now() + timedelta(hours=1)
    return {"gpu_count": 1, "start_at": start.isoformat(), "end_at": (start + timedelta(hours=2)).isoformat()}


def test_record_only_stores_rejection(api, t4_node, monkeypatch):
    replaced(monkeypatch, record_only_patches())

    response = api.post("/api/v1/reservations/", fitting_body(), format="json")

    assert response.status_code == 409
    assert response.json()["code"] == "no_capacity"
    assert response.json()["detail"] == NO_CAPACITY_DETAIL
    assert response.json()["alternatives"] == {"earliest_start_at": None, "options": []}
    reservation = Reservation.objects.get(pk=response.json()["reservation"]["id"])
    assert reservation.status == ReservationStatus.REJECTED
    assert not Allocation.objects.exists()


def test_validate_only_writes_nothing(api, t4_node, monkeypatch):
    replaced(monkeypatch, validate_only_patches())

    response = api.post("/api/v1/reservations/", fitting_body(), format="json")
    invalid = api.post("/api/v1/reservations/", {**fitting_body(), "gpu_count": -1}, format="json")

    assert response.status_code == 409
    assert response.json()["reservation"]["status"] == ReservationStatus.REJECTED
    assert response.json()["detail"] == NO_CAPACITY_DETAIL
    assert invalid.status_code == 400
    assert not Reservation.objects.exists()


def test_without_replacements_request_is_placed(api, t4_node):
    response = api.post("/api/v1/reservations/", fitting_body(), format="json")

    assert response.status_code == 201
