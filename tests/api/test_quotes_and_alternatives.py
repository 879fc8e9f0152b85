"""Quotes price a request without booking; rejections come with alternatives."""

from datetime import datetime, timedelta, timezone

import pytest

from allocation.models import Reservation
from allocation.services import quota_set

from ..factories import NodeFactory, RegionFactory, gpu_model
from .test_reservations_api import assert_problem

pytestmark = pytest.mark.django_db

BASE = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0)


def at(hours: float) -> str:
    return (BASE + timedelta(hours=hours)).isoformat()


def body(**overrides) -> dict:
    values = {"gpu_count": 1, "cpu_millicores": 1000, "memory_mib": 1024, "start_at": at(0), "end_at": at(2)}
    values.update(overrides)
    return values


@pytest.fixture
def fleet(region):
    """One T4 GPU in eu-central, one V100M32 GPU in us-east at a higher price."""
    NodeFactory(hostname="t4", gpu_count=1, region=region)
    NodeFactory(hostname="v100", gpu_count=1, gpu_model=gpu_model("V100M32"), price_per_gpu_hour="3.00",
                region=RegionFactory(code="us-east", name="US East"))


def test_quote_that_fits_prices_without_booking(api, fleet):
    response = api.post("/api/v1/quotes/", body(gpu_models=["T4"]), format="json")

    data = response.json()
    assert response.status_code == 200, data
    assert data["fits"] is True
    assert data["gpu_model"] == "T4"
    assert data["region"] == "eu-central"
    assert data["price_per_gpu_hour"] == "1.0000"
    assert data["estimated_cost"] == "2.00"
    assert data["alternatives"] is None
    assert Reservation.objects.count() == 0


def test_quote_without_capacity_gives_earliest_start(api, fleet):
    api.post("/api/v1/reservations/", body(gpu_models=["T4"], end_at=at(3)), format="json")

    data = api.post("/api/v1/quotes/", body(gpu_models=["T4"], start_at=at(1), end_at=at(2)), format="json").json()

    assert data["fits"] is False
    assert data["reason_code"] == "no_capacity"
    assert data["alternatives"]["earliest_start_at"] == at(3).replace("+00:00", "Z")
    assert data["alternatives"]["options"] == [
        {"gpu_model": "V100M32", "region": "us-east", "price_per_gpu_hour": "3.0000", "currency": "USD"},
    ]


def test_quote_over_quota_waits_for_own_reservation(api, customer, fleet):
    quota_set(organization=customer, gpu_model=None, max_gpu_milli=1000)
    api.post("/api/v1/reservations/", body(gpu_models=["T4"], end_at=at(4)), format="json")

    data = api.post("/api/v1/quotes/", body(start_at=at(1), end_at=at(2)), format="json").json()

    assert data["reason_code"] == "quota_exceeded"
    assert data["alternatives"]["earliest_start_at"] == at(4).replace("+00:00", "Z")
    assert data["alternatives"]["options"] == []


def test_rejection_409_carries_alternatives(api, fleet):
    api.post("/api/v1/reservations/", body(gpu_models=["T4"]), format="json")

    response = api.post("/api/v1/reservations/", body(gpu_models=["T4"]), format="json")

    data = assert_problem(response, 409, "no_capacity")
    assert data["alternatives"]["earliest_start_at"] == at(2).replace("+00:00", "Z")
    assert [option["gpu_model"] for option in data["alternatives"]["options"]] == ["V100M32"]


def test_invalid_quote_is_400(api, fleet):
    data = assert_problem(api.post("/api/v1/quotes/", body(gpu_count=-1), format="json"), 400, "invalid_request")

    assert data["errors"][0]["field"] == "gpu_count"


def test_quote_needs_authentication(client):
    assert_problem(client.post("/api/v1/quotes/", body(), content_type="application/json"), 401, "not_authenticated")


def test_quote_respects_budget(api, customer, fleet):
    from decimal import Decimal

    from allocation.models import Budget

    Budget.objects.create(organization=customer, max_gpu_hours=Decimal("1"))

    data = api.post("/api/v1/quotes/", body(), format="json").json()

    assert data["fits"] is False
    assert data["reason_code"] == "budget_exceeded"
    assert data["alternatives"]["options"] == []


