"""The scheduling cycle's core: order, fair share, backfill, strict queues, preemption, no inversions."""

import numpy as np
import pytest

from allocation.solvers.base import PlacementRequest
from allocation.solvers.fleet import Fleet
from allocation.solvers.online import policy_by_name
from scheduler.core import Booking, CycleConfig, Running, Timeline, Waiting, priority_inversions, run_cycle

HOUR = 3600.0


def gpus(count: int, milli: int = 1000) -> PlacementRequest:
    return PlacementRequest(gpu_count=count, gpu_milli_per_gpu=milli, cpu_millicores=1000, memory_mib=1024)


def fleet(*gpu_counts: int, models: tuple[str, ...] | None = None) -> Fleet:
    size = len(gpu_counts)
    return Fleet.build(cpu=[64000] * size, memory=[256000] * size, gpu_count=list(gpu_counts),
                       models=list(models or ["T4"] * size), price=[1.0] * size)


def running(key: int, row: int, columns: tuple[int, ...], *, priority: int = 100, end: float = HOUR,
            preemptible: bool = True, borrowed: int = 0, protected_for: float = 0.0, elapsed: float = HOUR) -> Running:
    booking = Booking(key=key, row=row, columns=columns, gpu_milli_per_gpu=1000, cpu_millicores=1000,
                      memory_mib=1024, start=-elapsed, end=end)
    return Running(booking=booking, organization=99, priority=priority, preemptible=preemptible,
                   borrowed_milli=borrowed, protected_for=protected_for, elapsed=elapsed)


def cycle(capacity: Fleet, waiting, work=(), **config):
    timeline = Timeline(capacity, [item.booking for item in work])
    result = run_cycle(timeline, waiting, list(work), policy_by_name("best_fit"), config=CycleConfig(**config))
    return result, timeline


def test_higher_priority_gets_the_last_gpu():
    waiting = [Waiting(1, 1, gpus(1), HOUR, priority=100, submitted=0),
               Waiting(2, 2, gpus(1), HOUR, priority=500, submitted=10)]

    result, _ = cycle(fleet(1), waiting)

    assert [placed.key for placed in result.placed] == [2]
    assert result.waiting[0].key == 1
    assert result.waiting[0].position == 1


def test_fair_share_prefers_the_organization_that_used_less():
    waiting = [Waiting(1, 1, gpus(1), HOUR, submitted=0), Waiting(2, 2, gpus(1), HOUR, submitted=5)]
    timeline = Timeline(fleet(1), [])

    result = run_cycle(timeline, waiting, [], policy_by_name("best_fit"), usage={1: (4000.0, 0.0, 0.0)})

    assert [placed.key for placed in result.placed] == [2]


def test_fair_share_alternates_organizations_within_one_cycle():
    waiting = [Waiting(key, 1, gpus(1), HOUR, submitted=key) for key in (1, 2, 3)]
    waiting += [Waiting(key, 2, gpus(1), HOUR, submitted=key) for key in (4, 5, 6)]

    result, _ = cycle(fleet(4), waiting)

    assert sorted(placed.key for placed in result.placed) == [1, 2, 4, 5]


def test_blocked_request_gets_an_estimated_start_when_work_ends():
    work = [running(100, 0, (0, 1), end=2 * HOUR)]
    waiting = [Waiting(1, 1, gpus(2), HOUR)]

    result, _ = cycle(fleet(2), waiting, work)

    assert result.waiting[0].reason_code == "no_capacity"
    assert result.waiting[0].estimated_start == pytest.approx(2 * HOUR)


def test_backfill_starts_a_short_request_that_ends_before_the_held_window():
    work = [running(100, 0, (0,), end=2 * HOUR)]
    waiting = [Waiting(1, 1, gpus(2), HOUR, submitted=0),
               Waiting(2, 2, gpus(1), HOUR, submitted=1),
               Waiting(3, 3, gpus(1), 3 * HOUR, submitted=2)]

    result, _ = cycle(fleet(2), waiting, work)

    assert [placed.key for placed in result.placed] == [2]
    assert result.placed[0].backfilled
    reasons = {decision.key: decision for decision in result.waiting}
    assert reasons[1].estimated_start == pytest.approx(2 * HOUR)
    assert reasons[3].reason_code == "no_capacity"


