"""A requeued copy after a preemption: it waits with an estimate, runs once the beneficiary finished, at its price."""

from datetime import timedelta

import pytest

from allocation.models import Allocation, ReservationStatus
from allocation.services import ReservationSpec, reservation_create
from providers.models import UsageEntry
from scheduler.agents import agent_assignments, agent_report
from scheduler.cycle import scheduling_cycle
from scheduler.models import Workload
from scheduler.preemptions import preemptions_finish

from ..conftest import NOW, hours

pytestmark = pytest.mark.django_db
MINUTE = timedelta(minutes=1)


def spec(**overrides):
    values = dict(gpu_count=2, gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024,
                  start_at=NOW, end_at=NOW + hours(4))
    values.update(overrides)
    return ReservationSpec(**values)


def run(node, reservation, at):
    [assignment] = [a for a in agent_assignments(node=node, now=at) if a.reservation_id == reservation.pk]
    agent_report(node=node, assignment_id=assignment.pk, state="started", now=at)
    return assignment


def test_requeued_copy_waits_then_runs_at_its_price(customer, other_customer, t4_node):
    victim = reservation_create(customer=other_customer, now=NOW, spec=spec(priority_class="low", interruptible=True))
    victim_price = Allocation.objects.get(reservation=victim).price_per_gpu_hour
    old = run(t4_node, victim, NOW)
    beneficiary = reservation_create(customer=customer, now=NOW + MINUTE, spec=spec(
        priority_class="standard", queue_if_unavailable=True, start_at=NOW + MINUTE, end_at=NOW + MINUTE + hours(1)))
    scheduling_cycle(now=NOW + MINUTE)
    assert preemptions_finish(now=NOW + 3 * MINUTE) == 1
    agent_report(node=t4_node, assignment_id=old.pk, state="exited", exit_code=143, now=NOW + 4 * MINUTE)
    copy = Workload.objects.get(requeued_from=victim).reservation

    scheduling_cycle(now=NOW + 4 * MINUTE)
    beneficiary.refresh_from_db()
    copy.refresh_from_db()
    assert beneficiary.status == ReservationStatus.ACTIVE
    assert copy.status == ReservationStatus.QUEUED
    workload = Workload.objects.get(pk=copy.pk)
    estimate_missing = workload.estimated_start_at is None

    new = run(t4_node, beneficiary, NOW + 5 * MINUTE)
    agent_report(node=t4_node, assignment_id=new.pk, state="exited", exit_code=0, now=NOW + 30 * MINUTE)
    scheduling_cycle(now=NOW + 31 * MINUTE)
    copy.refresh_from_db()
    assert copy.status == ReservationStatus.ACTIVE
    copy_allocation = Allocation.objects.get(reservation=copy)
    assert copy_allocation.price_per_gpu_hour == victim_price
    [victim_entry] = UsageEntry.objects.filter(reservation=victim)
    assert victim_entry.stopped_at == NOW + 3 * MINUTE
    # The beneficiary was placed in the same cycle for one hour on the only node: the copy should wait for that.
    assert not estimate_missing, f"the copy has no estimated start: {workload.waiting_reason}"
