"""PostgreSQL itself rejects over-allocation, including from real concurrent transactions."""

import threading
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction

from allocation import placement
from allocation.models import Allocation, GpuShare, Reservation, ReservationStatus
from allocation.services import ReservationSpec, quota_set, reservation_create
from allocation.solvers import Placement
from marketplace.models import Gpu, MaintenanceWindow, Node

from ..conftest import NOW, hours
from ..factories import CustomerFactory, NodeFactory

pytestmark = pytest.mark.usefixtures("require_postgres")


def raw_allocation(customer, node, *, cpu=1000, memory=1024, gpu_milli_total=0, start=NOW, end=None) -> Allocation:
    """Insert a reservation and its allocation directly, skipping the service and its checks."""
    end = end or start + hours(2)
    reservation = Reservation.objects.create(
        customer=customer, gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=cpu, memory_mib=memory,
        start_at=start, end_at=end,
    )
    return Allocation.objects.create(
        reservation=reservation, customer=customer, node=node, gpu_model=node.gpu_model, start_at=start,
        end_at=end, cpu_millicores=cpu, memory_mib=memory, gpu_milli_total=gpu_milli_total,
        billed_gpu_milli=gpu_milli_total,
        price_per_gpu_hour=Decimal("1"), currency="USD",
    )


def full_spec(**overrides) -> ReservationSpec:
    values = dict(gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024,
                  start_at=NOW, end_at=NOW + hours(2))
    values.update(overrides)
    return ReservationSpec(**values)


@pytest.mark.django_db
def test_direct_share_insert_over_capacity_is_rejected(customer, t4_node):
    gpu = t4_node.gpus.get(index=0)
    first = raw_allocation(customer, t4_node)
    GpuShare.objects.create(allocation=first, gpu=gpu, gpu_milli=600, start_at=NOW, end_at=NOW + hours(2))
    second = raw_allocation(customer, t4_node, start=NOW + hours(1), end=NOW + hours(3))

    with pytest.raises(IntegrityError, match="would hold 1001 milli"), transaction.atomic():
        GpuShare.objects.create(allocation=second, gpu=gpu, gpu_milli=401, start_at=NOW + hours(1), end_at=NOW + hours(3))


@pytest.mark.django_db
def test_direct_share_insert_that_fits_is_accepted(customer, t4_node):
    gpu = t4_node.gpus.get(index=0)
    first = raw_allocation(customer, t4_node)
    GpuShare.objects.create(allocation=first, gpu=gpu, gpu_milli=600, start_at=NOW, end_at=NOW + hours(2))
    second = raw_allocation(customer, t4_node)
    third = raw_allocation(customer, t4_node, start=NOW + hours(2), end=NOW + hours(4))

    GpuShare.objects.create(allocation=second, gpu=gpu, gpu_milli=400, start_at=NOW, end_at=NOW + hours(2))
    GpuShare.objects.create(allocation=third, gpu=gpu, gpu_milli=1000, start_at=NOW + hours(2), end_at=NOW + hours(4))

    assert GpuShare.objects.filter(gpu=gpu).count() == 3


@pytest.mark.django_db
def test_peak_is_per_instant_not_per_window(customer, t4_node):
    gpu = t4_node.gpus.get(index=0)
    morning = raw_allocation(customer, t4_node, start=NOW, end=NOW + hours(1))
    evening = raw_allocation(customer, t4_node, start=NOW + hours(2), end=NOW + hours(3))
    spanning = raw_allocation(customer, t4_node, start=NOW, end=NOW + hours(3))
    GpuShare.objects.create(allocation=morning, gpu=gpu, gpu_milli=600, start_at=NOW, end_at=NOW + hours(1))
    GpuShare.objects.create(allocation=evening, gpu=gpu, gpu_milli=600, start_at=NOW + hours(2), end_at=NOW + hours(3))

    GpuShare.objects.create(allocation=spanning, gpu=gpu, gpu_milli=400, start_at=NOW, end_at=NOW + hours(3))

    assert GpuShare.objects.filter(gpu=gpu).count() == 3


@pytest.mark.django_db
def test_direct_allocation_overcommitting_cpu_is_rejected(customer, t4_node):
    raw_allocation(customer, t4_node, cpu=60000)

    with pytest.raises(IntegrityError, match="CPU millicores"), transaction.atomic():
        raw_allocation(customer, t4_node, cpu=5000)


