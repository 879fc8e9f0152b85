"""Moves, preemptions and metering around agents that report late, nodes lost mid-move and cancelled queued work."""

import uuid
from datetime import timedelta

import pytest

from allocation.models import Allocation, ReservationStatus
from allocation.services import ReservationSpec, quota_set, reservation_cancel, reservation_create
from marketplace.models import Gpu, Node
from providers.metering import open_assignments_close
from providers.models import UsageEntry
from providers.telemetry import node_register
from scheduler.agents import agent_assignments, assignment_action, agent_report
from scheduler.cycle import scheduling_cycle
from scheduler.migrating import migration_advance, migration_plan, node_drain
from scheduler.models import Assignment, Migration, Preemption, PreemptionVictim, PriorityClass, Workload
from scheduler.preemptions import preemptions_finish

from ..conftest import NOW, hours
from ..factories import NodeFactory, gpu_model

MINUTE = timedelta(minutes=1)


def spec(**overrides) -> ReservationSpec:
    values = dict(gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024,
                  start_at=NOW, end_at=NOW + hours(2))
    values.update(overrides)
    return ReservationSpec(**values)


@pytest.fixture
def two_nodes(region):
    return [NodeFactory(hostname=name, gpu_model=gpu_model("T4"), gpu_count=2, region=region) for name in ("a", "b")]


def start_on(node, reservation, at):
    [assignment] = [a for a in agent_assignments(node=node, now=at) if a.reservation_id == reservation.pk]
    agent_report(node=node, assignment_id=assignment.pk, state="started", now=at)
    return assignment


def drain_and_switch(source):
    """Drain ``source`` at 10 minutes and return when its reservation's move switched: at 13 minutes.

    The source's agent gets 120 s to stop, so at 13 minutes that deadline passed and the switch runs.
    """
    node_drain(node_id=source.pk, now=NOW + 10 * MINUTE)
    [migration] = Migration.objects.all()
    migration_advance(migration_id=migration.pk, now=NOW + 10 * MINUTE)
    assert migration_advance(migration_id=migration.pk, now=NOW + 13 * MINUTE).status == Migration.Status.DONE
    return NOW + 13 * MINUTE


@pytest.mark.django_db
def test_late_source_stop_is_billed_to_switch(customer, two_nodes):
    """A source agent's late stop report is metered only up to the switch, not to the report."""
    source, target = two_nodes
    reservation = reservation_create(customer=customer, spec=spec(), now=NOW)
    assert reservation.allocation.node == source
    old = start_on(source, reservation, NOW + MINUTE)

    switched_at = drain_and_switch(source)

    new = start_on(target, reservation, NOW + 14 * MINUTE)
    agent_report(node=target, assignment_id=new.pk, state="exited", exit_code=0, now=NOW + 30 * MINUTE)
    # The source's agent was unreachable and reports its stop hours later.
    agent_report(node=source, assignment_id=old.pk, state="exited", exit_code=143, now=NOW + hours(5))

    source_entry = UsageEntry.objects.get(assignment=old)
    assert source_entry.stopped_at <= switched_at, (
        f"the source is billed until {source_entry.stopped_at}, after the switch at {switched_at} and after the "
        f"reservation's allocation ended at {Allocation.objects.get(reservation=reservation).end_at}")


@pytest.mark.django_db
def test_unreported_source_stop_bills_no_overlap(customer, two_nodes):
    """Closing a source run without a stop report bills none of the time the target ran."""
    source, target = two_nodes
    reservation = reservation_create(customer=customer, spec=spec(), now=NOW)
    start_on(source, reservation, NOW + MINUTE)
    drain_and_switch(source)
    new = start_on(target, reservation, NOW + 14 * MINUTE)
    agent_report(node=target, assignment_id=new.pk, state="exited", exit_code=0, now=NOW + 30 * MINUTE)

    open_assignments_close(now=NOW + 31 * MINUTE)

    entries = sorted(UsageEntry.objects.filter(reservation=reservation), key=lambda entry: entry.started_at)
    assert len(entries) == 2
    assert entries[0].stopped_at <= entries[1].started_at, (
        f"billed twice from {entries[1].started_at} to {entries[0].stopped_at}: "
        f"{[(e.node_id, e.started_at, e.stopped_at) for e in entries]}")


