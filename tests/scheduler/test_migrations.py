"""Migrations as a state machine: node drains, waiting for the agent, roll back, and crashes between steps."""

import os
import signal
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from allocation.models import Allocation, GpuShare, ReservationStatus
from allocation.services import ReservationSpec, reservation_create
from marketplace.models import Node
from scheduler import migrating
from scheduler.agents import agent_assignments, agent_report
from scheduler.migrating import migration_advance, migration_plan, node_drain
from scheduler.models import Assignment, Decision, Migration
from scheduler.tasks import advance_migration_task

from ..celery_worker import celery_worker, child_pids
from ..factories import NodeFactory, gpu_model


def reserve(customer, **overrides):
    now = timezone.now()
    values = dict(gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024, start_at=now,
                  end_at=now + timedelta(hours=2))
    values.update(overrides)
    return reservation_create(customer=customer, spec=ReservationSpec(**values))


@pytest.fixture
def nodes(region):
    return [NodeFactory(hostname=name, gpu_model=gpu_model("T4"), gpu_count=2, region=region) for name in ("a", "b")]


def live_allocations(reservation) -> list[Allocation]:
    return list(Allocation.objects.filter(reservation=reservation, released_at__isnull=True))


def holds() -> int:
    return Allocation.objects.filter(reservation__isnull=True).count()


@pytest.mark.django_db
def test_drain_moves_running_work_to_another_node(customer, nodes):
    source, target = nodes
    reservation = reserve(customer)
    assert reservation.allocation.node == source

    summary = node_drain(node_id=source.pk)
    migration = migration_advance(migration_id=summary["migrations"][0])

    assert summary == {"planned": 1, "stayed": 0, "migrations": [migration.pk]}
    assert Node.objects.get(pk=source.pk).status == Node.Status.DRAINING
    assert migration.status == Migration.Status.DONE
    [allocation] = live_allocations(reservation)
    assert allocation.node == target
    assert holds() == 0
    shares = list(GpuShare.objects.filter(allocation=allocation).select_related("gpu__node"))
    assert {share.gpu.node for share in shares} == {source, target}
    assert all(share.end_at <= timezone.now() for share in shares if share.gpu.node == source)
    assert Decision.objects.filter(reservation=reservation, kind=Decision.Kind.MIGRATED).exists()


@pytest.mark.django_db
def test_drain_leaves_do_not_migrate_work_in_place(customer, nodes):
    reservation = reserve(customer, do_not_migrate=True)

    summary = node_drain(node_id=nodes[0].pk)

    assert summary["stayed"] == 1
    assert not Migration.objects.exists()
    assert Decision.objects.get(reservation=reservation, kind=Decision.Kind.NOT_MIGRATED)


@pytest.mark.django_db
def test_migration_waits_until_the_source_agent_stopped(customer, nodes):
    source, _ = nodes
    reservation = reserve(customer)
    [assignment] = agent_assignments(node=source)
    agent_report(node=source, assignment_id=assignment.pk, state="started")
    migration = migration_plan(reservation_id=reservation.pk, to_node_id=nodes[1].pk, kind=Migration.Kind.DRAIN,
                               reason="test", now=timezone.now())

    assert migration_advance(migration_id=migration.pk).status == Migration.Status.MOVING
    assignment.refresh_from_db()
    assert assignment.stop_by is not None
    assert live_allocations(reservation)[0].node == source

    agent_report(node=source, assignment_id=assignment.pk, state="exited", exit_code=143)
    reservation.refresh_from_db()
    assert reservation.status == ReservationStatus.ACTIVE
    assert migration_advance(migration_id=migration.pk).status == Migration.Status.DONE
    assert live_allocations(reservation)[0].node == nodes[1]


@pytest.mark.django_db
def test_migration_rolls_back_when_the_target_fills_up(customer, other_customer, nodes):
    source, target = nodes
    reservation = reserve(customer)
    migration = migration_plan(reservation_id=reservation.pk, to_node_id=target.pk, kind=Migration.Kind.DRAIN,
                               reason="test", now=timezone.now())
    reserve(other_customer, gpu_count=2)

    migration = migration_advance(migration_id=migration.pk)

    assert migration.status == Migration.Status.ROLLED_BACK
    assert "can no longer hold" in migration.outcome
    assert live_allocations(reservation)[0].node == source
    assert holds() == 0


