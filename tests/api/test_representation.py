"""The hand-built reservation body equals what DRF's generic serializer code builds from the declared fields."""

from datetime import timedelta, timezone as dt_timezone
from decimal import Decimal
from types import SimpleNamespace

import pytest
from rest_framework import serializers

from allocation.alternatives import Alternatives, Option
from allocation.api.serializers import AlternativesSerializer, ReservationSerializer
from allocation.api.views import ReservationViewSet
from allocation.models import ApprovalPolicy
from allocation.services import ReservationSpec, reservation_cancel, reservation_create

from ..conftest import NOW, hours

pytestmark = pytest.mark.django_db


def generic_body(reservation) -> dict:
    return serializers.ModelSerializer.to_representation(ReservationSerializer(), reservation)


def stored(reservation_id: int, customer):
    """Read the reservation with the relations the API's own queryset loads."""
    view = ReservationViewSet()
    view.request = SimpleNamespace(user=SimpleNamespace(membership=SimpleNamespace(organization=customer)))
    return view.get_queryset().get(pk=reservation_id)


def spec(**overrides) -> ReservationSpec:
    values = dict(gpu_count=1, gpu_milli_per_gpu=460, cpu_millicores=2000, memory_mib=4096,
                  start_at=NOW + hours(1), end_at=NOW + hours(3))
    values.update(overrides)
    return ReservationSpec(**values)


@pytest.mark.parametrize("overrides", [
    {},
    {"gpu_models": ("T4",), "max_price_per_gpu_hour": Decimal("2.5"), "external_ref": "job-1"},
    {"start_at": NOW.astimezone(dt_timezone(timedelta(hours=2))) + hours(1),
     "end_at": NOW.astimezone(dt_timezone(timedelta(hours=2))) + hours(2)},
    {"gpu_count": 8},
    {"gpu_count": 8, "queue_if_unavailable": True},
    {"gpu_count": 0, "gpu_milli_per_gpu": 0},
], ids=["placed", "models-and-price", "offset", "rejected", "queued", "cpu-only"])
def test_body_matches_generic_serializer(customer, t4_node, overrides):
    created = reservation_create(customer=customer, spec=spec(**overrides), now=NOW)
    read = stored(created.pk, customer)

    assert ReservationSerializer(read).data == generic_body(read)
    assert ReservationSerializer(created).data == generic_body(created)


def test_body_matches_for_approval_hold(customer, t4_node):
    ApprovalPolicy.objects.create(organization=customer, flagged=True)
    created = reservation_create(customer=customer, spec=spec(), now=NOW)
    read = stored(created.pk, customer)

    assert read.hold_expires_at is not None
    assert ReservationSerializer(read).data == generic_body(read)


def test_body_matches_after_cancel(customer, t4_node):
    created = reservation_create(customer=customer, spec=spec(), now=NOW)
    reservation_cancel(reservation_id=created.pk, customer=customer, now=NOW + hours(2))
    read = stored(created.pk, customer)

    assert read.allocation.released_at is not None
    assert ReservationSerializer(read).data == generic_body(read)


@pytest.mark.parametrize("alternatives", [
    Alternatives(earliest_start_at=None),
    Alternatives(earliest_start_at=NOW + hours(5), options=[
        Option(gpu_model="T4", region="eu-central", price_per_gpu_hour=Decimal("1.5"), currency="EUR"),
        Option(gpu_model="A10", region="us-east", price_per_gpu_hour=Decimal("0.1234"), currency="USD"),
    ]),
    Alternatives(earliest_start_at=NOW.astimezone(dt_timezone(timedelta(hours=-5)))),
], ids=["none-found", "options", "offset"])
def test_alternatives_body_matches_generic_serializer(alternatives):
    generic = serializers.Serializer.to_representation(AlternativesSerializer(), alternatives)

    assert AlternativesSerializer(alternatives).data == generic
