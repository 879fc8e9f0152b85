"""Registration and heartbeats through the agent API: GPUs reconciled, readings stored, health applied."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from allocation.models import ReservationStatus
from allocation.services import ReservationSpec, reservation_create
from marketplace.models import Gpu, GpuReading, GpuReadingHour, Node
from providers.health import heartbeats_check, readings_purge, readings_rollup, unhealthy_nodes_drain
from providers.models import NodeDrainRequest
from scheduler.agents import node_credential_issue
from scheduler.models import Migration

from ..factories import NodeFactory, gpu_model

pytestmark = pytest.mark.django_db


def agent(node) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {node_credential_issue(node=node)}")
    return client


def inventory(uuids: list[str]) -> dict:
    return {"agent_version": "0.1.0", "driver_version": "550.54.15", "cuda_version": "12.4",
            "gpus": [{"index": index, "uuid": f"GPU-{uuid}", "model": "Tesla T4", "memory_mib": 15360}
                     for index, uuid in enumerate(uuids)]}


def snapshot(uuids: list[str], **reading) -> dict:
    return {"at": timezone.now().isoformat(),
            "gpus": [{"uuid": f"GPU-{uuid}", "temperature_c": 55, "utilization_pct": 40, **reading} for uuid in uuids]}


def book(customer, *, gpus: int = 1, hours: int = 2, do_not_migrate: bool = False):
    """Reserve whole GPUs from now for ``hours``."""
    now = timezone.now()
    return reservation_create(customer=customer, spec=ReservationSpec(
        gpu_count=gpus, gpu_milli_per_gpu=1000, cpu_millicores=0, memory_mib=0, start_at=now,
        end_at=now + timedelta(hours=hours), do_not_migrate=do_not_migrate))


def uuids_of(node) -> list[str]:
    return [str(uuid) for uuid in node.gpus.order_by("index").values_list("uuid", flat=True)]


def register(client, uuids):
    response = client.post("/api/v1/agent/register/", inventory(uuids), format="json")
    assert response.status_code == 200, response.content
    return response.json()


def beat(client, uuids, **reading):
    response = client.post("/api/v1/agent/heartbeats/", {"snapshots": [snapshot(uuids, **reading)]}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def test_register_adopts_listed_gpus_then_keeps_their_uuids(t4_node):
    client = agent(t4_node)
    discovered = ["11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"]

    summary = register(client, discovered)

    assert summary["adopted"] == 2
    assert summary["created"] == 0
    assert uuids_of(t4_node) == discovered
    t4_node.refresh_from_db()
    assert t4_node.driver_version == "550.54.15"


def test_heartbeat_stores_readings_and_health(t4_node):
    client = agent(t4_node)
    uuids = uuids_of(t4_node)
    register(client, uuids)

    answer = beat(client, uuids)

    assert answer["readings"] == 2
    assert answer["node_health"] == "healthy"
    assert GpuReading.objects.count() == 2
    assert set(Gpu.objects.values_list("health", flat=True)) == {"healthy"}


def test_failing_gpu_leaves_placement(customer, t4_node):
    client = agent(t4_node)
    uuids = uuids_of(t4_node)
    register(client, uuids)
    client.post("/api/v1/agent/heartbeats/", {"snapshots": [{"at": timezone.now().isoformat(), "gpus": [
        {"uuid": f"GPU-{uuids[0]}", "temperature_c": 55, "xid_events": [79]},
        {"uuid": f"GPU-{uuids[1]}", "temperature_c": 55}]}]}, format="json")

    failed = Gpu.objects.get(uuid=uuids[0])
    assert failed.health == Gpu.Health.FAILED
    assert "fallen off the bus" in failed.health_reasons[0]
    two = book(customer, gpus=2, hours=1)
    one = book(customer, gpus=1, hours=1)
    assert two.status == ReservationStatus.REJECTED
    assert one.allocation.shares.get().gpu.uuid != failed.uuid


def test_recovered_gpu_stays_out_on_probation(t4_node):
    client = agent(t4_node)
    uuids = uuids_of(t4_node)
    register(client, uuids)
    beat(client, uuids, ecc_uncorrected=3)
    assert Gpu.objects.get(uuid=uuids[0]).health == Gpu.Health.DEGRADED

    beat(client, uuids, ecc_uncorrected=0)

    gpu = Gpu.objects.get(uuid=uuids[0])
    assert gpu.health == Gpu.Health.DEGRADED
    assert gpu.probation_until is not None
    assert "probation" in gpu.health_reasons[0]


def test_missed_heartbeats_make_the_node_unknown_and_move_nothing(customer, t4_node):
    client = agent(t4_node)
    uuids = uuids_of(t4_node)
    register(client, uuids)
    beat(client, uuids)
    now = timezone.now()
    reservation = book(customer, gpus=1, hours=1)

    assert heartbeats_check(now=now + timedelta(minutes=5)) == 1
    assert heartbeats_check(now=now + timedelta(minutes=6)) == 0

    t4_node.refresh_from_db()
    assert t4_node.health == "unknown"
    assert unhealthy_nodes_drain(now=now + timedelta(hours=1)) == {"drained": 0, "approval_requested": 0}
    reservation.refresh_from_db()
    assert reservation.status == ReservationStatus.ACTIVE
    assert set(Gpu.objects.values_list("health", flat=True)) == {"healthy"}


def test_unhealthy_node_drains_after_the_threshold(customer, t4_node, region):
    NodeFactory(hostname="t4-spare", gpu_model=gpu_model("T4"), gpu_count=2, region=region)
    client = agent(t4_node)
    uuids = uuids_of(t4_node)
    register(client, uuids)
    now = timezone.now()
    reservation = book(customer, gpus=1, hours=2)
    beat(client, uuids, temperature_c=99)
    t4_node.refresh_from_db()
    assert t4_node.health == "unhealthy"

    assert unhealthy_nodes_drain(now=now + timedelta(minutes=5))["drained"] == 0
    assert unhealthy_nodes_drain(now=now + timedelta(minutes=11))["drained"] == 1

    t4_node.refresh_from_db()
    assert t4_node.status == Node.Status.DRAINING
    assert Migration.objects.get().reservation == reservation


def test_unhealthy_node_with_many_reservations_waits_for_an_admin(customer, t4_node, settings):
    settings.MARKETPLACE = {**settings.MARKETPLACE, "DRAIN_APPROVAL_ABOVE_RESERVATIONS": 0}
    client = agent(t4_node)
    uuids = uuids_of(t4_node)
    register(client, uuids)
    now = timezone.now()
    book(customer)
    beat(client, uuids, temperature_c=99)

    summary = unhealthy_nodes_drain(now=now + timedelta(minutes=11))
    unhealthy_nodes_drain(now=now + timedelta(minutes=12))

    assert summary == {"drained": 0, "approval_requested": 1}
    assert NodeDrainRequest.objects.get().status == NodeDrainRequest.Status.PENDING
    t4_node.refresh_from_db()
    assert t4_node.status == Node.Status.ACTIVE


def test_gpu_missing_from_discovery_is_retired_and_its_work_moves(customer, t4_node, region):
    NodeFactory(hostname="t4-spare", gpu_model=gpu_model("T4"), gpu_count=2, region=region)
    client = agent(t4_node)
    uuids = uuids_of(t4_node)
    register(client, uuids)
    beat(client, uuids)
    reservation = book(customer, gpus=1, hours=2)
    used = str(reservation.allocation.shares.get().gpu.uuid)

    summary = register(client, [uuid for uuid in uuids if uuid != used])

    assert summary["retired"] == 1
    assert summary["reservations_moving"] == 1
    gpu = Gpu.objects.get(uuid=used)
    assert gpu.retired_at is not None
    assert gpu.health == Gpu.Health.FAILED
    t4_node.refresh_from_db()
    assert t4_node.gpu_count == 1
    assert Migration.objects.get().reservation == reservation


def test_readings_of_unregistered_gpus_are_counted_not_stored(t4_node):
    client = agent(t4_node)
    register(client, uuids_of(t4_node))

    answer = beat(client, ["33333333-3333-3333-3333-333333333333"])

    assert answer["readings"] == 0
    assert answer["unknown_gpus"] == 1


@pytest.mark.parametrize("body, field", [
    ({"snapshots": []}, "snapshots"),
    ({"snapshots": [{"at": "2026-06-01T12:00:00", "gpus": []}]}, "snapshots"),
    ({"snapshots": [{"at": "2026-06-01T12:00:00Z", "gpus": [{"uuid": "not-a-uuid"}]}]}, "snapshots"),
    ({"snapshots": [{"at": "2026-06-01T12:00:00Z", "gpus": [{"uuid": "GPU-11111111-1111-1111-1111-111111111111",
                                                             "temperature_c": "hot"}]}]}, "snapshots"),
])
def test_bad_heartbeats_name_the_field(t4_node, body, field):
    response = agent(t4_node).post("/api/v1/agent/heartbeats/", body, format="json")

    assert response.status_code == 400
    assert any(problem["field"].startswith(field) for problem in response.json()["errors"])


def test_duplicate_gpu_uuids_are_rejected(t4_node):
    same = "11111111-1111-1111-1111-111111111111"

    response = agent(t4_node).post("/api/v1/agent/register/", inventory([same, same]), format="json")

    assert response.status_code == 400


def test_rollup_then_purge_keeps_the_hours(t4_node):
    client = agent(t4_node)
    uuids = uuids_of(t4_node)
    register(client, uuids)
    beat(client, uuids, xid_events=[13])
    beat(client, uuids)

    assert readings_rollup() == 2
    assert readings_purge(now=timezone.now() + timedelta(days=3)) == 4

    hour = GpuReadingHour.objects.get(gpu__uuid=uuids[0])
    assert hour.samples == 2
    assert hour.xid_count == 1


def queued_agent(node, settings) -> tuple[APIClient, list[str]]:
    """Return a registered agent of ``node`` and its GPU uuids, with heartbeats queued in Redis in batches of 2."""
    from providers.heartbeat_queue import QUEUE_KEY, _redis

    if not settings.REDIS_URL:
        pytest.skip("needs Redis: set REDIS_URL")
    _redis().delete(QUEUE_KEY)
    settings.MARKETPLACE = {**settings.MARKETPLACE, "HEARTBEAT_QUEUE": True, "HEARTBEAT_BATCH": 2}
    client = agent(node)
    uuids = uuids_of(node)
    register(client, uuids)
    return client, uuids


def test_queued_heartbeats_are_stored_in_batches(t4_node, settings):
    from providers.heartbeat_queue import heartbeats_drain

    client, uuids = queued_agent(t4_node, settings)

    for _ in range(3):
        response = client.post("/api/v1/agent/heartbeats/", {"snapshots": [snapshot(uuids)]}, format="json")
        assert response.status_code == 202
    assert GpuReading.objects.count() == 0

    summary = heartbeats_drain()

    assert summary.heartbeats == 3
    assert GpuReading.objects.count() == 6
    t4_node.refresh_from_db()
    assert t4_node.health == "healthy"


def test_failed_drain_leaves_heartbeats_queued(t4_node, settings, monkeypatch):
    from django.db import OperationalError

    from providers import heartbeat_queue
    from providers.heartbeat_queue import QUEUE_KEY, _redis, heartbeats_drain

    client, uuids = queued_agent(t4_node, settings)
    for _ in range(3):
        client.post("/api/v1/agent/heartbeats/", {"snapshots": [snapshot(uuids)]}, format="json")

    def lose_database(**kwargs):
        raise OperationalError("terminating connection due to administrator command")

    monkeypatch.setattr(heartbeat_queue, "heartbeats_ingest", lose_database)
    with pytest.raises(OperationalError):
        heartbeats_drain()
    assert _redis().llen(QUEUE_KEY) == 3

    monkeypatch.undo()
    assert heartbeats_drain().heartbeats == 3
    assert _redis().llen(QUEUE_KEY) == 0


def test_gpu_of_another_node_is_refused_by_name(t4_node, region):
    other = NodeFactory(hostname="t4-other", gpu_model=gpu_model("T4"), gpu_count=2, region=region)
    register(agent(t4_node), uuids_of(t4_node))

    response = agent(other).post("/api/v1/agent/register/", inventory(uuids_of(t4_node)[:1]), format="json")

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "gpus.0.uuid"


def test_registration_needs_at_least_one_gpu(t4_node):
    response = agent(t4_node).post("/api/v1/agent/register/", {"agent_version": "1", "gpus": []}, format="json")

    assert response.status_code == 400
    t4_node.refresh_from_db()
    assert t4_node.gpu_count == 2


def test_undiscovered_listed_gpus_are_retired(t4_node):
    summary = register(agent(t4_node), uuids_of(t4_node)[:1])

    assert summary["retired"] == 1
    t4_node.refresh_from_db()
    assert t4_node.gpu_count == 1


def test_do_not_migrate_work_still_leaves_a_retired_gpu(customer, t4_node, region):
    spare = NodeFactory(hostname="t4-spare", gpu_model=gpu_model("T4"), gpu_count=2, region=region)
    client = agent(t4_node)
    uuids = uuids_of(t4_node)
    register(client, uuids)
    pinned = book(customer, gpus=1, hours=2, do_not_migrate=True)
    used = str(pinned.allocation.shares.get().gpu.uuid)

    register(client, [uuid for uuid in uuids if uuid != used])

    migration = Migration.objects.get(reservation=pinned)
    assert migration.to_node == spare
    assert migration.kind == Migration.Kind.GPU_RETIRED


def test_work_on_a_retired_gpu_fails_when_nowhere_else_fits(customer, t4_node):
    client = agent(t4_node)
    uuids = uuids_of(t4_node)
    register(client, uuids)
    reservation = book(customer, gpus=1, hours=2)
    used = str(reservation.allocation.shares.get().gpu.uuid)

    register(client, [uuid for uuid in uuids if uuid != used])

    reservation.refresh_from_db()
    assert reservation.status == ReservationStatus.FAILED


@pytest.mark.parametrize("at", ["1970-01-01T00:00:00Z", "8999-01-01T00:00:00Z"])
def test_readings_from_a_wrong_clock_are_refused(t4_node, at):
    uuid = uuids_of(t4_node)[0]
    body = {"snapshots": [{"at": at, "gpus": [{"uuid": f"GPU-{uuid}", "temperature_c": 50}]}]}

    response = agent(t4_node).post("/api/v1/agent/heartbeats/", body, format="json")

    assert response.status_code == 400
    assert not GpuReading.objects.exists()


def test_same_gpu_twice_in_a_snapshot_is_refused(t4_node):
    uuid = uuids_of(t4_node)[0]
    body = {"snapshots": [{"at": timezone.now().isoformat(), "gpus": [{"uuid": f"GPU-{uuid}"}, {"uuid": uuid}]}]}

    assert agent(t4_node).post("/api/v1/agent/heartbeats/", body, format="json").status_code == 400


def test_new_gpu_takes_retired_gpu_index(t4_node):
    """A replacement GPU reported at a retired GPU's index gets that index: the physical slot the agent named."""
    client = agent(t4_node)
    first, second = uuids_of(t4_node)
    register(client, [first, second])
    register(client, [first])  # The GPU at index 1 is gone, so it is retired.

    summary = register(client, [first, "aaaaaaaa-0000-4000-8000-000000000001"])

    assert summary["created"] == 1
    replacement = Gpu.objects.get(uuid="aaaaaaaa-0000-4000-8000-000000000001")
    assert replacement.index == 1
    assert replacement.retired_at is None
    assert Gpu.objects.filter(node=t4_node, index=1, retired_at__isnull=False).count() == 1
    t4_node.refresh_from_db()
    assert t4_node.gpu_count == 2


