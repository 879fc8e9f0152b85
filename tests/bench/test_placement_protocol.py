"""The placement benchmark's harness: arrival order, the framework's tie rule and the lower bound."""

import numpy as np
import pytest

from allocation.solvers.online import BestFitPolicy, RandomPolicy
from bench.placement import (
    INFLATION, PUBLISHED, arrival_order, at_arrived, framework_pick, load_fleet, load_tasks, run,
    structural_lower_bound,
)


def test_arrival_order_shuffles_then_inflates():
    tasks = load_tasks()
    capacity = int(load_fleet().gpu_count.sum()) * 1000

    order = arrival_order(tasks, 42, capacity)

    assert sorted(order[: len(tasks)], key=repr) == sorted(tasks, key=repr)
    requested = sum(task.gpu_total for task in order)
    assert INFLATION * capacity - 8000 < requested <= INFLATION * capacity


def test_framework_pick_first_best_integer():
    scores = np.array([10.2, 97.9, 97.1, 50.0])

    assert framework_pick(BestFitPolicy(), scores, None) == 1
    assert framework_pick(RandomPolicy(), scores, None) == 1


def test_framework_pick_rescales_best_fit_before_comparing():
    # 96 and 97 become 0 and 100 after rescaling; the cut to integers makes 97.2 and 97.9 equal.
    assert framework_pick(BestFitPolicy(), np.array([96.5, 97.2, 97.9]), None) == 1


def test_reimplemented_best_fit_lands_near_the_published_figure():
    result = run("best_fit", 42)

    assert at_arrived(result, 100, "unallocated") == pytest.approx(PUBLISHED["best_fit"]["at_100"], abs=1.0)


def test_lower_bound_is_positive_and_below_every_policy():
    bound = structural_lower_bound(42)

    assert 2.0 < bound < PUBLISHED["fgd"]["at_100"]
