"""The reservation service: admission, placement, rejection reasons, events and cancellation."""

from decimal import Decimal

import pytest

from allocation.models import Allocation, GpuShare, Reservation, ReservationEvent, ReservationStatus
from allocation.services import DuplicateExternalRef, ReservationSpec, quota_set, reservation_cancel, reservation_create
from marketplace.exceptions import InvalidRequest, InvalidTransition
from marketplace.models import Gpu, Node

from ..conftest import NOW, hours
from ..factories import NodeFactory, RegionFactory, gpu_model

pytestmark = pytest.mark.django_db


def spec(**overrides) -> ReservationSpec:
    values = dict(
        gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=8000, memory_mib=16384,
        start_at=NOW, end_at=NOW + hours(2),
    )
    values.update(overrides)
    return ReservationSpec(**values)


def reserve(customer, **overrides) -> Reservation:
    return reservation_create(customer=customer, spec=spec(**overrides), now=NOW)


def test_placed_reservation_is_active_with_allocation(customer, t4_node):
    reservation = reserve(customer)

    assert reservation.status == ReservationStatus.ACTIVE
    allocation = Allocation.objects.get(reservation=reservation)
    assert allocation.node == t4_node
    assert allocation.price_per_gpu_hour == Decimal("1.0000")
    assert allocation.gpu_milli_total == 1000
    assert list(allocation.shares.values_list("gpu_milli", flat=True)) == [1000]


def test_future_window_is_scheduled(customer, t4_node):
    reservation = reserve(customer, start_at=NOW + hours(24), end_at=NOW + hours(26))

    assert reservation.status == ReservationStatus.SCHEDULED


def test_events_record_every_transition(customer, t4_node):
    reservation = reserve(customer)

    events = list(ReservationEvent.objects.filter(reservation=reservation).values_list("from_status", "to_status"))
    assert events == [("", "pending"), ("pending", "active")]


def test_best_fit_prefers_partly_used_gpu(customer, region):
    busy = NodeFactory(hostname="busy", gpu_count=2, region=region)
    NodeFactory(hostname="empty", gpu_count=2, region=region)
    reserve(customer, gpu_milli_per_gpu=500, cpu_millicores=1000, memory_mib=1024)

    second = reserve(customer, gpu_milli_per_gpu=400, cpu_millicores=1000, memory_mib=1024)

    first_gpu = GpuShare.objects.filter(allocation__node=busy).order_by("id").first().gpu_id
    second_share = GpuShare.objects.get(allocation__reservation=second)
    assert second.allocation.node == busy
    assert second_share.gpu_id == first_gpu


def test_best_fit_prefers_smaller_node_when_all_empty(customer, region):
    NodeFactory(hostname="eight", gpu_count=8, region=region)
    two = NodeFactory(hostname="two", gpu_count=2, region=region)

    reservation = reserve(customer)

    assert reservation.allocation.node == two


def test_multi_gpu_request_lands_on_one_node(customer, region):
    NodeFactory(hostname="two", gpu_count=2, region=region)
    eight = NodeFactory(hostname="eight", gpu_count=8, region=region)

    reservation = reserve(customer, gpu_count=4)

    assert reservation.allocation.node == eight
    assert reservation.allocation.shares.count() == 4


def test_back_to_back_windows_share_a_gpu(customer, region):
    NodeFactory(hostname="single", gpu_count=1, region=region)

    first = reserve(customer, start_at=NOW, end_at=NOW + hours(1))
    second = reserve(customer, start_at=NOW + hours(1), end_at=NOW + hours(2))

    assert first.status == ReservationStatus.ACTIVE
    assert second.status == ReservationStatus.SCHEDULED


def test_overlapping_window_on_full_gpu_is_rejected(customer, region):
    NodeFactory(hostname="single", gpu_count=1, region=region)
    reserve(customer, start_at=NOW, end_at=NOW + hours(2))

    late = reserve(customer, start_at=NOW + hours(1), end_at=NOW + hours(3))

    assert late.status == ReservationStatus.REJECTED
    assert late.reason_code == "no_capacity"
    assert "Choose another window" in late.reason_detail
    assert not Allocation.objects.filter(reservation=late).exists()


def test_cpu_shortage_is_no_capacity(customer, region):
    NodeFactory(hostname="small-cpu", gpu_count=2, cpu_millicores=10000, region=region)
    reserve(customer, cpu_millicores=8000)

    second = reserve(customer, cpu_millicores=8000)

    assert second.reason_code == "no_capacity"


def test_oversized_shape_is_no_matching_node(customer, t4_node):
    reservation = reserve(customer, gpu_count=8)

    assert reservation.status == ReservationStatus.REJECTED
    assert reservation.reason_code == "no_matching_node"


