"""Nodes with maintenance in the window are never chosen, on the direct read of a narrow filter as on the fleet passes."""

import pytest

from allocation.models import Allocation, GpuShare, ReservationStatus
from allocation.placement import placement_shortlist
from allocation.placement_policy import placement_policy
from allocation.quoting import reservation_quote
from allocation.rebalancing import rebalance_propose
from allocation.selectors import NodeFilter
from allocation.services import ReservationSpec, reservation_create
from allocation.solvers import PlacementRequest
from marketplace.models import Gpu, MaintenanceWindow
from providers.portal_services import maintenance_create
from scheduler.models import Migration

from ..conftest import NOW, hours
from ..factories import NodeFactory, gpu_model

pytestmark = pytest.mark.django_db

HALF_GPU = PlacementRequest(gpu_count=1, gpu_milli_per_gpu=500, cpu_millicores=1000, memory_mib=1024)


def spec(milli: int = 500, start_hour: float = 0, end_hour: float = 4) -> ReservationSpec:
    return ReservationSpec(gpu_count=1, gpu_milli_per_gpu=milli, cpu_millicores=1000, memory_mib=1024,
                           start_at=NOW + hours(start_hour), end_at=NOW + hours(end_hour), gpu_models=["T4"])


def ranked_hostnames(summed_first: bool) -> list[str]:
    ranked, states = placement_shortlist(
        request=HALF_GPU, start_at=NOW, end_at=NOW + hours(4),
        node_filter=NodeFilter(gpu_model_ids=(gpu_model("T4").id,)), policy=placement_policy(),
        summed_first=summed_first)
    return [states[placement.node_id].hostname for placement in ranked]


def in_maintenance(node, start_hour: float, end_hour: float) -> None:
    MaintenanceWindow.objects.create(node=node, start_at=NOW + hours(start_hour), end_at=NOW + hours(end_hour))


def test_shortlist_skips_maintenance_node(region):
    NodeFactory(hostname="ok", gpu_count=1, region=region)
    in_maintenance(NodeFactory(hostname="down", gpu_count=1, region=region), 1, 2)

    assert ranked_hostnames(summed_first=False) == ["ok"]
    assert ranked_hostnames(summed_first=True) == ["ok"]


def test_quote_skips_maintenance_node(customer, region):
    in_maintenance(NodeFactory(hostname="down", gpu_count=1, region=region), 1, 2)

    quote = reservation_quote(customer=customer, spec=spec(), now=NOW)
    reservation = reservation_create(customer=customer, spec=spec(), now=NOW)

    assert quote.fits is False
    assert reservation.status == ReservationStatus.REJECTED


def test_maintenance_rejection_blames_no_race(customer, region):
    in_maintenance(NodeFactory(hostname="down", gpu_count=1, region=region), 1, 2)

    reservation = reservation_create(customer=customer, spec=spec(), now=NOW)

    assert reservation.status == ReservationStatus.REJECTED
    assert "Concurrent reservations" not in reservation.reason_detail


def test_free_node_beside_maintenance_nodes(customer, region):
    """Five half-used nodes fit best, so the policy would rank them first. Each has maintenance in the window."""
    for index in range(5):
        node = NodeFactory(hostname=f"half-{index}", gpu_count=1, region=region)
        reservation_create(customer=customer, spec=spec(), now=NOW)  # Lands on the one node with room.
        in_maintenance(node, 2, 3)
    NodeFactory(hostname="empty", gpu_count=1, region=region)
    assert Allocation.objects.count() == 5

    reservation = reservation_create(customer=customer, spec=spec(), now=NOW)

    assert reservation.status != ReservationStatus.REJECTED, reservation.reason_detail
    assert reservation.allocation.node.hostname == "empty"


def test_drain_skips_maintenance_target(customer, region):
    first = NodeFactory(hostname="first", gpu_count=1, region=region)
    second = NodeFactory(hostname="second", gpu_count=1, region=region)
    in_maintenance(second, 0, 4)
    booked = reservation_create(customer=customer, spec=spec(milli=1000, start_hour=1, end_hour=3), now=NOW)
    assert booked.allocation.node == first

    _window, counts = maintenance_create(provider=first.provider, node_id=first.pk, start_at=NOW,
                                         end_at=NOW + hours(4), reason="firmware", now=NOW)

    assert counts == {"moving": 0, "staying": 1}
    assert not Migration.objects.filter(to_node=second).exists()


def test_rebalancing_skips_maintenance_target(customer, region):
    """A degraded GPU makes rebalancing look for another node, and the only other one has maintenance then."""
    NodeFactory(hostname="t4-a", region=region)
    booked = reservation_create(customer=customer, spec=spec(milli=1000, start_hour=2, end_hour=12), now=NOW)
    other = NodeFactory(hostname="t4-b", region=region)
    in_maintenance(other, 4, 6)
    Gpu.objects.filter(id__in=GpuShare.objects.filter(allocation__reservation=booked).values("gpu_id")).update(
        health=Gpu.Health.DEGRADED)

    plan = rebalance_propose(now=NOW)

    assert plan is None or not plan.moves.filter(to_node=other).exists()
