"""The capacity ledger follows committed changes through PostgreSQL's change feed, in any commit order."""

import logging
import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from allocation.ledger_sync import capacity_changes_purge, ledger_for_window, ledger_reset, micros
from allocation.models import Allocation, GpuShare
from allocation.services import ReservationSpec, release_allocation, reservation_create
from marketplace.models import Gpu, MaintenanceWindow, Node

from ..conftest import NOW, hours
from ..factories import NodeFactory, gpu_model

pytestmark = pytest.mark.usefixtures("require_postgres")


def spec(external_ref: str = "", **overrides) -> ReservationSpec:
    values = dict(gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024, start_at=NOW,
                  end_at=NOW + hours(2), external_ref=external_ref)
    values.update(overrides)
    return ReservationSpec(**values)


def in_other_connection(function):
    """Run ``function`` in a thread with its own database connection; return what it returned."""
    results = []

    def run():
        try:
            results.append(function())
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    return results[0]


def booked_ids(ledger) -> set[int]:
    return {booking.id for booking in ledger.bookings_in(micros(NOW - hours(1)), micros(NOW + hours(48)))}


@pytest.mark.django_db(transaction=True)
def test_ledger_reads_other_commits(customer, t4_node):
    ledger = ledger_for_window(NOW)
    assert booked_ids(ledger) == set()

    reservation = in_other_connection(lambda: reservation_create(customer=customer, spec=spec("a"), now=NOW))
    allocation = Allocation.objects.get(reservation_id=reservation.pk)

    assert booked_ids(ledger_for_window(NOW)) == {allocation.pk}
    booking = ledger.bookings[allocation.pk]
    assert (booking.node_id, booking.start, booking.end) == (t4_node.pk, micros(NOW), micros(NOW + hours(2)))
    assert [share[0] for share in booking.shares] == list(allocation.shares.values_list("gpu_id", flat=True))

    in_other_connection(lambda: release_allocation(reservation, now=NOW + hours(1)))
    assert ledger_for_window(NOW).bookings[allocation.pk].end == micros(NOW + hours(1))

    in_other_connection(lambda: Allocation.objects.filter(pk=allocation.pk).delete())
    assert booked_ids(ledger_for_window(NOW)) == set()


@pytest.mark.django_db(transaction=True)
def test_feed_reads_late_commit(customer, other_customer, region):
    # Two models, so that the fast request does not wait for the slow one's node lock.
    NodeFactory(hostname="slow", gpu_model=gpu_model("T4"), gpu_count=1, region=region)
    NodeFactory(hostname="fast", gpu_model=gpu_model("A10"), gpu_count=1, region=region)
    ledger = ledger_for_window(NOW)
    slow_wrote, fast_committed = threading.Event(), threading.Event()

    def slow():
        # Holds its transaction open across the ledger's next read, then commits.
        with transaction.atomic():
            reservation_create(customer=customer, spec=spec("slow", gpu_models=["T4"]), now=NOW)
            slow_wrote.set()
            fast_committed.wait(timeout=10)
            assert ledger_read_between.wait(timeout=10)
        connection.close()

    ledger_read_between = threading.Event()
    thread = threading.Thread(target=slow)
    thread.start()
    assert slow_wrote.wait(timeout=10)
    in_other_connection(
        lambda: reservation_create(customer=other_customer, spec=spec("fast", gpu_models=["A10"]), now=NOW))
    fast_committed.set()

    seen_between = booked_ids(ledger_for_window(NOW))
    ledger_read_between.set()
    thread.join(timeout=30)

    assert seen_between == set(Allocation.objects.filter(reservation__external_ref="fast").values_list("pk", flat=True))
    assert booked_ids(ledger_for_window(NOW)) == set(Allocation.objects.values_list("pk", flat=True))
    assert len(booked_ids(ledger)) == 2


@pytest.mark.django_db(transaction=True)
def test_ledger_node_changes_not_heartbeats(customer, t4_node):
    ledger = ledger_for_window(NOW)
    gpu = Gpu.objects.filter(node=t4_node).order_by("index").first()
    changes_before = change_rows()

    Node.objects.filter(pk=t4_node.pk).update(allocation_version=7)
    Gpu.objects.filter(pk=gpu.pk).update(share_version=9, health_score=50.0)
    assert change_rows() == changes_before

    Gpu.objects.filter(pk=gpu.pk).update(health=Gpu.Health.FAILED)
    MaintenanceWindow.objects.create(node=t4_node, start_at=NOW + hours(5), end_at=NOW + hours(6))
    Node.objects.filter(pk=t4_node.pk).update(status=Node.Status.DRAINING, price_per_gpu_hour="9.5000")

    node = ledger_for_window(NOW).nodes[t4_node.pk]
    assert not node.active
    assert gpu.pk not in node.healthy_gpu_ids
    assert len(node.healthy_gpu_ids) == 1
    assert node.in_maintenance(micros(NOW + hours(5)), micros(NOW + hours(7)))
    assert str(node.price_per_gpu_hour) == "9.5000"
    assert ledger is ledger_for_window(NOW)


