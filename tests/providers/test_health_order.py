"""Health across registrations and out-of-order snapshots: a GPU found again serves probation, XIDs always count."""

from datetime import timedelta

import pytest

from marketplace.models import Gpu
from providers.telemetry import heartbeats_ingest, node_register

from ..conftest import NOW
from ..factories import NodeFactory, gpu_model

pytestmark = pytest.mark.django_db
MINUTE = timedelta(minutes=1)


def inventory(uuids):
    return {"gpus": [{"index": index, "uuid": uuid, "model": "Tesla T4", "memory_mib": 15360}
                     for index, uuid in enumerate(uuids)]}


def snapshot(at, uuids, **reading):
    return {"at": at, "gpus": [{"uuid": uuid, "temperature_c": 55, **reading} for uuid in uuids]}


@pytest.fixture
def node(region):
    return NodeFactory(hostname="n", gpu_model=gpu_model("T4"), gpu_count=2, region=region)


def test_returned_gpu_serves_probation_again(node):
    """A GPU on probation when discovery lost it must serve a new probation when it comes back."""
    first, second = [str(uuid) for uuid in node.gpus.order_by("index").values_list("uuid", flat=True)]
    node_register(node=node, inventory=inventory([first, second]), agent_version="t", now=NOW)
    heartbeats_ingest(heartbeats=[(node, [snapshot(NOW, [first, second])])], now=NOW)
    heartbeats_ingest(heartbeats=[(node, [snapshot(NOW + MINUTE, [second], xid_events=[79])])], now=NOW + MINUTE)
    assert Gpu.objects.get(uuid=second).health == Gpu.Health.FAILED
    # A healthy reading starts the probation (one hour by default).
    heartbeats_ingest(heartbeats=[(node, [snapshot(NOW + 2 * MINUTE, [second])])], now=NOW + 2 * MINUTE)
    assert Gpu.objects.get(uuid=second).health == Gpu.Health.DEGRADED
    # Discovery misses it, so it is retired. Hours later it is found again.
    node_register(node=node, inventory=inventory([first]), agent_version="t", now=NOW + 3 * MINUTE)
    later = NOW + timedelta(hours=5)
    node_register(node=node, inventory=inventory([first, second]), agent_version="t", now=later)
    assert Gpu.objects.get(uuid=second).health == Gpu.Health.FAILED

    heartbeats_ingest(heartbeats=[(node, [snapshot(later + MINUTE, [first, second])])], now=later + MINUTE)

    returned = Gpu.objects.get(uuid=second)
    assert returned.health != Gpu.Health.HEALTHY, (
        f"back in placement one minute after it returned; probation_until was {returned.probation_until}")


@pytest.mark.parametrize("order", ["oldest_first", "newest_first"])
def test_xid_counts_in_any_snapshot_order(node, order):
    """One batch contains a snapshot with XID 79 (GPU fallen off the bus) and a later healthy one."""
    first, second = [str(uuid) for uuid in node.gpus.order_by("index").values_list("uuid", flat=True)]
    node_register(node=node, inventory=inventory([first, second]), agent_version="t", now=NOW)
    heartbeats_ingest(heartbeats=[(node, [snapshot(NOW, [first, second])])], now=NOW)
    snapshots = [snapshot(NOW + MINUTE, [first], xid_events=[79]), snapshot(NOW + 2 * MINUTE, [first])]
    if order == "newest_first":
        snapshots.reverse()

    heartbeats_ingest(heartbeats=[(node, snapshots)], now=NOW + 2 * MINUTE)

    assert Gpu.objects.get(uuid=first).health == Gpu.Health.FAILED, f"the XID was lost with {order}"
