"""Cohorts: members borrow each other's unused quota, within limits, and borrowed usage is marked."""

import pytest
from django.db import IntegrityError, transaction

from allocation.models import Allocation, CohortMembership, ReservationStatus
from allocation.services import ReservationSpec, reservation_create
from marketplace.models import Node

from ..conftest import NOW, hours

pytestmark = pytest.mark.django_db


def reserve(customer, gpu_count):
    spec = ReservationSpec(gpu_count=gpu_count, gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024,
                           start_at=NOW, end_at=NOW + hours(2))
    return reservation_create(customer=customer, spec=spec, now=NOW)


def test_member_borrows_unused_quota(customer, cohort):
    reservation = reserve(customer, 2)

    assert reservation.status == ReservationStatus.ACTIVE
    assert Allocation.objects.get(reservation=reservation).borrowed_gpu_milli == 1000


def test_within_own_quota_borrows_nothing(customer, cohort):
    reservation = reserve(customer, 1)

    assert Allocation.objects.get(reservation=reservation).borrowed_gpu_milli == 0


def test_borrowing_limit_applies(customer, cohort):
    CohortMembership.objects.filter(organization=customer).update(borrowing_limit_gpu_milli=500)

    reservation = reserve(customer, 2)

    assert reservation.reason_code == "quota_exceeded"
    assert "borrowing limit of 500" in reservation.reason_detail


def test_cohort_without_unused_quota_cannot_lend(customer, other_customer, cohort):
    reserve(other_customer, 2)

    reservation = reserve(customer, 2)

    assert reservation.reason_code == "quota_exceeded"
    assert "Cohort 'research'" in reservation.reason_detail


def test_organization_outside_cohort_cannot_borrow(customer, cohort):
    CohortMembership.objects.filter(organization=customer).delete()

    assert reserve(customer, 2).reason_code == "quota_exceeded"


def test_database_rejects_borrowing_past_limit(require_postgres, customer, cohort):
    from .test_database_guarantees import raw_allocation

    node = Node.objects.get(hostname="eight")
    CohortMembership.objects.filter(organization=customer).update(borrowing_limit_gpu_milli=500)
    raw_allocation(customer, node, gpu_milli_total=1400)

    with pytest.raises(IntegrityError, match="borrowing limit is 500"), transaction.atomic():
        raw_allocation(customer, node, gpu_milli_total=200)


def test_database_rejects_cohort_overrun(require_postgres, customer, other_customer, cohort):
    from .test_database_guarantees import raw_allocation

    node = Node.objects.get(hostname="eight")
    raw_allocation(other_customer, node, gpu_milli_total=2000)

    with pytest.raises(IntegrityError, match="members' quotas total 3000"), transaction.atomic():
        raw_allocation(customer, node, gpu_milli_total=1500)


def test_lender_keeps_its_own_quota(customer, other_customer, cohort):
    borrower = reserve(customer, 3)

    lender = reserve(other_customer, 2)

    assert Allocation.objects.get(reservation=borrower).borrowed_gpu_milli == 2000
    assert lender.status == ReservationStatus.ACTIVE
    assert Allocation.objects.get(reservation=lender).borrowed_gpu_milli == 0
