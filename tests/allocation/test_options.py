"""The options of a 409: the cheapest empty node per group gives the same options as listing every empty node."""

import random
from datetime import timedelta
from decimal import Decimal

import pytest

from allocation import alternatives
from allocation.alternatives import ALL_NODES
from allocation.placement_policy import placement_policy
from allocation.selectors import NodeFilter, candidate_ids, lowest_prices
from allocation.services import ReservationSpec, reservation_create
from allocation.solvers import PlacementRequest
from marketplace.models import Gpu, GpuModel, MaintenanceWindow, Node

from ..conftest import NOW, hours
from ..factories import NodeFactory, RegionFactory, gpu_model

pytestmark = pytest.mark.django_db


def listed_options(request, start_at, end_at, model_ids) -> set:
    """The options as computed before: every node with room, empty ones included, then the lowest price per group."""
    def rows(model_ids, exact):
        node_ids = candidate_ids(request, start_at, end_at, NodeFilter(model_ids), used_limit=ALL_NODES,
                                 free_limit=ALL_NODES, exact=exact)
        return lowest_prices(node_ids, min_healthy_gpus=request.gpu_count)

    found = rows(model_ids, exact=False)
    missing = tuple(sorted(set(model_ids) - {row[0] for row in found}))
    if missing:
        found += rows(missing, exact=True)
    names = dict(GpuModel.objects.values_list("id", "name"))
    cheapest = {}
    for model_id, region, price, currency in found:
        key = (names[model_id], region)
        cheapest[key] = min(price, cheapest.get(key, price))
    return {(model, region, price) for (model, region), price in cheapest.items()}


@pytest.fixture
def mixed_fleet(customer):
    """Twenty nodes of three models in two regions and two currencies, some booked, failed, drained or in maintenance."""
    rng = random.Random(11)
    regions = [RegionFactory(code="eu-west"), RegionFactory(code="us-east")]
    models = [gpu_model("T4"), gpu_model("A10"), gpu_model("V100M32")]
    nodes = [
        NodeFactory(gpu_model=rng.choice(models), region=rng.choice(regions), gpu_count=rng.choice([1, 2, 4]),
                    cpu_millicores=rng.choice([8000, 32000]), currency=rng.choice(["USD", "USD", "EUR"]),
                    price_per_gpu_hour=Decimal(rng.choice(["0.50", "0.90", "1.20", "2.00"])))
        for _ in range(20)
    ]
    for _ in range(30):
        start = NOW + timedelta(minutes=30 * rng.randrange(0, 16))
        reservation_create(customer=customer, now=NOW, spec=ReservationSpec(
            gpu_count=rng.choice([1, 1, 2]), gpu_milli_per_gpu=rng.choice([1000, 500, 250]),
            cpu_millicores=rng.choice([2000, 8000]), memory_mib=4096, start_at=start,
            end_at=start + timedelta(minutes=30 * rng.randrange(1, 8))))
    for node in rng.sample(nodes, 4):
        Gpu.objects.filter(node=node, index=0).update(health=Gpu.Health.FAILED)
    Node.objects.filter(pk__in=[node.pk for node in rng.sample(nodes, 2)]).update(status=Node.Status.DRAINING)
    for node in rng.sample(nodes, 3):
        MaintenanceWindow.objects.create(node=node, start_at=NOW + hours(rng.randrange(0, 8)),
                                         end_at=NOW + hours(rng.randrange(8, 12)))
    return nodes


def test_options_equal_listing_every_node(customer, mixed_fleet):
    rng = random.Random(5)
    model_ids = tuple(GpuModel.objects.values_list("id", flat=True))
    compared = 0
    for _ in range(40):
        request = PlacementRequest(gpu_count=rng.choice([1, 1, 2, 4]), gpu_milli_per_gpu=rng.choice([1000, 500]),
                                   cpu_millicores=rng.choice([1000, 8000, 16000]), memory_mib=4096)
        start_at = NOW + timedelta(minutes=30 * rng.randrange(0, 20))
        end_at = start_at + timedelta(minutes=30 * rng.randrange(1, 8))

        options = alternatives._options_now(customer.pk, request, start_at, end_at, placement_policy())

        expected = listed_options(request, start_at, end_at, model_ids)
        assert {(o.gpu_model, o.region, o.price_per_gpu_hour) for o in options} == expected, (request, start_at)
        compared += bool(expected)
    assert compared >= 20  # Most requests have options, so the comparison is not between empty sets.