def consume_a_transaction_id() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_xact_id()")


def change_rows() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM allocation_capacity_change")
        return cursor.fetchone()[0]


def test_feed_row_per_share_statement(customer, region):
    NodeFactory(hostname="eight", gpu_count=8, region=region)
    before = change_rows()

    reservation_create(customer=customer, spec=spec("eight", gpu_count=8), now=NOW)

    assert GpuShare.objects.count() == 8
    assert change_rows() - before == 2  # The allocation's insert and its shares' insert.


def test_ledger_reads_own_writes(customer, t4_node, caplog):
    # A test's transaction never commits: the ledger reads its rows as its own transaction's. A later
    # transaction that completes first puts the test's own id below the snapshot's horizon.
    in_other_connection(consume_a_transaction_id)
    first = reservation_create(customer=customer, spec=spec("first"), now=NOW)  # Loads the ledger.
    second = reservation_create(customer=customer, spec=spec("second"), now=NOW)  # Reads the feed.
    with caplog.at_level(logging.INFO, logger="allocation"):
        third = reservation_create(customer=customer, spec=spec("third"), now=NOW)

    assert first.status == second.status == "active"
    assert third.reason_code == "no_capacity"
    assert "lost a race" not in caplog.text
    assert "full path" not in caplog.text


def test_window_before_horizon_reads_database(customer, t4_node, settings):
    settings.MARKETPLACE = {**settings.MARKETPLACE, "CAPACITY_LEDGER_LOOKBACK_SECONDS": 3600}
    ledger_reset()

    assert ledger_for_window(timezone.now() - timedelta(hours=2)) is None
    assert ledger_for_window(timezone.now()) is not None


def test_ledger_switched_off(settings):
    settings.MARKETPLACE = {**settings.MARKETPLACE, "CAPACITY_LEDGER": False}

    assert ledger_for_window(NOW) is None


def change_txids() -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT txid::text::bigint FROM allocation_capacity_change")
        return {row[0] for row in cursor.fetchall()}


def age_purge_marks(minutes: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("UPDATE allocation_capacity_purge_mark SET taken_at = now() - make_interval(mins => %s)",
                       [minutes])


@pytest.mark.django_db(transaction=True)
def test_purge_deletes_old_completed_rows(customer, t4_node):
    reservation_create(customer=customer, spec=spec("before-mark"), now=NOW)
    before_mark, rows_before_mark = change_txids(), change_rows()
    assert capacity_changes_purge() == 0  # The first purge only leaves a mark.
    reservation_create(customer=customer, spec=spec("after-mark"), now=NOW)

    age_purge_marks(29)
    assert capacity_changes_purge() == 0  # The mark is younger than the retention.
    age_purge_marks(31)

    assert capacity_changes_purge() == rows_before_mark  # The node's, its GPUs' and the first reservation's.
    assert change_txids().isdisjoint(before_mark)
    assert change_rows() == 2  # The second reservation's allocation and shares.


@pytest.mark.django_db(transaction=True)
def test_purge_keeps_long_transaction_rows(customer, region):
    NodeFactory(hostname="only", gpu_count=1, region=region)
    booked = in_other_connection(lambda: reservation_create(customer=customer, spec=spec("booked"), now=NOW))
    capacity_changes_purge()  # An old mark, taken while nothing was running.
    age_purge_marks(60)
    ledger_for_window(NOW)
    released, read_while_open = threading.Event(), threading.Event()

    def release_in_a_long_transaction():
        with transaction.atomic():
            release_allocation(booked, now=NOW)  # Frees the node for the whole window.
            with connection.cursor() as cursor:  # As if it had written them long ago.
                cursor.execute("UPDATE allocation_capacity_change SET recorded_at = now() - interval '2 hours' "
                               "WHERE txid = pg_current_xact_id()")
            released.set()
            read_while_open.wait(timeout=10)
        connection.close()

    thread = threading.Thread(target=release_in_a_long_transaction)
    thread.start()
    assert released.wait(timeout=10)
    ledger_for_window(NOW)  # The long transaction is pending at this read.
    read_while_open.set()
    thread.join(timeout=30)
    in_other_connection(capacity_changes_purge)

    placed = reservation_create(customer=customer, spec=spec("after"), now=NOW)

    assert placed.status == "active"
