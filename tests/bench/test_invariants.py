"""The invariant checker's quota rule: cohort borrowing within its limits is allowed, anything past them is counted."""

import pytest
from django.db import IntegrityError, connection, transaction

from allocation.models import CohortMembership
from allocation.services import quota_set
from bench.invariants import check_invariants
from marketplace.models import Node

from ..allocation.test_cohorts import reserve
from ..allocation.test_database_guarantees import raw_allocation
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


def test_two_borrowers_past_cohort_total_count(customer, other_customer, cohort):
    node = Node.objects.get(hostname="eight")
    # Acme borrows 1000, so the cohort uses 2000 of 3000.
    raw_allocation(customer, node, gpu_milli_total=2000)

    # The guard rejects Globex at 2500, because the cohort would use 4500 of 3000.
    with pytest.raises(IntegrityError, match="members' quotas total 3000"), transaction.atomic():
        raw_allocation(other_customer, node, gpu_milli_total=2500)

    # The same row written with triggers off, as a writer that skipped the guard would leave it.
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        try:
            raw_allocation(other_customer, node, gpu_milli_total=2500)
        finally:
            cursor.execute("SET session_replication_role = origin")

    assert check_invariants(database_url_of_tests(), [], [])["quota_overrun"] >= 1
