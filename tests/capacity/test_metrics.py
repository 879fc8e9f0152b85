"""The hourly rollup of reservations into demand, allocation and capacity series."""

from datetime import timedelta
from datetime import timezone as dt_timezone

import pytest

from allocation.models import ReservationStatus
from allocation.services import ReservationSpec, reservation_cancel, reservation_create
from capacity.metrics import ROLLUP_CHUNK, metrics_rollup, metrics_rollup_all
from capacity.models import DemandPoint, DemandSeries
from marketplace.models import GpuModel

from ..conftest import hours
from ..factories import NodeFactory, gpu_model

pytestmark = pytest.mark.django_db


def reserve(customer, now, start, end, *, gpus=1, milli=1000, models=(), ref=""):
    return reservation_create(customer=customer, now=now, spec=ReservationSpec(
        gpu_count=gpus, gpu_milli_per_gpu=milli, cpu_millicores=1000, memory_mib=1024,
        start_at=now + start, end_at=now + end, gpu_models=tuple(models), external_ref=ref,
    ))


def values(series_label, field, start, count):
    points = DemandPoint.objects.filter(series__label=series_label, hour__gte=start).order_by("hour")[:count]
    return [round(getattr(point, field), 4) for point in points]


@pytest.fixture
def fleet(region):
    return NodeFactory(hostname="t4-a", gpu_count=2, region=region)


def test_placed_request_counts_hour_fractions(customer, fleet, now):
    reserve(customer, now, hours(1), hours(3))
    reserve(customer, now, hours(1.5), hours(2), milli=460)

    summary = metrics_rollup(start=now, end=now + hours(4))

    key = "T4 in eu-central"
    assert summary.hours == 4
    assert values(key, "demand", now, 4) == [0.0, 1.23, 1.0, 0.0]
    assert values(key, "allocated", now, 4) == [0.0, 1.23, 1.0, 0.0]
    assert values(key, "capacity", now, 4) == [2.0, 2.0, 2.0, 2.0]


def test_rollup_all_counts_each_reservation_once(customer, fleet, now):
    """Three reservations, one in each monthly chunk and one across both, count three over the whole history."""
    reserve(customer, now, hours(1), hours(2))
    boundary = hours(1) + ROLLUP_CHUNK
    reserve(customer, now, boundary - hours(2), boundary + hours(2))
    reserve(customer, now, boundary + hours(5), boundary + hours(6))

    summary = metrics_rollup_all(now=now + ROLLUP_CHUNK + timedelta(days=5))

    assert summary.reservations == 3


def test_rejected_request_is_unmet_demand(customer, fleet, now):
    rejected = reserve(customer, now, hours(1), hours(2), gpus=3, models=["T4"])
    assert rejected.status == ReservationStatus.REJECTED

    metrics_rollup(start=now, end=now + hours(3))

    assert values("T4 in eu-central", "demand", now, 3) == [0.0, 3.0, 0.0]
    assert values("T4 in eu-central", "allocated", now, 3) == [0.0, 0.0, 0.0]


def test_model_without_nodes_gets_series(customer, fleet, now):
    reserve(customer, now, hours(1), hours(2), models=["A10"])

    metrics_rollup(start=now, end=now + hours(2))

    series = DemandSeries.objects.get(label="A10 in any region")
    assert series.gpu_model == gpu_model("A10")
    assert values("A10 in any region", "demand", now, 2) == [0.0, 1.0]
    assert values("A10 in any region", "capacity", now, 2) == [0.0, 0.0]


def test_cancelled_request_counts_only_the_time_it_held(customer, fleet, now):
    reservation = reserve(customer, now, timedelta(0), hours(4))
    reservation_cancel(reservation_id=reservation.pk, now=now + hours(1.5))

    metrics_rollup(start=now, end=now + hours(4))

    assert values("T4 in eu-central", "demand", now, 4) == [1.0, 0.5, 0.0, 0.0]


def test_recomputing_a_range_is_idempotent(customer, fleet, now):
    reserve(customer, now, hours(1), hours(3))
    metrics_rollup(start=now, end=now + hours(4))
    first = list(DemandPoint.objects.order_by("series_id", "hour").values_list("series_id", "hour", "demand"))

    metrics_rollup(start=now, end=now + hours(4))
    metrics_rollup(start=now + hours(1), end=now + hours(2))

    assert list(DemandPoint.objects.order_by("series_id", "hour").values_list("series_id", "hour", "demand")) == first


def test_range_widens_to_whole_hours(customer, fleet, now):
    summary = metrics_rollup(start=now + timedelta(minutes=10), end=now + timedelta(minutes=70))
    assert summary.hours == 2

    with pytest.raises(ValueError, match="not after its start"):
        metrics_rollup(start=now, end=now)


def test_series_keys_survive_case_and_renames(customer, fleet, now):
    NodeFactory(hostname="lower-t4", gpu_count=1, region=fleet.region,
                gpu_model=GpuModel.objects.create(name="t4", vendor="NVIDIA"))
    reserve(customer, now, hours(1), hours(2), models=["T4"])
    metrics_rollup(start=now, end=now + hours(2))

    model = gpu_model("T4")
    model.name = "T4 16GB"
    model.save()
    metrics_rollup(start=now, end=now + hours(2))

    assert DemandSeries.objects.count() == 2
    assert values("T4 16GB in eu-central", "demand", now, 2) == [0.0, 1.0]
    assert values("t4 in eu-central", "capacity", now, 2) == [1.0, 1.0]


def test_offsets_and_naive_datetimes(customer, fleet, now):
    india = dt_timezone(timedelta(hours=5, minutes=30))
    summary = metrics_rollup(start=now.astimezone(india), end=(now + hours(2)).astimezone(india))
    assert summary.start == now.isoformat()
    assert not DemandPoint.objects.exclude(hour__minute=0).exists()

    with pytest.raises(ValueError, match="no UTC offset"):
        metrics_rollup(start=now.replace(tzinfo=None), end=now.replace(tzinfo=None) + hours(1))
    with pytest.raises(ValueError, match="not after its start"):
        metrics_rollup(start=now + timedelta(minutes=40), end=now + timedelta(minutes=10))
