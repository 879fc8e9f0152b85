"""Idempotency-Key on POST /api/v1/reservations/: retries get the first response, reuse gets 422."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from rest_framework.test import APIClient

from allocation.models import IdempotencyKey, Reservation
from allocation.services import idempotency_keys_purge

from ..allocation.test_database_guarantees import run_concurrently
from ..factories import CustomerFactory, NodeFactory, member_with_token
from .test_reservations_api import assert_problem, body

URL = "/api/v1/reservations/"


def post(client, key, payload):
    return client.post(URL, payload, format="json", HTTP_IDEMPOTENCY_KEY=key)


@pytest.mark.django_db
def test_retry_returns_first_response(api, t4_node):
    payload = body()

    first = post(api, "key-1", payload)
    retry = post(api, "key-1", payload)

    assert first.status_code == 201
    assert retry.status_code == 201
    assert retry.json() == first.json()
    assert retry["Idempotent-Replayed"] == "true"
    assert retry["Location"] == first["Location"]
    assert Reservation.objects.count() == 1


@pytest.mark.django_db
def test_same_key_other_body_is_422(api, t4_node):
    post(api, "key-2", body())

    response = post(api, "key-2", body(gpu_milli_per_gpu=500))

    data = assert_problem(response, 422, "idempotency_key_reused")
    assert "key-2" in data["detail"]
    assert data["errors"][0]["field"] == "Idempotency-Key"
    assert Reservation.objects.count() == 1


@pytest.mark.django_db
def test_rejection_is_replayed_too(api, t4_node):
    payload = body(gpu_count=8)

    first = post(api, "key-3", payload)
    retry = post(api, "key-3", payload)

    assert_problem(first, 409, "no_matching_node")
    assert retry.status_code == 409
    assert retry["Content-Type"].startswith("application/problem+json")
    assert retry.json() == first.json()
    assert Reservation.objects.count() == 1


@pytest.mark.django_db
def test_invalid_request_stores_no_key(api, t4_node):
    invalid = post(api, "key-4", body(gpu_count=-1))

    assert_problem(invalid, 400, "invalid_request")
    assert not IdempotencyKey.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "caf\u00e9"])
def test_malformed_key_is_400(api, key):
    data = assert_problem(post(api, key, body()), 400, "invalid_request")

    assert data["errors"][0]["field"] == "Idempotency-Key"


@pytest.mark.django_db
def test_keys_are_per_customer(api, other_api, region):
    NodeFactory(hostname="two", gpu_count=2, region=region)

    mine = post(api, "shared", body())
    theirs = post(other_api, "shared", body())

    assert mine.status_code == 201
    assert theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]


@pytest.mark.django_db
def test_expired_key_starts_new_request(api, region):
    NodeFactory(hostname="two", gpu_count=2, region=region)
    first = post(api, "old", body())

    with time_machine.travel(timezone.now() + timedelta(days=2)):
        later = post(api, "old", body(start_at=(timezone.now() + timedelta(hours=1)).isoformat(),
                                      end_at=(timezone.now() + timedelta(hours=2)).isoformat()))

    assert later.status_code == 201
    assert later.json()["id"] != first.json()["id"]


@pytest.mark.django_db
def test_purge_deletes_only_expired_keys(api, t4_node):
    post(api, "fresh", body())

    assert idempotency_keys_purge() == 0
    assert idempotency_keys_purge(now=timezone.now() + timedelta(days=2)) == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_create_one_reservation(require_postgres, region):
    NodeFactory(hostname="roomy", gpu_count=8, region=region)
    customer = CustomerFactory(slug="retrier")
    _, token = member_with_token(customer, "retrier-user")
    payload = body()

    def send():
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        response = client.post(URL, payload, format="json", HTTP_IDEMPOTENCY_KEY="same-key")
        return response.status_code, response.json()

    results = run_concurrently([send for _ in range(8)])

    assert {status for status, _ in results} == {201}
    assert len({data["id"] for _, data in results}) == 1
    assert Reservation.objects.count() == 1
    assert IdempotencyKey.objects.count() == 1
