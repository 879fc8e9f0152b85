"""Budgets per calendar period: GPU-hours and spend, booked and consumed, released on early ends."""

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from allocation.budgets import periods_overlapping
from allocation.models import Budget, ReservationStatus
from allocation.services import ReservationSpec, reservation_cancel, reservation_create

from ..conftest import hours
from ..factories import NodeFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=timezone.utc)


def reserve(customer, *, gpu_count=1, start=NOW, duration=2, **overrides):
    spec = ReservationSpec(gpu_count=gpu_count, gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024,
                           start_at=start, end_at=start + hours(duration), **overrides)
    return reservation_create(customer=customer, spec=spec, now=NOW)


def test_periods_split_at_month_boundary():
    start = datetime(2026, 6, 30, 22, tzinfo=timezone.utc)

    periods = periods_overlapping(start, start + hours(4), Budget.Period.MONTH)

    assert [p[0].month for p in periods] == [6, 7]


def test_gpu_hour_budget_rejects_excess(customer, t4_node):
    Budget.objects.create(organization=customer, max_gpu_hours=Decimal("3"))
    reserve(customer)

    second = reserve(customer, start=NOW + hours(2))

    assert second.status == ReservationStatus.REJECTED
    assert second.reason_code == "budget_exceeded"
    assert "allows 3.000 GPU-hours; 2.000 are booked" in second.reason_detail


def test_spend_budget_steers_to_cheaper_node(customer, region):
    NodeFactory(hostname="pricey", gpu_count=1, price_per_gpu_hour=Decimal("5.00"), region=region)
    cheap = NodeFactory(hostname="cheap", gpu_count=2, price_per_gpu_hour=Decimal("1.00"), region=region)
    Budget.objects.create(organization=customer, max_spend=Decimal("3.00"))

    reservation = reserve(customer)

    assert reservation.allocation.node == cheap


def test_spend_budget_rejects_when_nothing_affordable(customer, region):
    NodeFactory(hostname="pricey", gpu_count=1, price_per_gpu_hour=Decimal("5.00"), region=region)
    Budget.objects.create(organization=customer, max_spend=Decimal("3.00"))

    reservation = reserve(customer)

    assert reservation.reason_code == "budget_exceeded"
    assert "pays at most 1.5000 per GPU-hour" in reservation.reason_detail


def test_cancel_returns_unused_budget(customer, t4_node):
    Budget.objects.create(organization=customer, max_gpu_hours=Decimal("2"))
    first = reserve(customer, start=NOW + hours(1))

    reservation_cancel(reservation_id=first.pk, now=NOW)
    second = reserve(customer, start=NOW + hours(1))

    assert second.status == ReservationStatus.SCHEDULED


def test_other_month_has_its_own_budget(customer, t4_node):
    Budget.objects.create(organization=customer, max_gpu_hours=Decimal("2"))
    reserve(customer)

    next_month = reserve(customer, start=datetime(2026, 7, 1, tzinfo=timezone.utc))

    assert next_month.status == ReservationStatus.SCHEDULED


def test_database_rejects_overspending_insert(require_postgres, customer, t4_node):
    from django.db import IntegrityError, transaction

    from .test_database_guarantees import raw_allocation

    Budget.objects.create(organization=customer, max_gpu_hours=Decimal("3"), max_spend=Decimal("100"))
    raw_allocation(customer, t4_node, gpu_milli_total=1000, start=NOW, end=NOW + hours(2))

    with pytest.raises(IntegrityError, match="GPU-hours"), transaction.atomic():
        raw_allocation(customer, t4_node, gpu_milli_total=1000, start=NOW + hours(2), end=NOW + hours(4))


def test_database_rejects_spend_over_budget(require_postgres, customer, t4_node):
    from django.db import IntegrityError, transaction

    from .test_database_guarantees import raw_allocation

    Budget.objects.create(organization=customer, max_spend=Decimal("1.50"))

    with pytest.raises(IntegrityError, match="would spend 2.00"), transaction.atomic():
        raw_allocation(customer, t4_node, gpu_milli_total=1000, start=NOW, end=NOW + hours(2))


def test_database_allows_budget_in_next_month(require_postgres, customer, t4_node):
    from .test_database_guarantees import raw_allocation

    Budget.objects.create(organization=customer, max_gpu_hours=Decimal("2"))
    raw_allocation(customer, t4_node, gpu_milli_total=1000, start=NOW, end=NOW + hours(2))

    raw_allocation(customer, t4_node, gpu_milli_total=1000, start=datetime(2026, 7, 1, tzinfo=timezone.utc),
                   end=datetime(2026, 7, 1, 2, tzinfo=timezone.utc))