@pytest.mark.django_db
def test_move_to_draining_target_rolls_back(customer, two_nodes):
    source, target = two_nodes
    reservation = reservation_create(customer=customer, spec=spec(), now=NOW)
    node_drain(node_id=source.pk, now=NOW + MINUTE)
    [migration] = Migration.objects.all()
    assert migration.status == Migration.Status.TARGET_RESERVED
    assert migration.to_node_id == target.pk

    node_drain(node_id=target.pk, now=NOW + 2 * MINUTE)  # The target is drained too.
    migration = migration_advance(migration_id=migration.pk, now=NOW + 3 * MINUTE)

    allocation = Allocation.objects.get(reservation=reservation)
    assert allocation.node_id != target.pk, f"migration {migration.status}: the reservation moved onto a draining node"


@pytest.mark.django_db
def test_move_to_retired_gpus_rolls_back(customer, two_nodes):
    source, target = two_nodes
    reservation = reservation_create(customer=customer, spec=spec(), now=NOW)
    node_drain(node_id=source.pk, now=NOW + MINUTE)
    [migration] = Migration.objects.all()
    held_gpus = set(migration.hold.shares.values_list("gpu_id", flat=True))

    # The target's agent registers two other GPUs: both listed ones are retired.
    Gpu.objects.filter(node=target).update(first_reading_at=NOW)
    node_register(node=target, agent_version="t", now=NOW + 2 * MINUTE, inventory={"gpus": [
        {"index": index, "uuid": str(uuid.uuid4()), "model": "Tesla T4", "memory_mib": 15360} for index in range(2)]})
    assert Gpu.objects.filter(pk__in=held_gpus, retired_at__isnull=False).count() == len(held_gpus)

    migration = migration_advance(migration_id=migration.pk, now=NOW + 3 * MINUTE)

    allocation = Allocation.objects.get(reservation=reservation)
    live_gpus = set(allocation.shares.filter(end_at__gt=NOW + 3 * MINUTE).values_list("gpu_id", flat=True))
    assert not live_gpus & held_gpus, (
        f"migration {migration.status}: the reservation now uses retired GPUs {sorted(live_gpus & held_gpus)}")


@pytest.mark.django_db
def test_obsolete_preemption_lets_victim_run(customer, other_customer, t4_node):
    """The victim runs on when its beneficiary is cancelled after the grace period, before preemptions_finish."""
    victim = reservation_create(customer=other_customer, now=NOW,
                                spec=spec(gpu_count=2, end_at=NOW + hours(4), priority_class="low",
                                          interruptible=True))
    start_on(t4_node, victim, NOW)
    beneficiary = reservation_create(customer=customer, now=NOW + MINUTE, spec=spec(
        gpu_count=2, priority_class="standard", queue_if_unavailable=True, start_at=NOW + MINUTE,
        end_at=NOW + MINUTE + hours(1)))
    scheduling_cycle(now=NOW + MINUTE)
    preemption = Preemption.objects.get()
    assert preemption.status == Preemption.Status.GRACE

    reservation_cancel(reservation_id=beneficiary.pk, now=NOW + 5 * MINUTE)
    preemptions_finish(now=NOW + 5 * MINUTE)
    preemption.refresh_from_db()
    victim.refresh_from_db()
    assert preemption.status == Preemption.Status.OBSOLETE
    assert victim.status == ReservationStatus.ACTIVE

    [assignment] = agent_assignments(node=t4_node, now=NOW + 6 * MINUTE)
    assert assignment_action(assignment, NOW + 6 * MINUTE) == "run", (
        f"the victim keeps its reservation but its agent is told to stop by {assignment.stop_by}")


