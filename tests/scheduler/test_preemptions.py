"""Preemption on the database: approval, grace period, requeue, and placing the beneficiary afterwards."""

from datetime import timedelta

import pytest

from allocation.models import Allocation, ReservationStatus
from allocation.services import ReservationSpec, reservation_create
from marketplace.exceptions import InvalidRequest, InvalidTransition
from scheduler.cycle import scheduling_cycle
from scheduler.models import Decision, Preemption, Workload
from scheduler.preemptions import preemption_approve, preemption_reject, preemptions_finish

from ..conftest import NOW, hours
from ..factories import UserFactory

pytestmark = pytest.mark.django_db
MINUTE = timedelta(minutes=1)


def spec(**overrides) -> ReservationSpec:
    values = dict(gpu_count=2, gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024,
                  start_at=NOW, end_at=NOW + hours(4))
    values.update(overrides)
    return ReservationSpec(**values)


@pytest.fixture
def admin(db):
    return UserFactory(username="ops", is_staff=True)


@pytest.fixture
def victim(other_customer, t4_node):
    return reservation_create(customer=other_customer, spec=spec(priority_class="low", interruptible=True), now=NOW)


def queue_request(customer, priority_class: str):
    return reservation_create(customer=customer, now=NOW + MINUTE,
                              spec=spec(priority_class=priority_class, queue_if_unavailable=True, start_at=NOW + MINUTE,
                                        end_at=NOW + MINUTE + hours(1)))


def test_high_priority_preemption_waits_for_approval_then_requeues_the_victim(customer, victim, admin):
    beneficiary = queue_request(customer, "high")

    scheduling_cycle(now=NOW + MINUTE)
    preemption = Preemption.objects.get()
    assert preemption.status == Preemption.Status.PENDING_APPROVAL
    assert [v.reservation_id for v in preemption.victims.all()] == [victim.pk]
    assert "priority 100" in preemption.explanation

    preemption_approve(preemption_id=preemption.pk, actor=admin, now=NOW + 2 * MINUTE)
    preemption.refresh_from_db()
    assert preemption.status == Preemption.Status.GRACE
    assert preemption.grace_ends_at == NOW + 2 * MINUTE + timedelta(seconds=60)

    assert preemptions_finish(now=NOW + 2 * MINUTE + timedelta(seconds=59)) == 0
    assert preemptions_finish(now=NOW + 4 * MINUTE) == 1
    assert preemptions_finish(now=NOW + 4 * MINUTE) == 0
    victim.refresh_from_db()
    assert victim.status == ReservationStatus.PREEMPTED
    copy = Workload.objects.get(requeued_from=victim)
    assert copy.reservation.status == ReservationStatus.QUEUED
    assert copy.duration_seconds == 4 * 3600

    scheduling_cycle(now=NOW + 4 * MINUTE)
    beneficiary.refresh_from_db()
    assert beneficiary.status == ReservationStatus.ACTIVE
    assert Allocation.objects.get(reservation=beneficiary).start_at == NOW + 4 * MINUTE
    kinds = set(Decision.objects.filter(reservation=beneficiary).values_list("kind", flat=True))
    assert {Decision.Kind.PREEMPTION_PROPOSED, Decision.Kind.PLACED} <= kinds


def test_standard_priority_preempts_at_once(customer, victim):
    queue_request(customer, "standard")

    scheduling_cycle(now=NOW + MINUTE)

    assert Preemption.objects.get().status == Preemption.Status.GRACE


def test_rejected_preemption_keeps_the_victim_running(customer, victim, admin):
    queue_request(customer, "high")
    scheduling_cycle(now=NOW + MINUTE)
    preemption = Preemption.objects.get()

    with pytest.raises(InvalidRequest):
        preemption_reject(preemption_id=preemption.pk, actor=admin, reason="  ")
    preemption_reject(preemption_id=preemption.pk, actor=admin, reason="Customer asked to wait.")

    victim.refresh_from_db()
    assert victim.status == ReservationStatus.ACTIVE
    with pytest.raises(InvalidTransition):
        preemption_approve(preemption_id=preemption.pk, actor=admin)


