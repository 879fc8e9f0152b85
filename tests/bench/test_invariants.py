"""The invariant checker's quota rule: cohort borrowing within its limits is allowed, anything past them is counted."""

import pytest

from allocation.models import CohortMembership
from allocation.services import quota_set
from bench.invariants import check_invariants

from ..allocation.test_cohorts import reserve
from ..factories import gpu_model
from ..stack import database_url_of_tests

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("require_postgres")]


@pytest.fixture
def borrowing(customer, cohort):
    """Acme (quota 1000) books two T4 GPUs in its cohort with Globex (quota 2000), so it borrows 1000."""
    reservation = reserve(customer, 2)
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
