"""The provider portal: access, prices, the minimum price, maintenance windows and the payouts report."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from allocation.models import ReservationStatus
from allocation.services import ReservationSpec, reservation_create
from marketplace.models import MaintenanceWindow, Membership, Node
from providers.models import ProviderProfile

from ..factories import NodeFactory, UserFactory, gpu_model

pytestmark = pytest.mark.django_db


@pytest.fixture
def provider_client(t4_node):
    user = UserFactory(username="prov")
    Membership.objects.create(user=user, organization=t4_node.provider)
    client = Client()
    client.force_login(user)
    return client


def book(customer, hours=2, start_in=0):
    start = timezone.now() + timedelta(hours=start_in)
    return reservation_create(customer=customer, spec=ReservationSpec(
        gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=0, memory_mib=0, start_at=start,
        end_at=start + timedelta(hours=hours)))


def test_portal_shows_only_the_providers_nodes(provider_client, t4_node, region):
    NodeFactory(hostname="someone-else", region=region)

    page = provider_client.get("/provider/").content.decode()

    assert "t4-a" in page
    assert "someone-else" not in page


def test_customers_and_strangers_are_kept_out(client, api, customer, t4_node):
    assert client.get("/provider/").status_code == 302
    user = UserFactory(username="cust")
    Membership.objects.create(user=user, organization=customer)
    client.force_login(user)

    assert client.get("/provider/").status_code == 403


def test_price_change_applies_to_new_bookings_only(provider_client, customer, t4_node):
    before = book(customer)

    response = provider_client.post(f"/provider/nodes/{t4_node.pk}/price/", {"price": "1.75"})

    assert response.status_code == 200
    assert "now costs 1.75" in response.content.decode()
    before.allocation.refresh_from_db()
    assert before.allocation.price_per_gpu_hour == Decimal("1.0000")
    assert book(customer).allocation.price_per_gpu_hour == Decimal("1.7500")


@pytest.mark.parametrize("price", ["abc", "-1", "1.23456", "NaN", ""])
def test_bad_prices_are_rejected_with_the_field(provider_client, t4_node, price):
    response = provider_client.post(f"/provider/nodes/{t4_node.pk}/price/", {"price": price})

    assert response.status_code == 400
    assert "is not a price" in response.content.decode()
    t4_node.refresh_from_db()
    assert t4_node.price_per_gpu_hour == Decimal("1.0000")


def test_minimum_price_rejects_lower_node_prices(provider_client, t4_node):
    provider_client.post("/provider/minimum/", {"minimum": "2.00"})

    response = provider_client.post(f"/provider/nodes/{t4_node.pk}/price/", {"price": "1.50"})

    assert response.status_code == 400
    assert ProviderProfile.objects.get().min_price_per_gpu_hour == Decimal("2.0000")


def test_another_providers_node_is_not_found(provider_client, region):
    other = NodeFactory(hostname="foreign", region=region)

    response = provider_client.post(f"/provider/nodes/{other.pk}/price/", {"price": "3.00"})

    assert response.status_code == 404


def test_model_price_sets_every_node_of_the_model(provider_client, t4_node, region):
    second = NodeFactory(hostname="t4-b", gpu_model=gpu_model("T4"), provider=t4_node.provider, region=region)

    provider_client.post("/provider/prices/", {"gpu_model": t4_node.gpu_model_id, "price": "0.95"})

    assert set(Node.objects.filter(pk__in=[t4_node.pk, second.pk]).values_list("price_per_gpu_hour", flat=True)) == {
        Decimal("0.9500")}


def test_maintenance_blocks_new_bookings_and_moves_existing_ones(provider_client, customer, t4_node, region):
    spare = NodeFactory(hostname="t4-spare", gpu_model=gpu_model("T4"), gpu_count=2, region=region)
    existing = book(customer, hours=3)
    start = timezone.now() + timedelta(hours=1)

    response = provider_client.post("/provider/maintenance/", {
        "node": t4_node.pk, "start_at": start.strftime("%Y-%m-%dT%H:%M"),
        "end_at": (start + timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M"), "reason": "firmware"})

    assert response.status_code == 200, response.content
    assert "1 reservation to move" in response.content.decode()
    assert MaintenanceWindow.objects.get().reason == "firmware"
    later = book(customer, hours=1, start_in=2)
    assert later.status == ReservationStatus.SCHEDULED
    assert later.allocation.node == spare
    assert existing.migrations.get().to_node == spare


def test_maintenance_window_must_end_after_it_starts(provider_client, t4_node):
    start = timezone.now() + timedelta(hours=1)

    response = provider_client.post("/provider/maintenance/", {
        "node": t4_node.pk, "start_at": start.isoformat(), "end_at": start.isoformat()})

    assert response.status_code == 400
    assert "end_at must be after start_at" in response.content.decode()
    assert not MaintenanceWindow.objects.exists()


def test_payouts_report_is_csv_with_a_total(provider_client, t4_node):
    response = provider_client.get("/provider/payouts.csv?month=2026-05")

    assert response["Content-Type"] == "text/csv"
    lines = response.content.decode().strip().splitlines()
    assert lines[0].startswith("reservation,node,started_at")
    assert lines[-1].startswith("total,")
    assert provider_client.get("/provider/payouts.csv?month=May").status_code == 400


@pytest.mark.parametrize("price", ["1e3", "-0", "1_000", "١٢", "10000"])
def test_price_must_be_plain_digits(provider_client, t4_node, price):
    assert provider_client.post(f"/provider/nodes/{t4_node.pk}/price/", {"price": price}).status_code == 400


@pytest.mark.parametrize("fields", [
    {"start_at": "2030-02-30T10:00", "end_at": "2030-03-01T10:00"},
    {"start_at": "2030-01-01T25:00", "end_at": "2030-01-02T10:00"},
    {"start_at": "2030-01-01T10:00", "end_at": "2030-01-01T12:00", "reason": "a\x00b"},
])
def test_bad_maintenance_input_is_a_400(provider_client, t4_node, fields):
    response = provider_client.post("/provider/maintenance/", {"node": t4_node.pk, **fields})

    assert response.status_code == 400
    assert not MaintenanceWindow.objects.exists()


@pytest.mark.parametrize("month", ["9999-12", "2026-1", "2026-13"])
def test_payouts_month_out_of_range_is_a_400(provider_client, month):
    assert provider_client.get(f"/provider/payouts.csv?month={month}").status_code == 400
