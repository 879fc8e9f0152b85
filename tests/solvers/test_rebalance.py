"""Choosing rebalancing moves: best score first, at most one per reservation and node, never against the customer's wish."""

import pytest

from allocation.solvers import PlacementRequest
from allocation.solvers.rebalance import MOVE_POINTS, MoveCandidate, TargetFree, choose_moves


def move(reservation_id, from_node, to_node, *, fragment=0.0, degraded=0, saving=0.0, running=0.0, pinned=False,
         milli=1000, cpu=1000, target_free=None):
    return MoveCandidate(reservation_id=reservation_id, from_node_id=from_node, to_node_id=to_node, gpu_shares=(),
                         fragment_removed_milli=fragment, degraded_milli=degraded, saving=saving,
                         running_hours=running, do_not_migrate=pinned,
                         request=PlacementRequest(1, milli, cpu, 1024), target_free=target_free)


def test_best_scores_come_first_up_to_the_limit():
    candidates = [move(1, 10, 11, saving=5), move(2, 12, 13, degraded=1000), move(3, 14, 15, fragment=3000)]

    chosen = choose_moves(candidates, 2)

    assert [candidate.reservation_id for candidate in chosen] == [2, 3]


def test_moves_without_net_gain_are_left_out():
    assert choose_moves([move(1, 10, 11, saving=MOVE_POINTS)], 5) == []


def test_running_work_counts_as_disruption():
    assert choose_moves([move(1, 10, 11, saving=10, running=2)], 5) == []


def test_do_not_migrate_is_never_moved():
    assert choose_moves([move(1, 10, 11, degraded=1000, pinned=True)], 5) == []


def test_one_move_per_reservation():
    candidates = [move(1, 10, 11, saving=30), move(1, 10, 12, saving=20), move(2, 13, 11, saving=10),
                  move(3, 14, 15, saving=5)]

    chosen = choose_moves(candidates, 5)

    assert [(c.reservation_id, c.to_node_id) for c in chosen] == [(1, 11), (3, 15)]


def test_explanation_names_the_gain_and_the_disruption():
    text = move(1, 10, 11, degraded=500, saving=3).explanation()

    assert "500 milli off degraded or failed GPUs" in text
    assert "saves the customer 3.00" in text
    assert "nothing running yet" in text


def test_negative_limit_is_refused():
    with pytest.raises(ValueError, match="limit is -1"):
        choose_moves([], -1)


def test_target_takes_moves_while_its_gpus_last():
    room = TargetFree(gpu_milli=(1000, 1000), cpu_millicores=64000, memory_mib=262144)
    candidates = [move(1, 10, 20, saving=30, target_free=room), move(2, 11, 20, saving=20, target_free=room),
                  move(3, 12, 20, saving=10, target_free=room)]

    chosen = choose_moves(candidates, 5)

    assert [candidate.reservation_id for candidate in chosen] == [1, 2]


def test_fit_counts_each_gpu_and_the_cpu():
    split = TargetFree(gpu_milli=(1000, 300), cpu_millicores=64000, memory_mib=262144)
    tight_cpu = TargetFree(gpu_milli=(1000, 1000), cpu_millicores=64000, memory_mib=262144)
    candidates = [move(1, 10, 20, saving=30, milli=700, target_free=split),
                  move(2, 11, 20, saving=20, milli=600, target_free=split),
                  move(3, 12, 30, saving=15, cpu=40000, target_free=tight_cpu),
                  move(4, 13, 30, saving=10, cpu=40000, target_free=tight_cpu),
                  move(2, 11, 40, saving=5)]

    chosen = choose_moves(candidates, 5)

    assert [(c.reservation_id, c.to_node_id) for c in chosen] == [(1, 20), (3, 30), (2, 40)]


def test_node_never_source_and_target():
    room = TargetFree(gpu_milli=(1000,) * 8, cpu_millicores=64000, memory_mib=262144)
    candidates = [move(1, 10, 20, saving=30, target_free=room), move(2, 20, 30, saving=20, target_free=room)]

    assert [candidate.reservation_id for candidate in choose_moves(candidates, 5)] == [1]


def test_nan_score_is_never_chosen():
    assert choose_moves([move(1, 10, 11, saving=float("nan"))], 5) == []