def test_low_price_cap_is_price_above_maximum(customer, t4_node):
    reservation = reserve(customer, max_price_per_gpu_hour=Decimal("0.50"))

    assert reservation.reason_code == "price_above_maximum"
    assert "0.50" in reservation.reason_detail


def test_price_cap_picks_cheaper_node(customer, region):
    NodeFactory(hostname="pricey", gpu_count=1, price_per_gpu_hour=Decimal("3.00"), region=region)
    cheap = NodeFactory(hostname="cheap", gpu_count=2, price_per_gpu_hour=Decimal("0.40"), region=region)

    reservation = reserve(customer, max_price_per_gpu_hour=Decimal("1.00"))

    assert reservation.allocation.node == cheap


def test_gpu_model_filter(customer, region):
    NodeFactory(hostname="t4", gpu_count=1, region=region)
    v100 = NodeFactory(hostname="v100", gpu_count=2, gpu_model=gpu_model("V100M32"), region=region)

    reservation = reserve(customer, gpu_models=("V100M32",))

    assert reservation.allocation.node == v100
    assert list(reservation.gpu_models.values_list("name", flat=True)) == ["V100M32"]


def test_region_filter(customer, region):
    NodeFactory(hostname="eu", gpu_count=1, region=region)
    us = NodeFactory(hostname="us", gpu_count=2, region=RegionFactory(code="us-east", name="US East"))

    reservation = reserve(customer, region="us-east")

    assert reservation.allocation.node == us


def test_unhealthy_gpu_is_not_used(customer, region):
    node = NodeFactory(hostname="half-broken", gpu_count=2, region=region)
    broken = node.gpus.get(index=0)
    broken.health = Gpu.Health.FAILED
    broken.save()

    first = reserve(customer)
    second = reserve(customer)

    assert first.allocation.shares.get().gpu_id == node.gpus.get(index=1).id
    assert second.reason_code == "no_capacity"


def test_draining_node_takes_no_reservation(customer, t4_node):
    Node.objects.filter(pk=t4_node.pk).update(status=Node.Status.DRAINING)

    reservation = reserve(customer)

    assert reservation.reason_code == "no_matching_node"


def test_any_model_quota_rejects_excess(customer, t4_node):
    quota_set(organization=customer, gpu_model=None, max_gpu_milli=1500)
    reserve(customer)

    second = reserve(customer, gpu_milli_per_gpu=600)

    assert second.status == ReservationStatus.REJECTED
    assert second.reason_code == "quota_exceeded"
    assert "1500" in second.reason_detail


def test_quota_counts_only_overlapping_windows(customer, t4_node):
    quota_set(organization=customer, gpu_model=None, max_gpu_milli=1000)
    reserve(customer, start_at=NOW, end_at=NOW + hours(1))

    later = reserve(customer, start_at=NOW + hours(1), end_at=NOW + hours(2))

    assert later.status == ReservationStatus.SCHEDULED


def test_model_quota_steers_to_other_model(customer, region):
    NodeFactory(hostname="t4", gpu_count=2, region=region)
    v100 = NodeFactory(hostname="v100", gpu_count=2, gpu_model=gpu_model("V100M16"), region=region)
    quota_set(organization=customer, gpu_model=gpu_model("T4"), max_gpu_milli=0)

    reservation = reserve(customer)

    assert reservation.allocation.node == v100


def test_model_quota_rejects_when_only_model_allowed(customer, t4_node):
    quota_set(organization=customer, gpu_model=gpu_model("T4"), max_gpu_milli=500)

    reservation = reserve(customer, gpu_models=("T4",))

    assert reservation.reason_code == "quota_exceeded"
    assert "T4" in reservation.reason_detail


def test_quota_of_other_customer_is_separate(customer, other_customer, t4_node):
    quota_set(organization=customer, gpu_model=None, max_gpu_milli=1000)
    reserve(customer)

    other = reserve(other_customer)

    assert other.status == ReservationStatus.ACTIVE


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"end_at": NOW}, "end_at"),
        ({"start_at": NOW.replace(tzinfo=None)}, "start_at"),
        ({"start_at": NOW - hours(1), "end_at": NOW + hours(1)}, "start_at"),
        ({"gpu_milli_per_gpu": 1001}, "gpu_milli_per_gpu"),
        ({"gpu_milli_per_gpu": 0}, "gpu_milli_per_gpu"),
        ({"gpu_count": 0, "gpu_milli_per_gpu": 500}, "gpu_milli_per_gpu"),
        ({"gpu_count": -1}, "gpu_count"),
        ({"gpu_models": ("H100",)}, "gpu_models"),
        ({"region": "mars"}, "region"),
        ({"max_price_per_gpu_hour": Decimal("-1")}, "max_price_per_gpu_hour"),
        ({"cpu_millicores": -5}, "cpu_millicores"),
    ],
)
def test_invalid_spec_raises_and_writes_nothing(customer, t4_node, overrides, field):
    with pytest.raises(InvalidRequest) as raised:
        reserve(customer, **overrides)

    assert field in [problem.field for problem in raised.value.errors]
    assert Reservation.objects.count() == 0
    assert ReservationEvent.objects.count() == 0