def test_quote_says_when_approval_is_needed(api, customer, fleet):
    from allocation.models import ApprovalPolicy

    ApprovalPolicy.objects.create(organization=customer, flagged=True)

    data = api.post("/api/v1/quotes/", body(), format="json").json()

    assert data["fits"] is True
    assert data["needs_approval"] is True
    assert "flagged" in data["detail"]


def test_quote_for_cohort_member_over_own_quota(api, customer, other_customer, fleet):
    from allocation.models import Cohort, CohortMembership

    quota_set(organization=customer, gpu_model=None, max_gpu_milli=500)
    quota_set(organization=other_customer, gpu_model=None, max_gpu_milli=2000)
    cohort = Cohort.objects.create(slug="lab", name="Lab")
    CohortMembership.objects.create(cohort=cohort, organization=customer)
    CohortMembership.objects.create(cohort=cohort, organization=other_customer)

    quote = api.post("/api/v1/quotes/", body(), format="json")
    created = api.post("/api/v1/reservations/", body(gpu_models=["T4"]), format="json")
    rejected = api.post("/api/v1/reservations/", body(gpu_models=["T4"]), format="json")

    assert quote.status_code == 200
    assert quote.json()["fits"] is True
    assert created.status_code == 201
    assert created.json()["allocation"]["borrowed_gpu_milli"] == 500
    assert rejected.status_code == 409


def test_alternatives_are_cached_briefly(api, fleet):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    api.post("/api/v1/reservations/", body(gpu_models=["T4"]), format="json")

    with CaptureQueriesContext(connection) as first:
        api.post("/api/v1/reservations/", body(gpu_models=["T4"], external_ref="first-try"), format="json")
    with CaptureQueriesContext(connection) as second:
        response = api.post("/api/v1/reservations/", body(gpu_models=["T4"], external_ref="second-try"),
                            format="json")

    assert response.status_code == 409
    assert response.json()["alternatives"]["earliest_start_at"] is not None
    assert len(second) < len(first)


def test_earliest_start_after_own_booking(api, customer, fleet):
    quota_set(organization=customer, gpu_model=None, max_gpu_milli=1000)
    first = api.post("/api/v1/reservations/", body(gpu_models=["T4"], end_at=at(4)), format="json")
    assert first.status_code == 201, first.json()
    request = body(gpu_models=["V100M32"], start_at=at(1), end_at=at(2))

    rejected = api.post("/api/v1/reservations/", request, format="json").json()
    booked_then = api.post("/api/v1/reservations/", {**request, "start_at": at(4), "end_at": at(5)}, format="json")

    assert rejected["reason_code"] == "quota_exceeded"
    assert rejected["alternatives"]["earliest_start_at"] == at(4).replace("+00:00", "Z")
    assert booked_then.status_code == 201, booked_then.json()


def test_earliest_start_after_quota_narrowing(api, customer, region):
    """A per-model quota can leave only models that cannot hold the request, while the requested ones can later."""
    from allocation.services import ReservationSpec, reservation_create

    NodeFactory(hostname="t4", gpu_count=1, region=region)
    NodeFactory(hostname="a10-a", gpu_model=gpu_model("A10"), gpu_count=4, region=region)
    quota_set(organization=customer, gpu_model=gpu_model("A10"), max_gpu_milli=4000)
    reservation_create(customer=customer, spec=ReservationSpec(
        gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=0, memory_mib=1024, gpu_models=("A10",),
        start_at=BASE, end_at=BASE + timedelta(hours=1)))
    request = body(gpu_count=4, gpu_models=["T4", "A10"], start_at=at(0), end_at=at(2))

    quoted = api.post("/api/v1/quotes/", request, format="json").json()
    rejected = api.post("/api/v1/reservations/", request, format="json").json()

    assert rejected["reason_code"] == "no_matching_node"
    assert quoted["alternatives"]["earliest_start_at"] == at(1).replace("+00:00", "Z")
    assert rejected["alternatives"]["earliest_start_at"] == at(1).replace("+00:00", "Z")