def test_strict_fifo_queue_lets_no_one_pass_its_blocked_head():
    work = [running(100, 0, (0,), end=2 * HOUR)]
    waiting = [Waiting(1, 1, gpus(2), HOUR, submitted=0, queue="fifo"),
               Waiting(2, 2, gpus(1), HOUR, submitted=1, queue="fifo"),
               Waiting(3, 3, gpus(1), HOUR, submitted=2, queue="default")]

    result, _ = cycle(fleet(2), waiting, work, strict_fifo_queues=frozenset({"fifo"}))

    assert [placed.key for placed in result.placed] == [3]
    assert {d.key: d.reason_code for d in result.waiting}[2] == "behind_strict_head"


def test_future_booking_keeps_a_long_request_off_the_node():
    future = Booking(key=100, row=0, columns=(0,), gpu_milli_per_gpu=1000, cpu_millicores=0, memory_mib=0,
                     start=HOUR, end=3 * HOUR)
    timeline = Timeline(fleet(1, 1), [future])
    waiting = [Waiting(1, 1, gpus(1), 2 * HOUR)]

    result = run_cycle(timeline, waiting, [], policy_by_name("best_fit"))

    assert [(placed.key, placed.row) for placed in result.placed] == [(1, 1)]


def test_preemption_takes_the_cheapest_victims():
    work = [running(100, 0, (0,), priority=100, elapsed=5 * HOUR),
            running(101, 1, (0,), priority=100, borrowed=1000, elapsed=5 * HOUR),
            running(102, 2, (0,), priority=300)]
    waiting = [Waiting(1, 1, gpus(1), HOUR, priority=500, can_preempt=True)]

    result, _ = cycle(fleet(1, 1, 1), waiting, work)

    assert len(result.preemptions) == 1
    plan = result.preemptions[0]
    assert plan.victims == (101,)
    assert plan.row == 1
    assert result.waiting[0].reason_code == "preemption_proposed"


@pytest.mark.parametrize("victim", [
    dict(priority=500), dict(priority=900), dict(preemptible=False), dict(protected_for=60.0),
])
def test_preemption_never_takes_equal_higher_protected_or_guaranteed_work(victim):
    waiting = [Waiting(1, 1, gpus(1), HOUR, priority=500, can_preempt=True)]

    result, _ = cycle(fleet(1), waiting, [running(100, 0, (0,), **victim)])

    assert result.preemptions == []


def test_request_that_can_never_fit_preempts_nothing():
    waiting = [Waiting(1, 1, gpus(4), HOUR, priority=500, can_preempt=True)]

    result, _ = cycle(fleet(2), waiting, [running(100, 0, (0, 1))])

    assert result.preemptions == []
    assert result.waiting[0].reason_code == "never_fits"


def test_one_victim_is_never_promised_to_two_beneficiaries():
    waiting = [Waiting(key, key, gpus(1), HOUR, priority=500, can_preempt=True, submitted=key) for key in (1, 2)]

    result, _ = cycle(fleet(1), waiting, [running(100, 0, (0,))])

    assert [plan.beneficiary for plan in result.preemptions] == [1]


def test_unnecessary_victims_are_dropped_again():
    work = [running(100, 0, (0,), priority=100, elapsed=HOUR), running(101, 0, (1,), priority=50, elapsed=9 * HOUR)]
    waiting = [Waiting(1, 1, gpus(1, 1000), HOUR, priority=500, can_preempt=True)]

    result, _ = cycle(fleet(2), waiting, work)

    assert result.preemptions[0].victims == (101,)


@pytest.mark.parametrize("seed", range(5))
def test_random_queues_leave_no_priority_inversion(seed):
    random = np.random.default_rng(seed)
    capacity = fleet(*random.integers(1, 9, size=30))
    work = [running(1000 + row, row, (0,), end=float(random.integers(1, 10)) * HOUR) for row in range(0, 30, 3)]
    waiting = [
        Waiting(key, int(random.integers(1, 6)), gpus(int(random.integers(1, 5)), int(random.choice([250, 500, 1000]))),
                float(random.integers(1, 8)) * HOUR, priority=int(random.choice([100, 500, 1000])),
                submitted=float(key), can_preempt=bool(random.random() < 0.2))
        for key in range(400)
    ]
    timeline = Timeline(capacity, [item.booking for item in work])

    result = run_cycle(timeline, waiting, work, policy_by_name("best_fit"), config=CycleConfig(reserve_depth=20))

    assert result.placed
    assert result.waiting
    assert priority_inversions(result.placed, result.waiting, waiting, timeline) == 0
    assert (timeline.gpu_free >= 0).all()
    assert (timeline.cpu_free >= 0).all()


