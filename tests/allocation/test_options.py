"""The options of a 409: every model and region with a node that can hold the request, at its cheapest such node."""

import random
from datetime import timedelta
from decimal import Decimal

import pytest

from allocation import alternatives
from allocation.budgets import budget_admit
from allocation.ledger_sync import ledger_for_window
from allocation.models import Allocation, Budget, Quota
from allocation.placement_policy import placement_policy
from allocation.quotas import quota_admit
from allocation.selectors import NodeFilter, node_states
from allocation.services import ReservationSpec, reservation_create
from allocation.solvers import PlacementRequest
from marketplace.models import Gpu, GpuModel, MaintenanceWindow, Node

from ..conftest import NOW, hours
from ..factories import NodeFactory, RegionFactory, gpu_model

pytestmark = pytest.mark.django_db


def exact_options(customer_id, request, start_at, end_at) -> dict:
    """Return the lowest price per (model, region) over the admitted nodes whose exact state can hold the request."""
    catalogue = dict(GpuModel.objects.values_list("id", "name"))
    decision = quota_admit(customer_id=customer_id, model_ids=tuple(catalogue), model_names=catalogue,
                           gpu_milli=request.gpu_milli_total, start_at=start_at, end_at=end_at)
    budget = budget_admit(customer_id=customer_id, gpu_milli=request.gpu_milli_total, start_at=start_at,
                          end_at=end_at)
    if budget.refusal:
        return {}
    nodes = Node.objects.filter(status=Node.Status.ACTIVE, gpu_model_id__in=decision.admitted_model_ids)
    if budget.max_affordable_price is not None:
        nodes = nodes.filter(price_per_gpu_hour__lte=budget.max_affordable_price)
    nodes = nodes.exclude(maintenance_windows__start_at__lt=end_at, maintenance_windows__end_at__gt=start_at)
    by_id = {node.pk: node for node in nodes.select_related("region", "gpu_model")}
    found = {}
    for state in node_states(list(by_id), start_at, end_at):
        if state.can_hold(request):
            node = by_id[state.node_id]
            key = (node.gpu_model.name, node.region.code)
            found[key] = min(node.price_per_gpu_hour, found.get(key, node.price_per_gpu_hour))
    return found


def build_fleet(customer, seed: int) -> None:
    """Build 24 nodes of three models, two regions and two currencies, some booked, failed, drained or in maintenance."""
    rng = random.Random(seed)
    regions = [RegionFactory(code="eu-west"), RegionFactory(code="us-east")]
    models = [gpu_model("T4"), gpu_model("A10"), gpu_model("V100M32")]
    nodes = [
        NodeFactory(gpu_model=rng.choice(models), region=rng.choice(regions), gpu_count=rng.choice([1, 2, 4]),
                    cpu_millicores=rng.choice([4000, 8000, 32000]), memory_mib=rng.choice([8192, 65536]),
                    currency=rng.choice(["USD", "USD", "EUR"]),
                    price_per_gpu_hour=Decimal(rng.choice(["0.50", "0.90", "1.20", "2.00", "3.50"])))
        for _ in range(24)
    ]
    for _ in range(40):
        start = NOW + timedelta(minutes=30 * rng.randrange(0, 16))
        gpu_count = rng.choice([0, 1, 1, 2])
        reservation_create(customer=customer, now=NOW, spec=ReservationSpec(
            gpu_count=gpu_count, gpu_milli_per_gpu=rng.choice([1000, 500, 250]) if gpu_count else 0,
            cpu_millicores=rng.choice([1000, 4000, 8000]), memory_mib=rng.choice([2048, 8192]), start_at=start,
            end_at=start + timedelta(minutes=30 * rng.randrange(1, 8))))
    for allocation in list(Allocation.objects.order_by("id")[:5]):  # Zero-length copies, which hold nothing.
        allocation.pk = None
        allocation.reservation = None
        allocation.end_at = allocation.start_at
        allocation.save()
    for node in rng.sample(nodes, 5):
        Gpu.objects.filter(node=node, index=0).update(health=Gpu.Health.FAILED)
    Node.objects.filter(pk__in=[node.pk for node in rng.sample(nodes, 3)]).update(status=Node.Status.DRAINING)
    for node in rng.sample(nodes, 4):
        MaintenanceWindow.objects.create(node=node, start_at=NOW + hours(rng.randrange(0, 8)),
                                         end_at=NOW + hours(rng.randrange(8, 12)))


