"""The invariant checker's quota rule: cohort borrowing within its limits is allowed, anything past them is counted."""

import pytest

from allocation.models import Cohort, CohortMembership
from allocation.services import ReservationSpec, quota_set, reservation_create
from bench.invariants import check_invariants

from ..conftest import NOW, hours
from ..factories import NodeFactory, gpu_model
from ..stack import database_url_of_tests

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("require_postgres")]


@pytest.fixture
def borrowing(customer, other_customer, region):
    """Acme (quota 1000) and Globex (quota 2000) share a cohort. Acme books two T4 GPUs, so it borrows 1000."""
    NodeFactory(hostname="eight", gpu_count=8, region=region)
    quota_set(organization=customer, gpu_model=None, max_gpu_milli=1000)
    quota_set(organization=other_customer, gpu_model=None, max_gpu_milli=2000)
    cohort = Cohort.objects.create(slug="research", name="Research")
    CohortMembership.objects.create(cohort=cohort, organization=customer)
    CohortMembership.objects.create(cohort=cohort, organization=other_customer)
    spec = ReservationSpec(gpu_count=2, gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024,
                           start_at=NOW, end_at=NOW + hours(2))
    reservation = reservation_create(customer=customer, spec=spec, now=NOW)
    assert reservation.allocation.borrowed_gpu_milli == 1000
    return customer


def quota_overruns() -> int:
    return check_invariants(database_url_of_tests(), [], [])["quota_overrun"]


def test_borrowing_within_limits_is_no_overrun(borrowing):
    assert quota_overruns() == 0


def test_borrowing_past_the_limit_is_counted(borrowing):
    CohortMembership.objects.filter(organization=borrowing).update(borrowing_limit_gpu_milli=500)

    assert quota_overruns() == 1


def test_above_own_quota_outside_a_cohort_is_counted(borrowing):
    CohortMembership.objects.filter(organization=borrowing).delete()

    assert quota_overruns() == 1


def test_model_quota_is_checked(borrowing):
    quota_set(organization=borrowing, gpu_model=gpu_model("T4"), max_gpu_milli=1000)

    assert quota_overruns() == 1