def test_open_preemption_is_not_proposed_twice(customer, victim):
    queue_request(customer, "high")

    scheduling_cycle(now=NOW + MINUTE)
    scheduling_cycle(now=NOW + 2 * MINUTE)

    assert Preemption.objects.count() == 1


def test_equal_priority_never_preempts(customer, other_customer, t4_node):
    reservation_create(customer=other_customer, spec=spec(priority_class="standard", interruptible=True), now=NOW)
    queue_request(customer, "standard")

    scheduling_cycle(now=NOW + hours(1))

    assert not Preemption.objects.exists()


def test_guaranteed_work_within_quota_is_never_preempted(customer, other_customer, t4_node):
    reservation_create(customer=other_customer, spec=spec(priority_class="low"), now=NOW)
    queue_request(customer, "high")

    scheduling_cycle(now=NOW + MINUTE)

    assert not Preemption.objects.exists()


def test_preemption_closes_when_its_beneficiary_stops_waiting(customer, victim, admin):
    beneficiary = queue_request(customer, "high")
    scheduling_cycle(now=NOW + MINUTE)

    from allocation.services import reservation_cancel

    reservation_cancel(reservation_id=beneficiary.pk, now=NOW + 2 * MINUTE)
    scheduling_cycle(now=NOW + 2 * MINUTE)

    assert Preemption.objects.get().status == Preemption.Status.OBSOLETE
    with pytest.raises(InvalidTransition):
        preemption_approve(preemption_id=Preemption.objects.get().pk, actor=admin)


def test_finish_closes_preemption_of_cancelled_beneficiary(customer, victim):
    from allocation.services import reservation_cancel

    beneficiary = queue_request(customer, "standard")
    scheduling_cycle(now=NOW + MINUTE)
    reservation_cancel(reservation_id=beneficiary.pk, now=NOW + 2 * MINUTE)

    assert preemptions_finish(now=NOW + hours(1)) == 0

    victim.refresh_from_db()
    assert victim.status == ReservationStatus.ACTIVE
    assert Preemption.objects.get().status == Preemption.Status.OBSOLETE
    assert not Workload.objects.filter(requeued_from=victim).exists()


def test_victim_whose_window_ends_in_grace_completes_instead(customer, other_customer, t4_node, admin):
    short = reservation_create(customer=other_customer, now=NOW,
                               spec=spec(priority_class="low", interruptible=True, end_at=NOW + MINUTE * 10))
    queue_request(customer, "high")
    scheduling_cycle(now=NOW + MINUTE)
    preemption = Preemption.objects.get()
    preemption_approve(preemption_id=preemption.pk, actor=admin, now=NOW + 9 * MINUTE)

    preemptions_finish(now=NOW + 11 * MINUTE)

    short.refresh_from_db()
    assert short.status == ReservationStatus.ACTIVE
    assert not Workload.objects.filter(requeued_from=short).exists()
    assert "ended during the grace period" in preemption.victims.get().outcome


def test_work_ending_within_its_grace_is_not_chosen(customer, other_customer, t4_node):
    reservation_create(customer=other_customer, now=NOW,
                       spec=spec(priority_class="low", interruptible=True, end_at=NOW + MINUTE + timedelta(seconds=30)))
    queue_request(customer, "standard")

    scheduling_cycle(now=NOW + MINUTE)

    assert not Preemption.objects.exists()


def test_customer_decisions_name_no_other_reservation(customer, victim):
    beneficiary = queue_request(customer, "standard")

    scheduling_cycle(now=NOW + MINUTE)

    for decision in Decision.objects.filter(reservation=beneficiary):
        assert f"reservation {victim.pk}" not in decision.reason
        assert "victims" not in decision.detail
    for decision in Decision.objects.filter(reservation=victim):
        assert f"reservation {beneficiary.pk}" not in decision.reason
