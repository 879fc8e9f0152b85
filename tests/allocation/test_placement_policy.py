"""The configured placement policy and the target workload that the FGD policies keep room for."""

import pytest

from allocation.placement_policy import forget_target_workload, placement_policy, target_workload
from allocation.solvers import TaskShape
from allocation.solvers.online import BestFitPolicy, FgdBestFitPolicy

from .test_reservation_create import reserve

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_workload():
    forget_target_workload()
    yield
    forget_target_workload()


def test_default_policy_comes_from_settings(settings):
    settings.MARKETPLACE = {**settings.MARKETPLACE, "PLACEMENT_POLICY": "fgd_best_fit"}

    assert isinstance(placement_policy(), FgdBestFitPolicy)


def test_policy_named_per_call_wins_over_settings():
    assert isinstance(placement_policy("best_fit"), BestFitPolicy)


def test_unknown_policy_is_refused_with_the_valid_names():
    with pytest.raises(KeyError, match="Use one of: best_fit"):
        placement_policy("nosuch")


def test_target_workload_falls_back_to_the_bundled_trace():
    workload = target_workload()

    assert workload.shapes[0] == TaskShape(3152, 1, 810)
    assert sum(workload.weights) == pytest.approx(1.0)


def test_target_workload_learns_from_recent_reservations(settings, customer, t4_node):
    settings.MARKETPLACE = {**settings.MARKETPLACE, "TARGET_WORKLOAD_MIN_REQUESTS": 3}
    for _ in range(3):
        reserve(customer, gpu_milli_per_gpu=250, cpu_millicores=1000)
    forget_target_workload()  # Each reservation above already read the workload, before the others existed.

    workload = target_workload()

    assert workload.shapes == (TaskShape(1000, 1, 250),)


def test_target_workload_is_cached_until_forgotten(settings, customer, t4_node):
    first = target_workload()
    settings.MARKETPLACE = {**settings.MARKETPLACE, "TARGET_WORKLOAD_MIN_REQUESTS": 1}
    reserve(customer, gpu_milli_per_gpu=250, cpu_millicores=1000)

    assert target_workload() is first
    assert first.shapes[0] == TaskShape(3152, 1, 810)
    forget_target_workload()
    assert target_workload().shapes == (TaskShape(1000, 1, 250),)
