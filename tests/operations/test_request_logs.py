"""Request and decision logs: Django's 4xx warnings without rejected reservations, and one INFO line per decision."""

import logging
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace.api import views

pytestmark = pytest.mark.django_db


class Collected(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def logged():
    """Collect every record that reaches the root logger's handlers, as the console handler receives them."""
    handler = Collected()
    logging.getLogger().addHandler(handler)
    yield handler.records
    logging.getLogger().removeHandler(handler)


def request_lines(records) -> list[tuple[int, int]]:
    return [(record.levelno, record.status_code) for record in records if record.name == "django.request"]


def two_gpus_body() -> dict:
    start = timezone.now() + timedelta(hours=1)
    return {"gpu_count": 2, "start_at": start.isoformat(), "end_at": (start + timedelta(hours=2)).isoformat()}


def test_unauthenticated_request_is_warned(logged):
    assert APIClient().get("/api/v1/ping/").status_code == 401

    assert request_lines(logged) == [(logging.WARNING, 401)]


def test_rejection_has_no_request_warning(logged, api, t4_node):
    assert api.post("/api/v1/reservations/", two_gpus_body(), format="json").status_code == 201
    logged.clear()

    response = api.post("/api/v1/reservations/", two_gpus_body(), format="json")

    assert response.status_code == 409
    assert request_lines(logged) == []


def test_decisions_logged_with_reason(logged, api, t4_node):
    placed = api.post("/api/v1/reservations/", two_gpus_body(), format="json").json()
    rejected = api.post("/api/v1/reservations/", two_gpus_body(), format="json").json()["reservation"]

    lines = [record.getMessage() for record in logged
             if record.name == "allocation.api.views" and record.levelno == logging.INFO]
    assert f"Reservation {placed['id']} of acme is scheduled" in lines
    assert any(line.startswith(f"Reservation {rejected['id']} of acme rejected: {rejected['reason_code']}. ")
               for line in lines)


def test_server_error_is_logged(logged, api, monkeypatch):
    def broken(request):
        raise RuntimeError("ping failed on purpose")

    monkeypatch.setattr(views.PingView, "_identity", staticmethod(broken))

    assert api.get("/api/v1/ping/").status_code == 500
    assert request_lines(logged) == [(logging.ERROR, 500)]


def test_duplicate_reference_is_warned(logged, api, t4_node):
    first = api.post("/api/v1/reservations/", {**two_gpus_body(), "external_ref": "job-1"}, format="json")
    logged.clear()

    again = api.post("/api/v1/reservations/", {**two_gpus_body(), "external_ref": "job-1"}, format="json")

    assert first.status_code == 201
    assert again.status_code == 409
    assert request_lines(logged) == [(logging.WARNING, 409)]
