"""Metering: usage from agent reports priced in Decimal, invoices and earnings, reconciled to the cent."""

from datetime import timedelta
from decimal import Decimal

import pytest

from allocation.models import Allocation
from allocation.pricing import estimated_cost
from allocation.services import ReservationSpec, reservation_create
from providers.metering import earnings, invoice, open_assignments_close, usage_amount
from providers.models import UsageEntry
from scheduler.agents import agent_assignments, agent_report

from ..conftest import NOW
from ..factories import NodeFactory, gpu_model

pytestmark = pytest.mark.django_db


def run(customer, node, *, hours: float, gpus: int = 1, milli: int = 1000, cpu: int = 0, exit_after: float | None = None):
    """Book a window starting NOW, start it through the agent, and report its exit ``exit_after`` hours in."""
    reservation = reservation_create(customer=customer, now=NOW, spec=ReservationSpec(
        gpu_count=gpus, gpu_milli_per_gpu=milli, cpu_millicores=cpu, memory_mib=0, start_at=NOW,
        end_at=NOW + timedelta(hours=hours)))
    [assignment] = [a for a in agent_assignments(node=node, now=NOW + timedelta(minutes=1))
                    if a.reservation_id == reservation.pk]
    agent_report(node=node, assignment_id=assignment.pk, state="started", now=NOW)
    if exit_after is not None:
        agent_report(node=node, assignment_id=assignment.pk, state="exited", exit_code=0,
                     now=NOW + timedelta(hours=exit_after))
    return reservation


@pytest.fixture
def priced_node(region):
    return NodeFactory(hostname="v100-x", gpu_model=gpu_model("V100M32"), gpu_count=8, region=region,
                       price_per_gpu_hour=Decimal("2.9713"), cpu_millicores=96000)


def test_usage_amount_is_exact_decimal():
    amount = usage_amount(price_per_gpu_hour=Decimal("2.9713"), billed_gpu_milli=3333, seconds=4567)

    assert amount == Decimal("12.563491")


def test_ledger_reconciles_with_allocations_to_the_cent(customer, priced_node):
    shapes = [dict(hours=1, gpus=1), dict(hours=2.5, gpus=2, milli=700), dict(hours=0.75, gpus=3, cpu=48000),
              dict(hours=5, gpus=1, milli=333)]
    reservations = [run(customer, priced_node, exit_after=shape["hours"], **shape) for shape in shapes]

    entries = {entry.reservation_id: entry for entry in UsageEntry.objects.all()}
    assert len(entries) == len(reservations)
    expected_total = Decimal(0)
    for reservation in reservations:
        allocation = Allocation.objects.get(reservation=reservation)
        booked = estimated_cost(price_per_gpu_hour=allocation.price_per_gpu_hour,
                                billed_milli=allocation.billed_gpu_milli, start_at=allocation.start_at,
                                end_at=allocation.end_at)
        assert entries[reservation.pk].amount.quantize(Decimal("0.01")) == booked
        expected_total += entries[reservation.pk].amount

    bill = invoice(customer_id=customer.pk, start=NOW, end=NOW + timedelta(days=1))
    assert bill.total == expected_total.quantize(Decimal("0.01"))
    assert bill.entries == 4
    paid = earnings(provider_id=priced_node.provider_id, start=NOW, end=NOW + timedelta(days=1))
    assert paid.total == (expected_total * Decimal("0.9")).quantize(Decimal("0.01"))


def test_early_exit_bills_only_the_time_run(customer, priced_node):
    reservation = run(customer, priced_node, hours=4, exit_after=1.5)

    entry = UsageEntry.objects.get(reservation=reservation)

    assert entry.stopped_at - entry.started_at == timedelta(hours=1.5)
    assert entry.gpu_milli_seconds == 1000 * 5400
    assert entry.amount == Decimal("4.456950")


def test_repeated_exit_report_meters_once(customer, priced_node):
    reservation = run(customer, priced_node, hours=1, exit_after=1)
    assignment = reservation.assignments.get()

    agent_report(node=priced_node, assignment_id=assignment.pk, state="exited", exit_code=0, now=NOW + timedelta(hours=2))

    assert UsageEntry.objects.filter(reservation=reservation).count() == 1


def test_work_without_a_stop_report_is_closed_at_the_window_end(customer, priced_node):
    from allocation.services import reservations_advance

    reservation = run(customer, priced_node, hours=2)
    reservations_advance(now=NOW + timedelta(hours=3))

    assert open_assignments_close(now=NOW + timedelta(hours=3)) == 1
    assert open_assignments_close(now=NOW + timedelta(hours=3)) == 0

    entry = UsageEntry.objects.get(reservation=reservation)
    assert entry.stopped_at == NOW + timedelta(hours=2)


def test_customer_reads_the_monthly_invoice(api, customer, priced_node):
    run(customer, priced_node, hours=2, exit_after=2)

    body = api.get(f"/api/v1/invoices/?month={NOW:%Y-%m}").json()

    assert body["total"] == "5.94"
    assert body["entries"] == 1
    assert body["gpu_hours"] == "2.000000"
    assert api.get("/api/v1/invoices/?month=June").status_code == 400
    assert api.get("/api/v1/invoices/?monthly=1").status_code == 400


@pytest.mark.parametrize("query", ["month=9999-12", "month=2026-1", "month=2026-05&month=2026-06"])
def test_invoice_month_must_be_one_valid_month(api, query):
    assert api.get(f"/api/v1/invoices/?{query}").status_code == 400
