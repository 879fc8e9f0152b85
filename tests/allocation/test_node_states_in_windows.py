"""Node states for many windows in one query equal the one-window query, and the earliest start does not change."""

import random
from datetime import timedelta
from decimal import Decimal

import pytest

from allocation import alternatives
from allocation.alternatives import alternatives_find
from allocation.placement_policy import placement_policy
from allocation.selectors import NodeFilter, node_states, node_states_in_windows
from allocation.services import ReservationSpec, reservation_create
from allocation.solvers import PlacementRequest
from marketplace.models import Gpu, MaintenanceWindow, Node

from ..conftest import NOW, cache_empty, hours
from ..factories import NodeFactory, gpu_model

pytestmark = pytest.mark.usefixtures("require_postgres")


@pytest.fixture
def busy_fleet(customer, region):
    """Three T4 nodes with random bookings over two days, a failed GPU, a drained node and a maintenance window."""
    nodes = [NodeFactory(hostname=f"t4-{index}", gpu_model=gpu_model("T4"), gpu_count=4, region=region)
             for index in range(3)]
    rng = random.Random(7)
    for _ in range(40):
        start = NOW + timedelta(minutes=30 * rng.randrange(0, 90))
        reservation_create(customer=customer, now=NOW, spec=ReservationSpec(
            gpu_count=rng.choice([1, 1, 2]), gpu_milli_per_gpu=rng.choice([1000, 460, 250]),
            cpu_millicores=rng.choice([4000, 16000]), memory_mib=8192, start_at=start,
            end_at=start + timedelta(minutes=30 * rng.randrange(1, 12))))
    Gpu.objects.filter(node=nodes[0], index=3).update(health=Gpu.Health.FAILED)
    Node.objects.filter(pk=nodes[2].pk).update(status=Node.Status.DRAINING)
    MaintenanceWindow.objects.create(node=nodes[1], start_at=NOW + hours(20), end_at=NOW + hours(22))
    return nodes


def test_states_equal_one_window_query(busy_fleet):
    node_ids = [node.pk for node in busy_fleet]
    windows = [(NOW + timedelta(minutes=15 * step), NOW + timedelta(minutes=15 * step) + hours(3))
               for step in range(0, 200, 7)]

    batched = node_states_in_windows(node_ids, windows)

    for (start, end), states in zip(windows, batched):
        usable = [node_id for node_id in node_ids[:2]
                  if not MaintenanceWindow.objects.filter(node_id=node_id, start_at__lt=end, end_at__gt=start).exists()]
        assert states == node_states(usable, start, end), (start, end)


def test_earliest_start_same_on_both_paths(customer, busy_fleet, monkeypatch):
    request = PlacementRequest(gpu_count=3, gpu_milli_per_gpu=1000, cpu_millicores=8000, memory_mib=8192)
    node_filter = NodeFilter(gpu_model_ids=(gpu_model("T4").pk,), max_price_per_gpu_hour=Decimal("5"))
    found = {}
    for limit in (alternatives.EARLIEST_START_NODE_LIMIT, 0):
        monkeypatch.setattr(alternatives, "EARLIEST_START_NODE_LIMIT", limit)
        cache_empty()  # Alternatives are cached per request, so the second path would not run.
        found[limit] = alternatives_find(customer_id=customer.pk, request=request, start_at=NOW + hours(2),
                                         end_at=NOW + hours(8), node_filter=node_filter,
                                         policy=placement_policy(), now=NOW)

    assert found[alternatives.EARLIEST_START_NODE_LIMIT] == found[0]
    assert found[0].earliest_start_at is not None
