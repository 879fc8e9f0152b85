"""The scheduling cycle on the database: queueing, placement, expiry, crash safety and the cycle lock."""

from datetime import timedelta

import psycopg
import pytest
from django.db import connection

from allocation.models import Allocation, Reservation, ReservationStatus
from allocation.services import ReservationSpec, reservation_cancel, reservation_create
from marketplace.exceptions import InvalidRequest
from scheduler import cycle as cycle_module
from scheduler.cycle import CYCLE_LOCK_KEY, scheduling_cycle
from scheduler.models import Decision, SchedulingCycle

from ..conftest import NOW, hours

pytestmark = pytest.mark.django_db


def spec(**overrides) -> ReservationSpec:
    values = dict(gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024,
                  start_at=NOW, end_at=NOW + hours(2))
    values.update(overrides)
    return ReservationSpec(**values)


def test_queued_request_waits_then_starts_when_capacity_frees(customer, other_customer, t4_node):
    blocker = reservation_create(customer=other_customer, spec=spec(gpu_count=2), now=NOW)
    queued = reservation_create(customer=customer, spec=spec(queue_if_unavailable=True), now=NOW)
    assert queued.status == ReservationStatus.QUEUED

    scheduling_cycle(now=NOW)
    queued.workload.refresh_from_db()
    assert queued.workload.position == 1
    assert queued.workload.waiting_reason_code == "no_capacity"
    assert queued.workload.estimated_start_at == NOW + hours(2)

    reservation_cancel(reservation_id=blocker.pk, now=NOW + hours(0.5))
    record = scheduling_cycle(now=NOW + hours(0.5))

    queued.refresh_from_db()
    assert queued.status == ReservationStatus.ACTIVE
    allocation = Allocation.objects.get(reservation=queued)
    assert (allocation.start_at, allocation.end_at) == (NOW + hours(0.5), NOW + hours(2.5))
    assert record.placed == 1
    kinds = list(Decision.objects.filter(reservation=queued).order_by("at", "id").values_list("kind", flat=True))
    assert kinds == [Decision.Kind.WAITING, Decision.Kind.PLACED]


def test_request_without_queueing_is_still_rejected(customer, other_customer, t4_node):
    reservation_create(customer=other_customer, spec=spec(gpu_count=2), now=NOW)

    rejected = reservation_create(customer=customer, spec=spec(), now=NOW)

    assert rejected.status == ReservationStatus.REJECTED


def test_request_that_no_node_can_hold_is_rejected_not_queued(customer, t4_node):
    rejected = reservation_create(customer=customer, spec=spec(gpu_count=8, queue_if_unavailable=True), now=NOW)

    assert rejected.status == ReservationStatus.REJECTED
    assert rejected.reason_code == "no_matching_node"


def test_queued_request_expires_after_its_latest_start(customer, other_customer, t4_node):
    reservation_create(customer=other_customer, spec=spec(gpu_count=2, end_at=NOW + hours(10)), now=NOW)
    queued = reservation_create(customer=customer, spec=spec(queue_if_unavailable=True,
                                                             latest_start_at=NOW + hours(1)), now=NOW)

    scheduling_cycle(now=NOW + hours(1))

    queued.refresh_from_db()
    assert queued.status == ReservationStatus.EXPIRED
    assert Decision.objects.filter(reservation=queued, kind=Decision.Kind.EXPIRED).exists()


@pytest.mark.parametrize("terms, field", [
    (dict(priority_class="urgent"), "priority_class"),
    (dict(queue="nowhere"), "queue"),
    (dict(latest_start_at=NOW + hours(1)), "latest_start_at"),
    (dict(queue_if_unavailable=True, latest_start_at=NOW - hours(1)), "latest_start_at"),
])
def test_bad_scheduling_terms_name_the_field_and_write_nothing(customer, t4_node, terms, field):
    with pytest.raises(InvalidRequest) as raised:
        reservation_create(customer=customer, spec=spec(**terms), now=NOW)

    assert [problem.field for problem in raised.value.errors] == [field]
    assert not Reservation.objects.exists()


