"""Interruptible option prices: sent back as max_price_per_gpu_hour, an option's price must place the request.

The README states that a request sent with an option's model, region and price as
max_price_per_gpu_hour is placed on such a node. An interruptible option's price is the list price
times INTERRUPTIBLE_PRICE_FACTOR (0.6), rounded half up to 4 places. Placement divides the
customer's cap by 0.6 and rounds down. For a list price of 1.0002 the option shows 0.6001, and
0.6001 / 0.6 rounds down to 1.0001, which is below 1.0002, so placement skips the node.
"""

from datetime import datetime, timedelta, timezone

import pytest

from ..factories import NodeFactory

pytestmark = pytest.mark.django_db

BASE = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0)
WINDOW = {"start_at": BASE.isoformat(), "end_at": (BASE + timedelta(hours=1)).isoformat()}


@pytest.fixture
def t4_node_priced_to_four_places(region):
    """One T4 node at 1.0002 per GPU-hour, a price the provider portal accepts."""
    return NodeFactory(hostname="t4-odd-price", gpu_count=1, region=region, price_per_gpu_hour="1.0002")


def body(**overrides) -> dict:
    values = {"gpu_count": 1, "gpu_models": ["T4"], "interruptible": True, **WINDOW}
    values.update(overrides)
    return values


def test_quote_matches_option_price(api, t4_node_priced_to_four_places):
    quote = api.post("/api/v1/quotes/", body(), format="json").json()
    rejected = api.post("/api/v1/quotes/", body(max_price_per_gpu_hour="0.50"), format="json").json()

    assert quote["price_per_gpu_hour"] == "0.6001"
    assert [option["price_per_gpu_hour"] for option in rejected["alternatives"]["options"]] == ["0.6001"]


def test_option_price_as_cap_places_request(api, t4_node_priced_to_four_places):
    response = api.post("/api/v1/reservations/", body(max_price_per_gpu_hour="0.6001"), format="json")

    assert response.status_code == 201, response.json()
    assert response.json()["allocation"]["price_per_gpu_hour"] == "0.6001"


def test_price_rejection_names_the_sent_cap(api, t4_node_priced_to_four_places):
    response = api.post("/api/v1/reservations/", body(max_price_per_gpu_hour="0.50"), format="json")
    detail = response.json()["detail"]

    assert response.status_code == 409
    assert response.json()["reason_code"] == "price_above_maximum"
    # Not 0.8333, the list-price cap computed from 0.50, which the customer never sent.
    assert "0.8333" not in detail, detail
    assert "0.5000" in detail, detail