def requests(seed: int):
    rng = random.Random(seed)
    for _ in range(40):
        gpu_count = rng.choice([0, 1, 1, 2, 4])
        request = PlacementRequest(gpu_count=gpu_count, gpu_milli_per_gpu=rng.choice([1000, 500, 250]) if gpu_count else 0,
                                   cpu_millicores=rng.choice([1000, 4000, 8000, 30000]),
                                   memory_mib=rng.choice([4096, 60000]))
        start_at = NOW + timedelta(minutes=30 * rng.randrange(0, 20))
        yield request, start_at, start_at + timedelta(minutes=30 * rng.randrange(1, 8))


def capacity(source: str, start_at):
    """Return the capacity ledger for ``source`` "ledger", or None to read the database."""
    return ledger_for_window(start_at) if source == "ledger" else None


@pytest.mark.parametrize("source", ["database", "ledger"])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("limits", ["none", "budget", "quota"])
def test_options_equal_exact_check(customer, seed, limits, source):
    build_fleet(customer, seed)
    if limits == "budget":
        Budget.objects.create(organization=customer, max_spend=Decimal("40.00"))
    elif limits == "quota":
        Quota.objects.create(organization=customer, gpu_model=gpu_model("A10"), max_gpu_milli=0)
    compared = 0
    for request, start_at, end_at in requests(seed + 100):
        options = alternatives._options_now(customer.pk, request, start_at, end_at, placement_policy(),
                                            capacity(source, start_at))

        expected = exact_options(customer.pk, request, start_at, end_at)
        assert {(o.gpu_model, o.region): o.price_per_gpu_hour for o in options} == expected, (request, start_at)
        compared += bool(expected)
    assert compared >= 3  # Some requests have options, so the comparison is not only between empty sets.


@pytest.mark.parametrize("source", ["database", "ledger"])
def test_node_fitting_between_bookings_sets_price(customer, source):
    """The cheap node has two back-to-back half-GPU bookings, so half a GPU stays free at every instant."""
    region = RegionFactory(code="eu-west")
    cheap = NodeFactory(gpu_model=gpu_model("T4"), region=region, gpu_count=1, price_per_gpu_hour=Decimal("1.00"))
    NodeFactory(gpu_model=gpu_model("T4"), region=region, gpu_count=1, price_per_gpu_hour=Decimal("2.00"))
    for start in (NOW + hours(1), NOW + hours(2)):
        reservation = reservation_create(customer=customer, now=NOW, spec=ReservationSpec(
            gpu_count=1, gpu_milli_per_gpu=500, cpu_millicores=1000, memory_mib=1024, start_at=start,
            end_at=start + hours(1), gpu_models=("T4",), max_price_per_gpu_hour=Decimal("1.00")))
        assert reservation.allocation.node_id == cheap.pk
    request = PlacementRequest(gpu_count=1, gpu_milli_per_gpu=500, cpu_millicores=1000, memory_mib=1024)

    options = alternatives._options_now(customer.pk, request, NOW + hours(1), NOW + hours(3), placement_policy(),
                                        capacity(source, NOW + hours(1)))

    assert [(o.gpu_model, o.price_per_gpu_hour) for o in options] == [("T4", Decimal("1.00"))]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("limits", ["none", "quota"])
def test_earliest_start_ledger_equals_database(customer, seed, limits):
    build_fleet(customer, seed)
    if limits == "quota":
        Quota.objects.create(organization=customer, gpu_model=None, max_gpu_milli=3000)
    models = tuple(GpuModel.objects.filter(name__in=["T4", "A10"]).values_list("id", flat=True))
    found = 0
    for request, start_at, end_at in requests(seed + 200):
        node_filter = NodeFilter(models)
        arguments = (customer.pk, request, start_at, end_at, node_filter, placement_policy(), NOW)

        from_ledger = alternatives._earliest_start(*arguments, ledger_for_window(start_at), Decimal(1))

        assert from_ledger == alternatives._earliest_start(*arguments, None, Decimal(1)), (request, start_at)
        found += from_ledger is not None
    assert found >= 3
