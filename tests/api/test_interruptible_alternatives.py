"""Alternatives of an interruptible request use the price it would pay, not the node's list price.

Interruptible work pays INTERRUPTIBLE_PRICE_FACTOR (0.6) of the list price, so placement accepts a
node whose list price is up to max_price_per_gpu_hour / 0.6. The earliest start and the options
of a rejection apply the same factor.
"""

from datetime import datetime, timedelta, timezone

import pytest

from ..factories import NodeFactory, gpu_model

pytestmark = pytest.mark.django_db

BASE = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0)


def at(hours: float) -> str:
    return (BASE + timedelta(hours=hours)).isoformat()


def body(**overrides) -> dict:
    values = {"gpu_count": 1, "gpu_models": ["T4"], "interruptible": True, "max_price_per_gpu_hour": "0.70"}
    values.update(overrides)
    return values


@pytest.fixture
def one_gpu_booked_until_hour_3(region, other_api):
    """One T4 GPU at 1.00 per GPU-hour, which another customer has booked from hour 0 to hour 3."""
    NodeFactory(hostname="t4", gpu_count=1, region=region, price_per_gpu_hour="1.00")
    response = other_api.post("/api/v1/reservations/", {"gpu_count": 1, "start_at": at(0), "end_at": at(3)},
                              format="json")
    assert response.status_code == 201, response.json()


def test_interruptible_request_fits_at_hour_3(api, one_gpu_booked_until_hour_3):
    response = api.post("/api/v1/reservations/", body(start_at=at(3), end_at=at(4)), format="json")

    assert response.status_code == 201, response.json()
    assert response.json()["allocation"]["price_per_gpu_hour"] == "0.6000"


def test_rejected_interruptible_request_gets_earliest_start(api, one_gpu_booked_until_hour_3):
    response = api.post("/api/v1/reservations/", body(start_at=at(1), end_at=at(2)), format="json")

    data = response.json()
    assert response.status_code == 409, data
    assert data["reason_code"] == "no_capacity"
    assert data["alternatives"]["earliest_start_at"] == at(3).replace("+00:00", "Z")


def test_quote_of_interruptible_request_gets_earliest_start(api, one_gpu_booked_until_hour_3):
    data = api.post("/api/v1/quotes/", body(start_at=at(1), end_at=at(2)), format="json").json()

    assert data["fits"] is False
    assert data["alternatives"]["earliest_start_at"] == at(3).replace("+00:00", "Z")


def test_options_of_interruptible_request_show_its_price(api, one_gpu_booked_until_hour_3, region):
    NodeFactory(hostname="v100", gpu_count=1, region=region, gpu_model=gpu_model("V100M32"), price_per_gpu_hour="2.00")

    data = api.post("/api/v1/quotes/", body(start_at=at(1), end_at=at(2)), format="json").json()

    assert data["fits"] is False
    options = {option["gpu_model"]: option["price_per_gpu_hour"] for option in data["alternatives"]["options"]}
    assert options == {"V100M32": "1.2000"}