@pytest.mark.django_db
def test_crash_between_steps_keeps_the_work_on_one_node_and_resumes(customer, nodes, monkeypatch):
    source, target = nodes
    reservation = reserve(customer)
    migration = migration_plan(reservation_id=reservation.pk, to_node_id=target.pk, kind=Migration.Kind.DRAIN,
                               reason="test", now=timezone.now())

    def crash(migration, now):
        raise RuntimeError("worker killed")

    monkeypatch.setattr(migrating, "_switch", crash)
    with pytest.raises(RuntimeError):
        migration_advance(migration_id=migration.pk)
    migration.refresh_from_db()
    assert migration.status == Migration.Status.MOVING
    assert [allocation.node for allocation in live_allocations(reservation)] == [source]
    assert holds() == 1

    monkeypatch.undo()
    assert migration_advance(migration_id=migration.pk).status == Migration.Status.DONE
    assert migration_advance(migration_id=migration.pk).status == Migration.Status.DONE
    assert [allocation.node for allocation in live_allocations(reservation)] == [target]
    assert holds() == 0


@pytest.mark.django_db(transaction=True)
def test_killed_worker_mid_migration_leaves_the_work_on_one_node(require_postgres, monkeypatch, customer, nodes):
    monkeypatch.setenv("MIGRATION_STEP_PAUSE_SECONDS", "3")
    source, target = nodes
    reservation = reserve(customer)
    migration = migration_plan(reservation_id=reservation.pk, to_node_id=target.pk, kind=Migration.Kind.DRAIN,
                               reason="drill", now=timezone.now())

    with celery_worker(pool="prefork") as queue:
        advance_migration_task.apply_async(args=[migration.pk], queue=queue)
        wait_for(lambda: Migration.objects.get(pk=migration.pk).status == Migration.Status.TARGET_RESERVED)
        children = child_pids(queue.process.pid)
        assert children, "the prefork worker has no pool process to kill"
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        assert [allocation.node for allocation in live_allocations(reservation)] == [source]

        wait_for(lambda: Migration.objects.get(pk=migration.pk).status == Migration.Status.DONE, timeout=120)

    assert [allocation.node for allocation in live_allocations(reservation)] == [target]
    assert holds() == 0
    assert Decision.objects.filter(reservation=reservation, kind=Decision.Kind.MIGRATED).count() == 1


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.2)


@pytest.mark.django_db
def test_admin_drains_a_node_from_the_node_list(admin_client, customer, nodes):
    reservation = reserve(customer)

    response = admin_client.post("/admin/marketplace/node/", {"action": "drain_nodes", "_selected_action": [nodes[0].pk]},
                                 follow=True)

    assert response.status_code == 200
    assert [str(message) for message in response.context["messages"]][0].startswith("Node a is draining: 1 moves planned")
    assert Migration.objects.get().reservation == reservation


@pytest.mark.django_db
def test_migrated_reservation_can_still_be_cancelled(customer, other_customer, nodes):
    from allocation.services import reservation_cancel

    source, target = nodes
    moved = reserve(customer)
    migration_advance(migration_id=node_drain(node_id=source.pk)["migrations"][0])
    Node.objects.filter(pk=source.pk).update(status=Node.Status.ACTIVE)
    Node.objects.filter(pk=target.pk).update(status=Node.Status.DRAINING)
    later = reserve(other_customer, gpu_count=2)
    assert later.allocation.node == source

    reservation_cancel(reservation_id=moved.pk)

    moved.refresh_from_db()
    assert moved.status == ReservationStatus.CANCELLED
    source_shares = GpuShare.objects.filter(allocation__reservation=moved, gpu__node=source)
    assert all(share.end_at <= later.allocation.start_at for share in source_shares)


@pytest.mark.django_db
def test_drain_spreads_moves_over_targets_with_room(customer, region):
    nodes = [NodeFactory(hostname=name, gpu_model=gpu_model("T4"), gpu_count=1, region=region)
             for name in ("p", "q", "r")]
    first = reserve(customer, gpu_milli_per_gpu=500)
    second = reserve(customer, gpu_milli_per_gpu=500)
    assert first.allocation.node == second.allocation.node
    source = first.allocation.node
    others = [node for node in nodes if node != source]
    for node in others:
        # Half of each other node's GPU is taken, so each can take one of the two moves.
        Node.objects.filter(pk__in=[other.pk for other in others if other != node]).update(status=Node.Status.OFFLINE)
        assert reserve(customer, gpu_milli_per_gpu=500).allocation.node == node
        Node.objects.filter(pk__in=[other.pk for other in others]).update(status=Node.Status.ACTIVE)

    summary = node_drain(node_id=source.pk)
    for migration_id in summary["migrations"]:
        migration_advance(migration_id=migration_id)

    assert summary["planned"] == 2
    targets = {live_allocations(reservation)[0].node for reservation in (first, second)}
    assert targets == set(others)