@pytest.mark.django_db
def test_cancelled_reservation_shows_no_queue_place(api, customer, t4_node):
    reservation_create(customer=customer, now=NOW, spec=spec(gpu_count=2, end_at=NOW + hours(4)))
    queued = reservation_create(customer=customer, now=NOW, spec=spec(gpu_count=2, queue_if_unavailable=True))
    scheduling_cycle(now=NOW)
    assert Workload.objects.get(pk=queued.pk).position == 1

    response = api.post(f"/api/v1/reservations/{queued.pk}/cancel/", {}, format="json")
    assert response.status_code == 200
    body = api.get(f"/api/v1/reservations/{queued.pk}/").json()
    assert body["status"] == "cancelled"
    assert body["scheduling"]["queue_position"] is None, body["scheduling"]


@pytest.mark.django_db
def test_move_after_failed_start_rolls_back(customer, region):
    """A migration rolls back when a failed start already moved the reservation to a third node.

    Otherwise the switch moves the allocation off the node where the work now runs, and that node's agent is
    not stopped.
    """
    nodes = [NodeFactory(hostname=name, gpu_model=gpu_model("T4"), gpu_count=2, region=region)
             for name in ("n1", "n2", "n3")]
    reservation = reservation_create(customer=customer, spec=spec(), now=NOW)
    source = reservation.allocation.node
    target, third = [node for node in nodes if node != source]
    [assignment] = agent_assignments(node=source, now=NOW + MINUTE)
    migration = migration_plan(reservation_id=reservation.pk, to_node_id=target.pk, kind=Migration.Kind.DRAIN,
                               reason="test", now=NOW + MINUTE)
    migration = migration_advance(migration_id=migration.pk, now=NOW + MINUTE, max_steps=1)
    assert migration.status == Migration.Status.TARGET_RESERVED
    # The target's other GPU fails, so the failed start can only go to the third node.
    hold_gpus = migration.hold.shares.values_list("gpu_id", flat=True)
    Gpu.objects.filter(node=target).exclude(pk__in=list(hold_gpus)).update(health=Gpu.Health.FAILED)

    agent_report(node=source, assignment_id=assignment.pk, state="failed", message="image pull", now=NOW + 2 * MINUTE)
    moved_to = Allocation.objects.get(reservation=reservation, released_at__isnull=True).node_id
    assert moved_to == third.pk
    running = start_on(third, reservation, NOW + 3 * MINUTE)

    migration = migration_advance(migration_id=migration.pk, now=NOW + 4 * MINUTE)
    allocation = Allocation.objects.get(reservation=reservation, released_at__isnull=True)
    [running] = [a for a in agent_assignments(node=third, now=NOW + 5 * MINUTE) if a.pk == running.pk]
    action = assignment_action(running, NOW + 5 * MINUTE)
    assert allocation.node_id == third.pk, (
        f"migration {migration.status}: the allocation moved to {allocation.node.hostname}, while the agent on "
        f"{third.hostname} is told to {action}")


def assignment_of(node, reservation, at):
    [assignment] = [a for a in agent_assignments(node=node, now=at) if a.reservation_id == reservation.pk]
    return assignment


def started_on_source_after_switch(customer, source, target):
    """Book on ``source``, move the booking to ``target`` at 2 minutes, then run it on both.

    The source's agent got its start action at 1 minute, before the drain, and reports started at 3
    minutes, after the switch. Nothing had started when the drain came, so the switch ran at once.
    The target runs the work from 3 to 60 minutes. Returns the reservation and the source's assignment.
    """
    reservation = reservation_create(customer=customer, spec=spec(), now=NOW)
    assert reservation.allocation.node == source
    late = assignment_of(source, reservation, NOW + MINUTE)
    node_drain(node_id=source.pk, now=NOW + 2 * MINUTE)
    [migration] = Migration.objects.all()
    assert migration_advance(migration_id=migration.pk, now=NOW + 2 * MINUTE).status == Migration.Status.DONE

    agent_report(node=source, assignment_id=late.pk, state="started", now=NOW + 3 * MINUTE)
    new = assignment_of(target, reservation, NOW + 3 * MINUTE)
    agent_report(node=target, assignment_id=new.pk, state="started", now=NOW + 3 * MINUTE)
    agent_report(node=target, assignment_id=new.pk, state="exited", exit_code=0, now=NOW + 60 * MINUTE)
    return reservation, late