def test_renumbered_gpus_take_reported_indexes(t4_node):
    """The driver numbers GPUs again when one is removed, so the stored index follows the report."""
    client = agent(t4_node)
    first, second = uuids_of(t4_node)
    third = "aaaaaaaa-0000-4000-8000-000000000003"
    register(client, [first, second, third])

    summary = register(client, [first, third])  # The second GPU is gone; the third is now index 1.

    assert summary["retired"] == 1
    assert summary["reindexed"] == 1
    assert Gpu.objects.get(uuid=third).index == 1
    in_service = Gpu.objects.filter(node=t4_node, retired_at__isnull=True).order_by("index")
    assert [str(gpu.uuid) for gpu in in_service] == [first, third]


def test_gpus_may_swap_indexes(t4_node):
    client = agent(t4_node)
    first, second = uuids_of(t4_node)
    register(client, [first, second])
    body = inventory([second, first])  # The same two GPUs, reported in the other order.

    response = client.post("/api/v1/agent/register/", body, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["reindexed"] == 2
    assert Gpu.objects.get(uuid=second).index == 0
    assert Gpu.objects.get(uuid=first).index == 1


def test_replacement_in_one_report_takes_the_slot(t4_node):
    """A GPU swapped between two registrations: the old one is retired and the new one gets its index."""
    client = agent(t4_node)
    first, second = uuids_of(t4_node)
    register(client, [first, second])
    beat(client, [first, second])  # GPUs that reported are not placeholders a new UUID may adopt.

    summary = register(client, [first, "aaaaaaaa-0000-4000-8000-000000000002"])

    assert summary["retired"] == 1
    assert summary["created"] == 1
    assert Gpu.objects.get(uuid="aaaaaaaa-0000-4000-8000-000000000002").index == 1
    assert Gpu.objects.get(uuid=second).retired_at is not None


def test_retired_gpu_found_again_returns_to_service(t4_node):
    """A GPU retired when discovery missed it, then reported again, is back in service but out of placement."""
    client = agent(t4_node)
    first, second = uuids_of(t4_node)
    register(client, [first, second])
    beat(client, [first, second])
    register(client, [first])

    summary = register(client, [first, second])

    assert summary["returned"] == 1
    returned = Gpu.objects.get(uuid=second)
    assert returned.retired_at is None
    assert returned.index == 1
    assert returned.health == Gpu.Health.FAILED
    t4_node.refresh_from_db()
    assert t4_node.gpu_count == 2


def test_reading_older_than_stored_leaves_health(t4_node):
    """An hour-old snapshot that arrives after a newer one is stored but does not set the GPU's health."""
    client = agent(t4_node)
    uuids = uuids_of(t4_node)
    register(client, uuids)
    beat(client, uuids, temperature_c=50)
    stale = snapshot(uuids, temperature_c=96)
    stale["at"] = (timezone.now() - timedelta(hours=1)).isoformat()

    response = client.post("/api/v1/agent/heartbeats/", {"snapshots": [stale]}, format="json")

    assert response.status_code == 200, response.content
    assert Gpu.objects.get(uuid=uuids[0]).health == Gpu.Health.HEALTHY
    assert GpuReading.objects.filter(gpu__uuid=uuids[0], temperature_c=96).exists()
