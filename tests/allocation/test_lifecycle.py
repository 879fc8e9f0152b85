"""The reservation state machine and the periodic advance of windows."""

import pytest

from allocation.lifecycle import ALLOWED_TRANSITIONS, TERMINAL_STATUSES, can_transition
from allocation.models import ReservationEvent, ReservationStatus
from allocation.services import ReservationSpec, reservation_create, reservation_transition, reservations_advance
from marketplace.exceptions import InvalidTransition

from ..conftest import NOW, hours


def test_terminal_statuses_have_no_exit():
    assert TERMINAL_STATUSES == {"completed", "cancelled", "failed", "rejected", "expired", "preempted"}
    for status in TERMINAL_STATUSES:
        assert ALLOWED_TRANSITIONS[status] == frozenset()


def test_active_cannot_return_to_scheduled():
    assert not can_transition(ReservationStatus.ACTIVE, ReservationStatus.SCHEDULED)


def test_every_status_is_in_the_table():
    assert set(ALLOWED_TRANSITIONS) == set(ReservationStatus.values)


@pytest.mark.django_db
def test_transition_outside_table_raises(customer, t4_node):
    reservation = reservation_create(
        customer=customer, now=NOW,
        spec=ReservationSpec(gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=1, memory_mib=1,
                             start_at=NOW, end_at=NOW + hours(1)),
    )

    with pytest.raises(InvalidTransition):
        reservation_transition(reservation=reservation, to_status=ReservationStatus.PENDING, now=NOW)


@pytest.mark.django_db
def test_advance_starts_then_completes(customer, t4_node):
    reservation = reservation_create(
        customer=customer, now=NOW,
        spec=ReservationSpec(gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=1, memory_mib=1,
                             start_at=NOW + hours(1), end_at=NOW + hours(2)),
    )

    started = reservations_advance(now=NOW + hours(1))
    reservation.refresh_from_db()
    assert started == {"active": 1, "completed": 0}
    assert reservation.status == ReservationStatus.ACTIVE

    completed = reservations_advance(now=NOW + hours(2))
    again = reservations_advance(now=NOW + hours(2))
    reservation.refresh_from_db()
    assert completed == {"active": 0, "completed": 1}
    assert again == {"active": 0, "completed": 0}
    assert reservation.status == ReservationStatus.COMPLETED
    assert list(ReservationEvent.objects.filter(reservation=reservation).values_list("to_status", flat=True)) == [
        "pending", "scheduled", "active", "completed",
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("final_status", ["cancelled", "failed", "preempted"])
def test_every_early_end_releases_capacity(customer, t4_node, final_status):
    from allocation.models import Allocation

    reservation = reservation_create(
        customer=customer, now=NOW,
        spec=ReservationSpec(gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=1, memory_mib=1,
                             start_at=NOW, end_at=NOW + hours(4)),
    )

    reservation_transition(reservation=reservation, to_status=final_status, now=NOW + hours(1))

    allocation = Allocation.objects.get(reservation=reservation)
    assert allocation.end_at == NOW + hours(1)
    assert allocation.released_at == NOW + hours(1)