@pytest.mark.django_db
def test_direct_allocation_overcommitting_memory_is_rejected(customer, t4_node):
    raw_allocation(customer, t4_node, memory=200000)

    with pytest.raises(IntegrityError, match="MiB"), transaction.atomic():
        raw_allocation(customer, t4_node, memory=70000)


@pytest.mark.django_db
def test_direct_allocation_over_quota_is_rejected(customer, t4_node):
    quota_set(organization=customer, gpu_model=None, max_gpu_milli=1000)
    raw_allocation(customer, t4_node, gpu_milli_total=800)

    with pytest.raises(IntegrityError, match="quota is 1000"), transaction.atomic():
        raw_allocation(customer, t4_node, gpu_milli_total=300)


@pytest.mark.django_db
def test_shrinking_allocation_over_lowered_quota_is_allowed(customer, t4_node):
    allocation = raw_allocation(customer, t4_node, gpu_milli_total=800)
    quota_set(organization=customer, gpu_model=None, max_gpu_milli=100)

    allocation.end_at = NOW + hours(1)
    allocation.save(update_fields=["end_at"])

    allocation.refresh_from_db()
    assert allocation.end_at == NOW + hours(1)


@pytest.mark.django_db
def test_status_must_follow_lifecycle(customer, t4_node):
    reservation = reservation_create(customer=customer, spec=full_spec(), now=NOW)

    with pytest.raises(IntegrityError, match="cannot move from active to pending"), transaction.atomic():
        Reservation.objects.filter(pk=reservation.pk).update(status=ReservationStatus.PENDING)


@pytest.mark.django_db
def test_reservation_cannot_be_created_active(customer):
    with pytest.raises(IntegrityError, match="created pending"), transaction.atomic():
        Reservation.objects.create(customer=customer, gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=1,
                                   memory_mib=1, start_at=NOW, end_at=NOW + hours(1), status=ReservationStatus.ACTIVE)


@pytest.mark.django_db
def test_stale_choice_replanned_on_node(customer, t4_node, monkeypatch):
    busy, free = t4_node.gpus.get(index=0), t4_node.gpus.get(index=1)
    earlier = raw_allocation(customer, t4_node)
    GpuShare.objects.create(allocation=earlier, gpu=busy, gpu_milli=1000, start_at=NOW, end_at=NOW + hours(2))
    # A shortlist read before ``earlier`` committed would still offer GPU 0.
    stale = Placement(node_id=t4_node.pk, gpu_shares=((busy.pk, 1000),), score=0.0)
    monkeypatch.setattr(placement, "placement_rank", lambda **kwargs: [stale])

    reservation = reservation_create(customer=customer, spec=full_spec(), now=NOW)

    assert reservation.status == ReservationStatus.ACTIVE
    assert list(reservation.allocation.shares.values_list("gpu_id", "gpu_milli")) == [(free.pk, 1000)]


@pytest.mark.django_db
def test_failed_gpu_not_booked(customer, t4_node, monkeypatch):
    failed, healthy = t4_node.gpus.get(index=0), t4_node.gpus.get(index=1)
    stale = Placement(node_id=t4_node.pk, gpu_shares=((failed.pk, 1000),), score=0.0)
    monkeypatch.setattr(placement, "placement_rank", lambda **kwargs: [stale])
    Gpu.objects.filter(pk=failed.pk).update(health=Gpu.Health.FAILED)  # A heartbeat after the shortlist.

    reservation = reservation_create(customer=customer, spec=full_spec(), now=NOW)

    assert reservation.status == ReservationStatus.ACTIVE
    assert list(reservation.allocation.shares.values_list("gpu_id", flat=True)) == [healthy.pk]


@pytest.mark.django_db
def test_drained_node_not_booked(customer, t4_node, monkeypatch):
    gpu = t4_node.gpus.get(index=0)
    stale = Placement(node_id=t4_node.pk, gpu_shares=((gpu.pk, 1000),), score=0.0)
    monkeypatch.setattr(placement, "placement_rank", lambda **kwargs: [stale])
    Node.objects.filter(pk=t4_node.pk).update(status=Node.Status.DRAINING)

    reservation = reservation_create(customer=customer, spec=full_spec(), now=NOW)

    assert reservation.status == ReservationStatus.REJECTED
    assert not Allocation.objects.filter(node=t4_node).exists()