def test_cycle_that_crashes_midway_places_nothing(customer, other_customer, t4_node, monkeypatch):
    blocker = reservation_create(customer=other_customer, spec=spec(gpu_count=2), now=NOW)
    first = reservation_create(customer=customer, spec=spec(queue_if_unavailable=True), now=NOW)
    second = reservation_create(customer=customer, spec=spec(queue_if_unavailable=True), now=NOW)
    reservation_cancel(reservation_id=blocker.pk, now=NOW)
    real = cycle_module.reservation_place_queued
    calls = []

    def crash_on_second(**kwargs):
        calls.append(kwargs["reservation"].pk)
        if len(calls) == 2:
            raise RuntimeError("worker lost mid-cycle")
        return real(**kwargs)

    monkeypatch.setattr(cycle_module, "reservation_place_queued", crash_on_second)
    with pytest.raises(RuntimeError):
        scheduling_cycle(now=NOW + timedelta(minutes=1))

    assert len(calls) == 2
    assert set(Reservation.objects.filter(pk__in=[first.pk, second.pk]).values_list("status", flat=True)) == {
        ReservationStatus.QUEUED}
    assert not Allocation.objects.filter(reservation__in=[first, second]).exists()
    assert not SchedulingCycle.objects.exists()


def test_second_cycle_does_nothing_while_one_holds_the_lock(require_postgres, customer, other_customer, t4_node):
    reservation_create(customer=other_customer, spec=spec(gpu_count=2), now=NOW)
    reservation_create(customer=customer, spec=spec(queue_if_unavailable=True), now=NOW)
    settings = connection.settings_dict
    with psycopg.connect(dbname=settings["NAME"], host=settings["HOST"] or None, port=settings["PORT"] or None,
                         user=settings["USER"] or None, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [CYCLE_LOCK_KEY])

        assert scheduling_cycle(now=NOW) is None

        # Closing a connection frees its locks only when the server has ended the session; unlock first.
        other.execute("SELECT pg_advisory_unlock(%s)", [CYCLE_LOCK_KEY])

    assert scheduling_cycle(now=NOW) is not None


def test_interruptible_reservations_pay_less(customer, t4_node, settings):
    settings.MARKETPLACE = {**settings.MARKETPLACE, "INTERRUPTIBLE_PRICE_FACTOR": 0.6}

    reservation = reservation_create(customer=customer, spec=spec(interruptible=True), now=NOW)

    assert str(reservation.allocation.price_per_gpu_hour) == "0.6000"


def test_cycle_records_its_batch_optimizer_runs(customer, other_customer, t4_node):
    from allocation.models import SolverRun

    blocker = reservation_create(customer=other_customer, spec=spec(gpu_count=2), now=NOW)
    for _ in range(3):
        reservation_create(customer=customer, spec=spec(queue_if_unavailable=True), now=NOW)
    reservation_cancel(reservation_id=blocker.pk, now=NOW)

    record = scheduling_cycle(now=NOW)

    assert record.placed == 2
    run = SolverRun.objects.get(kind=SolverRun.Kind.BATCH)
    assert run.policy == "cp_sat/scheduler_cycle"
    assert run.requests == 3
    assert run.detail["cycle_id"] == record.pk
    assert run.detail["used"] is False


def test_quote_shows_the_interruptible_price(customer, t4_node, settings):
    from allocation.quoting import reservation_quote

    settings.MARKETPLACE = {**settings.MARKETPLACE, "INTERRUPTIBLE_PRICE_FACTOR": 0.6}

    quote = reservation_quote(customer=customer, spec=spec(interruptible=True), now=NOW)

    assert str(quote.price_per_gpu_hour) == "0.6000"


def test_queued_request_stays_in_its_region(customer, other_customer, t4_node):
    from ..factories import NodeFactory, RegionFactory, gpu_model

    elsewhere = NodeFactory(hostname="t4-far", gpu_model=gpu_model("T4"), gpu_count=2,
                            region=RegionFactory(code="us-east", name="US East"))
    blocker = reservation_create(customer=other_customer, spec=spec(gpu_count=2, region="eu-central"), now=NOW)
    queued = reservation_create(customer=customer, spec=spec(region="eu-central", queue_if_unavailable=True), now=NOW)
    assert queued.status == ReservationStatus.QUEUED

    scheduling_cycle(now=NOW)
    queued.workload.refresh_from_db()
    assert queued.workload.waiting_reason_code == "no_capacity"
    assert queued.workload.estimated_start_at == NOW + hours(2)
    assert not Allocation.objects.filter(node=elsewhere).exists()

    reservation_cancel(reservation_id=blocker.pk, now=NOW + hours(1))
    scheduling_cycle(now=NOW + hours(1))
    queued.refresh_from_db()
    assert queued.status == ReservationStatus.ACTIVE
    assert queued.allocation.node == t4_node


def test_repeated_cycles_add_no_duplicate_decisions(customer, other_customer, t4_node):
    reservation_create(customer=other_customer, spec=spec(gpu_count=2), now=NOW)
    queued = reservation_create(customer=customer, spec=spec(queue_if_unavailable=True), now=NOW)

    for minute in range(3):
        scheduling_cycle(now=NOW + timedelta(minutes=minute))

    assert Decision.objects.filter(reservation=queued).count() == 1