def test_provider_cannot_reserve(t4_node):
    with pytest.raises(InvalidRequest) as raised:
        reserve(t4_node.provider)

    assert raised.value.code == "not_a_customer"


def test_cpu_only_request_uses_node_cpu(customer, t4_node):
    reservation = reserve(customer, gpu_count=0, gpu_milli_per_gpu=0, cpu_millicores=4000)

    assert reservation.status == ReservationStatus.ACTIVE
    assert reservation.allocation.shares.count() == 0
    assert reservation.allocation.cpu_millicores == 4000


def test_duplicate_external_ref_is_rejected(customer, t4_node):
    first = reserve(customer, external_ref="job-1")

    with pytest.raises(DuplicateExternalRef) as raised:
        reserve(customer, external_ref="job-1")

    assert raised.value.extra["reservation_id"] == first.pk
    assert Reservation.objects.count() == 1


def test_cancel_releases_capacity_for_rest_of_window(customer, region):
    NodeFactory(hostname="single", gpu_count=1, region=region)
    first = reserve(customer, start_at=NOW, end_at=NOW + hours(4))

    reservation_cancel(reservation_id=first.pk, now=NOW + hours(1))
    second = reservation_create(customer=customer, spec=spec(start_at=NOW + hours(1), end_at=NOW + hours(3)),
                                now=NOW + hours(1))

    first.refresh_from_db()
    allocation = Allocation.objects.get(reservation=first)
    assert first.status == ReservationStatus.CANCELLED
    assert allocation.end_at == NOW + hours(1)
    assert allocation.released_at == NOW + hours(1)
    assert second.status == ReservationStatus.ACTIVE


def test_cancel_releases_quota(customer, t4_node):
    quota_set(organization=customer, gpu_model=None, max_gpu_milli=1000)
    first = reserve(customer, start_at=NOW + hours(1), end_at=NOW + hours(2))

    reservation_cancel(reservation_id=first.pk, now=NOW)
    second = reserve(customer, start_at=NOW + hours(1), end_at=NOW + hours(2))

    assert second.status == ReservationStatus.SCHEDULED


def test_cancel_of_rejected_reservation_is_invalid_transition(customer, t4_node):
    rejected = reserve(customer, gpu_count=8)

    with pytest.raises(InvalidTransition):
        reservation_cancel(reservation_id=rejected.pk, now=NOW)


def test_cancel_twice_is_invalid_transition(customer, t4_node):
    reservation = reserve(customer)
    reservation_cancel(reservation_id=reservation.pk, now=NOW)

    with pytest.raises(InvalidTransition) as raised:
        reservation_cancel(reservation_id=reservation.pk, now=NOW)

    assert raised.value.extra == {"current_status": "cancelled", "requested_status": "cancelled"}


def test_long_window_fits_around_two_short_bookings(customer, other_customer, region):
    NodeFactory(hostname="single", gpu_count=1, region=region)
    reserve(customer, gpu_milli_per_gpu=600, start_at=NOW, end_at=NOW + hours(1))
    reserve(customer, gpu_milli_per_gpu=600, start_at=NOW + hours(2), end_at=NOW + hours(3))

    spanning = reserve(other_customer, gpu_milli_per_gpu=400, start_at=NOW, end_at=NOW + hours(3))

    assert spanning.status == ReservationStatus.ACTIVE


def test_quota_counts_peak_not_sum(customer, region):
    NodeFactory(hostname="eight", gpu_count=8, region=region)
    quota_set(organization=customer, gpu_model=None, max_gpu_milli=5000)
    reserve(customer, gpu_count=3, start_at=NOW, end_at=NOW + hours(1))
    reserve(customer, gpu_count=3, start_at=NOW + hours(2), end_at=NOW + hours(3))

    spanning = reserve(customer, gpu_count=2, start_at=NOW, end_at=NOW + hours(3))
    over = reserve(customer, gpu_count=1, start_at=NOW, end_at=NOW + hours(3))

    assert spanning.status == ReservationStatus.ACTIVE
    assert over.reason_code == "quota_exceeded"
    assert "up to 5000 GPU milli at once" in over.reason_detail