@pytest.mark.django_db
def test_node_in_maintenance_not_booked(customer, t4_node, monkeypatch):
    gpu = t4_node.gpus.get(index=0)
    stale = Placement(node_id=t4_node.pk, gpu_shares=((gpu.pk, 1000),), score=0.0)
    monkeypatch.setattr(placement, "placement_rank", lambda **kwargs: [stale])
    MaintenanceWindow.objects.create(node=t4_node, start_at=NOW + hours(1), end_at=NOW + hours(3))

    reservation = reservation_create(customer=customer, spec=full_spec(), now=NOW)

    assert reservation.status == ReservationStatus.REJECTED
    assert not Allocation.objects.filter(node=t4_node).exists()


def run_concurrently(functions):
    """Run each function in its own thread and database connection, released together; return results."""
    barrier = threading.Barrier(len(functions))
    results: list = [None] * len(functions)

    def worker(index, function):
        try:
            barrier.wait(timeout=10)
            results[index] = function()
        except Exception as error:  # noqa: BLE001 - the test inspects whatever each thread raised
            results[index] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i, f)) for i, f in enumerate(functions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.mark.django_db(transaction=True)
def test_race_for_last_gpu_has_one_winner(region):
    NodeFactory(hostname="last-gpu", gpu_count=1, region=region)
    customers = [CustomerFactory(slug=f"racer-{i}") for i in range(4)]

    results = run_concurrently([
        lambda c=c: reservation_create(customer=c, spec=full_spec(), now=NOW) for c in customers
    ])

    statuses = sorted(r.status for r in results)
    assert statuses == ["active", "rejected", "rejected", "rejected"]
    assert {r.reason_code for r in results if r.status == "rejected"} == {"no_capacity"}
    assert GpuShare.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_cannot_jointly_pass_quota(region):
    NodeFactory(hostname="roomy", gpu_count=8, region=region)
    customer = CustomerFactory(slug="quota-racer")
    quota_set(organization=customer, gpu_model=None, max_gpu_milli=2000)

    results = run_concurrently([
        lambda: reservation_create(customer=customer, spec=full_spec(), now=NOW) for _ in range(4)
    ])

    statuses = sorted(r.status for r in results)
    assert statuses == ["active", "active", "rejected", "rejected"]
    assert {r.reason_code for r in results if r.status == "rejected"} == {"quota_exceeded"}


@pytest.mark.django_db(transaction=True)
def test_concurrent_raw_inserts_without_locks_have_one_winner(region):
    """Two transactions that skip every Python check still cannot both fill one GPU."""
    node = NodeFactory(hostname="raw-race", gpu_count=1, region=region)
    customer = CustomerFactory(slug="raw-racer")
    gpu = Gpu.objects.get(node=node)
    first_inserted = threading.Event()

    def first():
        with transaction.atomic():
            allocation = raw_allocation(customer, node)
            GpuShare.objects.create(allocation=allocation, gpu=gpu, gpu_milli=700, start_at=NOW, end_at=NOW + hours(2))
            first_inserted.set()
            threading.Event().wait(0.5)
        return "committed"

    def second():
        first_inserted.wait(timeout=10)
        with transaction.atomic():
            allocation = raw_allocation(customer, node, cpu=1)
            GpuShare.objects.create(allocation=allocation, gpu=gpu, gpu_milli=700, start_at=NOW, end_at=NOW + hours(2))
        return "committed"

    results = run_concurrently([first, second])

    assert results[0] == "committed"
    assert isinstance(results[1], IntegrityError)
    assert GpuShare.objects.filter(gpu=gpu).count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_fill_node_exactly(region):
    """Racing requests re-plan on the locked node, so every GPU is used and none twice."""
    NodeFactory(hostname="eight-a", gpu_count=8, region=region)
    NodeFactory(hostname="eight-b", gpu_count=8, region=region)
    customers = [CustomerFactory(slug=f"filler-{i}") for i in range(18)]

    results = run_concurrently([
        lambda c=c: reservation_create(customer=c, spec=full_spec(), now=NOW) for c in customers
    ])

    statuses = [r.status for r in results]
    assert statuses.count("active") == 16
    assert statuses.count("rejected") == 2
    assert GpuShare.objects.values("gpu").distinct().count() == 16