def test_batch_optimizer_places_more_of_one_priority_than_the_order_would():
    capacity = Fleet.build(cpu=[8000, 8000, 8000], memory=[64000] * 3, gpu_count=[2, 2, 1], models=["T4"] * 3)
    shapes = [(2, 500, 4000), (2, 1000, 1000), (2, 1000, 6000)]
    waiting = [Waiting(key, key, PlacementRequest(count, milli, cpu, 1000), HOUR, submitted=key)
               for key, (count, milli, cpu) in enumerate(shapes)]

    ordered = run_cycle(Timeline(capacity, []), waiting, [], policy_by_name("best_fit"))
    batched = run_cycle(Timeline(capacity, []), waiting, [], policy_by_name("best_fit"),
                        config=CycleConfig(batch_solver=True))

    assert sorted(placed.key for placed in ordered.placed) == [0, 1]
    assert sorted(placed.key for placed in batched.placed) == [1, 2]
    assert batched.batch_runs[0]["placed_milli"] == 4000
    assert batched.batch_runs[0]["greedy_milli"] == 3000


def test_batch_optimizer_keeps_the_order_when_it_places_no_more():
    waiting = [Waiting(1, 1, gpus(1), HOUR, submitted=0), Waiting(2, 2, gpus(1), HOUR, submitted=5)]

    result = run_cycle(Timeline(fleet(1), []), waiting, [], policy_by_name("best_fit"),
                       usage={1: (4000.0, 0.0, 0.0)}, config=CycleConfig(batch_solver=True))

    assert [placed.key for placed in result.placed] == [2]


def test_future_request_waits_for_its_start():
    waiting = [Waiting(1, 1, gpus(1), HOUR, not_before=HOUR)]

    result, _ = cycle(fleet(1), waiting)

    assert result.waiting[0].reason_code == "not_before_start"
    assert result.waiting[0].estimated_start == pytest.approx(HOUR)


def test_future_request_estimate_skips_a_booked_window():
    booked = Booking(key=100, row=0, columns=(0,), gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024,
                     start=0.5 * HOUR, end=3 * HOUR)
    timeline = Timeline(fleet(1), [booked])
    waiting = [Waiting(1, 1, gpus(1), HOUR, not_before=HOUR)]

    result = run_cycle(timeline, waiting, [], policy_by_name("best_fit"))

    assert result.waiting[0].reason_code == "no_capacity"
    assert result.waiting[0].estimated_start == pytest.approx(3 * HOUR)


def test_estimate_after_a_held_window_on_one_node():
    """A one-GPU node busy until t=100: after holding [100, 200) for one request, the next can start at 200."""
    booked = Booking(key=1, row=0, columns=(0,), gpu_milli_per_gpu=1000, cpu_millicores=0, memory_mib=0,
                     start=0.0, end=100.0)
    timeline = Timeline(fleet(1), [booked])
    allowed = np.ones(1, dtype=bool)
    first = timeline.earliest_start(gpus(1), allowed, 100.0)
    timeline.hold(0, first[2], gpus(1), first[0], first[0] + 100.0)

    second = timeline.earliest_start(gpus(1), allowed, 100.0)

    assert first[0] == 100.0
    assert second is not None
    assert second[0] == 200.0


def test_queued_requests_on_one_node_get_successive_estimates():
    work = [running(100, 0, (0,), end=HOUR)]
    waiting = [Waiting(key, key, gpus(1), HOUR, submitted=key) for key in (1, 2, 3)]

    result, _ = cycle(fleet(1), waiting, work)

    estimates = sorted(decision.estimated_start for decision in result.waiting)
    assert estimates == pytest.approx([HOUR, 2 * HOUR, 3 * HOUR])


def test_estimate_after_a_placement_on_one_node():
    """One idle one-GPU node: the first request starts now for an hour, so the second can start at one hour."""
    waiting = [Waiting(1, 1, gpus(1), HOUR, submitted=1), Waiting(2, 2, gpus(1), HOUR, submitted=2)]

    result, _ = cycle(fleet(1), waiting)

    assert [placed.key for placed in result.placed] == [1]
    [decision] = result.waiting
    assert decision.estimated_start == pytest.approx(HOUR), (decision.reason_code, decision.estimated_start)
