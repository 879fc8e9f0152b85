"""The placement shortlist: the direct exact read for a narrow filter, and the two passes over the fleet."""

import pytest

from allocation.models import Allocation
from allocation import placement
from allocation.placement import placement_shortlist
from allocation.placement_policy import placement_policy
from allocation.selectors import NodeFilter, candidate_ids
from allocation.services import ReservationSpec, reservation_create
from allocation.solvers import PlacementRequest

from ..conftest import NOW, hours
from ..factories import NodeFactory, gpu_model

pytestmark = pytest.mark.django_db

HALF_GPU = PlacementRequest(gpu_count=1, gpu_milli_per_gpu=500, cpu_millicores=1000, memory_mib=1024)


def book(customer, *, milli: int, start_hour: float, end_hour: float) -> None:
    reservation_create(customer=customer, now=NOW, spec=ReservationSpec(
        gpu_count=1, gpu_milli_per_gpu=milli, cpu_millicores=1000, memory_mib=1024,
        start_at=NOW + hours(start_hour), end_at=NOW + hours(end_hour), gpu_models=["T4"],
    ))


def shortlist(*, summed_first: bool):
    node_filter = NodeFilter(gpu_model_ids=(gpu_model("T4").id,))
    return placement_shortlist(request=HALF_GPU, start_at=NOW, end_at=NOW + hours(4), node_filter=node_filter,
                               policy=placement_policy(), summed_first=summed_first)


@pytest.fixture
def partly_booked_fleet(customer, region):
    """Four one-GPU T4 nodes: full, free for the second half only, half used, and empty.

    Each booking is made when its node is the only one with room, so it lands there.
    """
    NodeFactory(hostname="full", gpu_count=1, region=region)
    book(customer, milli=1000, start_hour=0, end_hour=4)
    NodeFactory(hostname="later", gpu_count=1, region=region)
    book(customer, milli=1000, start_hour=0, end_hour=2)
    NodeFactory(hostname="half", gpu_count=1, region=region)
    book(customer, milli=500, start_hour=0, end_hour=4)
    NodeFactory(hostname="empty", gpu_count=1, region=region)
    return customer


def test_fleet_is_booked_as_described(partly_booked_fleet):
    booked = sorted(Allocation.objects.values_list("node__hostname", "gpu_milli_total"))

    assert booked == [("full", 1000), ("half", 500), ("later", 1000)]


@pytest.fixture
def fleet_passes(monkeypatch):
    """Record each call of ``candidate_ids``, the query over the whole fleet's usage."""
    calls = []

    def recorded(*args, **kwargs):
        calls.append(kwargs["exact"])
        return candidate_ids(*args, **kwargs)

    monkeypatch.setattr(placement, "candidate_ids", recorded)
    return calls


def test_direct_read_ranks_like_fleet_passes(partly_booked_fleet, fleet_passes):
    direct_ranked, direct_states = shortlist(summed_first=True)
    assert fleet_passes == []
    exact_ranked, _ = shortlist(summed_first=False)

    assert [placement.node_id for placement in direct_ranked] == [placement.node_id for placement in exact_ranked]
    assert direct_ranked[0].gpu_shares == exact_ranked[0].gpu_shares
    assert {state.hostname for state in direct_states.values()} == {"full", "later", "half", "empty"}


def test_direct_read_skips_nodes_without_room(partly_booked_fleet):
    ranked, states = shortlist(summed_first=True)

    hostnames = {states[placement.node_id].hostname for placement in ranked}
    assert "full" not in hostnames
    assert "later" not in hostnames
    assert hostnames == {"half", "empty"}


def test_wide_filter_takes_the_fleet_passes(partly_booked_fleet, fleet_passes, settings):
    settings.MARKETPLACE = {**settings.MARKETPLACE, "PLACEMENT_SHORTLIST_SIZE": 2}

    ranked, states = shortlist(summed_first=True)

    assert fleet_passes == [False]
    assert ranked
    assert states[ranked[0].node_id].hostname in {"half", "empty"}
