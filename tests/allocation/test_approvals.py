"""Approval policies, admin decisions and the expiry of undecided holds."""

from decimal import Decimal

import pytest

from allocation.approvals import reservation_approve, reservation_reject, reservations_expire
from allocation.models import Allocation, ApprovalPolicy, ReservationStatus
from allocation.services import ReservationSpec, reservation_create
from marketplace.exceptions import InvalidRequest, InvalidTransition

from ..conftest import NOW, hours

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("boss", "boss@example.com", "pw-for-tests")


def reserve(customer, **overrides):
    values = dict(gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024,
                  start_at=NOW + hours(1), end_at=NOW + hours(3))
    values.update(overrides)
    return reservation_create(customer=customer, spec=ReservationSpec(**values), now=NOW)


def test_no_policy_needs_no_approval(customer, t4_node):
    assert reserve(customer).status == ReservationStatus.SCHEDULED


def test_flagged_organization_needs_approval(customer, t4_node):
    ApprovalPolicy.objects.create(organization=customer, flagged=True)

    reservation = reserve(customer)

    assert reservation.status == ReservationStatus.PENDING_APPROVAL
    assert reservation.hold_expires_at == NOW + hours(0.5)
    assert "flagged" in reservation.reason_detail
    assert Allocation.objects.filter(reservation=reservation).exists()


def test_gpu_threshold_needs_approval(customer, t4_node):
    ApprovalPolicy.objects.create(organization=customer, max_gpus_without_approval=1)

    small = reserve(customer)
    large = reserve(customer, gpu_count=2, start_at=NOW + hours(3), end_at=NOW + hours(4))

    assert small.status == ReservationStatus.SCHEDULED
    assert large.status == ReservationStatus.PENDING_APPROVAL
    assert "2 GPUs" in large.reason_detail


def test_cost_threshold_needs_approval(customer, t4_node):
    ApprovalPolicy.objects.create(organization=customer, max_cost_without_approval=Decimal("1.50"))

    reservation = reserve(customer)

    assert reservation.status == ReservationStatus.PENDING_APPROVAL
    assert "2.00" in reservation.reason_detail


def test_pending_hold_blocks_capacity(customer, other_customer, region):
    from ..factories import NodeFactory

    NodeFactory(hostname="single", gpu_count=1, region=region)
    ApprovalPolicy.objects.create(organization=customer, flagged=True)
    reserve(customer)

    other = reserve(other_customer)

    assert other.reason_code == "no_capacity"


def test_approve_schedules_and_records_admin(customer, t4_node, admin_user):
    ApprovalPolicy.objects.create(organization=customer, flagged=True)
    reservation = reserve(customer)

    reservation_approve(reservation_id=reservation.pk, actor=admin_user, now=NOW)

    reservation.refresh_from_db()
    assert reservation.status == ReservationStatus.SCHEDULED
    assert reservation.hold_expires_at is None
    assert reservation.events.last().actor == admin_user


def test_approve_after_start_activates(customer, t4_node, admin_user, settings):
    settings.MARKETPLACE = {**settings.MARKETPLACE, "APPROVAL_HOLD_SECONDS": 3 * 3600}
    ApprovalPolicy.objects.create(organization=customer, flagged=True)
    reservation = reserve(customer)

    reservation_approve(reservation_id=reservation.pk, actor=admin_user, now=NOW + hours(1.5))

    reservation.refresh_from_db()
    assert reservation.status == ReservationStatus.ACTIVE


def test_reject_releases_capacity_with_reason(customer, t4_node, admin_user):
    ApprovalPolicy.objects.create(organization=customer, flagged=True)
    reservation = reserve(customer)

    reservation_reject(reservation_id=reservation.pk, actor=admin_user, reason="Budget not approved", now=NOW)

    reservation.refresh_from_db()
    allocation = Allocation.objects.get(reservation=reservation)
    assert reservation.status == ReservationStatus.REJECTED
    assert reservation.reason_code == "rejected_by_admin"
    assert reservation.reason_detail == "Budget not approved"
    assert allocation.end_at == allocation.start_at


def test_reject_needs_reason(customer, t4_node, admin_user):
    ApprovalPolicy.objects.create(organization=customer, flagged=True)
    reservation = reserve(customer)

    with pytest.raises(InvalidRequest):
        reservation_reject(reservation_id=reservation.pk, actor=admin_user, reason="  ", now=NOW)


def test_decision_on_scheduled_reservation_is_invalid(customer, t4_node, admin_user):
    reservation = reserve(customer)

    with pytest.raises(InvalidTransition):
        reservation_approve(reservation_id=reservation.pk, actor=admin_user, now=NOW)


def test_expiry_releases_hold_and_is_idempotent(customer, t4_node):
    ApprovalPolicy.objects.create(organization=customer, flagged=True)
    reservation = reserve(customer)

    early = reservations_expire(now=NOW + hours(0.25))
    due = reservations_expire(now=NOW + hours(0.5))
    again = reservations_expire(now=NOW + hours(0.5))

    reservation.refresh_from_db()
    assert (early, due, again) == (0, 1, 0)
    assert reservation.status == ReservationStatus.EXPIRED
    assert reservation.reason_code == "approval_timeout"
    assert Allocation.objects.get(reservation=reservation).released_at == NOW + hours(0.5)


def test_pending_approval_is_not_advanced(customer, t4_node):
    from allocation.services import reservations_advance

    ApprovalPolicy.objects.create(organization=customer, flagged=True)
    reservation = reserve(customer)

    reservations_advance(now=NOW + hours(5))

    reservation.refresh_from_db()
    assert reservation.status == ReservationStatus.PENDING_APPROVAL


def test_expired_hold_cannot_be_approved(customer, t4_node, admin_user):
    ApprovalPolicy.objects.create(organization=customer, flagged=True)
    reservation = reserve(customer)

    with pytest.raises(InvalidTransition, match="hold expired"):
        reservation_approve(reservation_id=reservation.pk, actor=admin_user, now=NOW + hours(0.75))


def test_reject_and_expiry_clear_hold(customer, t4_node, admin_user):
    ApprovalPolicy.objects.create(organization=customer, flagged=True)
    rejected = reserve(customer, start_at=NOW + hours(1), end_at=NOW + hours(2))
    expired = reserve(customer, start_at=NOW + hours(2), end_at=NOW + hours(3))

    reservation_reject(reservation_id=rejected.pk, actor=admin_user, reason="No", now=NOW)
    reservations_expire(now=NOW + hours(1))

    rejected.refresh_from_db()
    expired.refresh_from_db()
    assert rejected.hold_expires_at is None
    assert expired.hold_expires_at is None
    assert expired.status == ReservationStatus.EXPIRED