def seconds_billed_on(reservation, node) -> float:
    return sum((entry.stopped_at - entry.started_at).total_seconds()
               for entry in UsageEntry.objects.filter(reservation=reservation, node=node))


@pytest.mark.django_db
def test_source_start_after_switch_bills_nothing(customer, two_nodes):
    source, target = two_nodes
    reservation, late = started_on_source_after_switch(customer, source, target)

    # The source's agent is unreachable and reports its stop hours later.
    agent_report(node=source, assignment_id=late.pk, state="exited", exit_code=143, now=NOW + hours(6))

    assert seconds_billed_on(reservation, source) == 0


@pytest.mark.django_db
def test_source_start_after_switch_never_stopped(customer, two_nodes):
    """The source's agent never reports its stop; closing its run bills nothing on the source."""
    source, target = two_nodes
    reservation, _late = started_on_source_after_switch(customer, source, target)

    open_assignments_close(now=NOW + hours(3))

    assert seconds_billed_on(reservation, source) == 0
    assert seconds_billed_on(reservation, target) == 57 * 60


@pytest.mark.django_db
def test_customer_above_lowered_quota_can_still_move(require_postgres, customer, two_nodes):
    """An admin lowers a quota below what the customer holds; a drain still moves its reservation."""
    source, target = two_nodes
    reservation = reservation_create(customer=customer, spec=spec(), now=NOW)
    quota_set(organization=customer, gpu_model=None, max_gpu_milli=0)

    node_drain(node_id=source.pk, now=NOW + MINUTE)
    [migration] = Migration.objects.all()
    migration = migration_advance(migration_id=migration.pk, now=NOW + MINUTE)

    assert migration.status == Migration.Status.DONE, migration.outcome
    assert Allocation.objects.get(reservation=reservation).node_id == target.pk


@pytest.mark.django_db
def test_rolled_back_move_keeps_preemption_stop(customer, other_customer, two_nodes):
    """A victim in its grace period keeps its stop request when a move of it rolls back."""
    source, target = two_nodes
    victim = reservation_create(customer=customer, spec=spec(), now=NOW)
    running = start_on(source, victim, NOW + MINUTE)
    beneficiary = reservation_create(customer=other_customer, spec=spec(), now=NOW)
    preemption = Preemption.objects.create(beneficiary=beneficiary, node=source, status=Preemption.Status.GRACE,
                                           explanation="test", created_at=NOW, grace_ends_at=NOW + 10 * MINUTE)
    PreemptionVictim.objects.create(preemption=preemption, reservation=victim, mode=PriorityClass.Mode.CANCEL)
    stop_by = NOW + 10 * MINUTE
    Assignment.objects.filter(pk=running.pk).update(stop_requested_at=NOW + 2 * MINUTE, stop_by=stop_by)

    migration = migration_plan(reservation_id=victim.pk, to_node_id=target.pk, kind=Migration.Kind.DRAIN,
                               reason="test", now=NOW + 2 * MINUTE)
    migration_advance(migration_id=migration.pk, now=NOW + 2 * MINUTE, max_steps=2)
    Node.objects.filter(pk=target.pk).update(status=Node.Status.DRAINING)
    migration = migration_advance(migration_id=migration.pk, now=NOW + 11 * MINUTE)

    assert migration.status == Migration.Status.ROLLED_BACK
    assert Assignment.objects.get(pk=running.pk).stop_by == stop_by
