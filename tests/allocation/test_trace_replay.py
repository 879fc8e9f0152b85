"""Replay of the first 500 trace tasks through the reservation service."""

import json
from datetime import datetime, timezone

import pytest
from django.core.management import call_command

from allocation.models import Allocation, Reservation, ReservationEvent
from allocation.trace import NODES_CSV, TASKS_CSV
from allocation.trace.importer import trace_import
from allocation.trace.replay import trace_replay

TRACE_START = datetime(2026, 1, 1, tzinfo=timezone.utc)

pytestmark = pytest.mark.django_db

# Totals of deterministic replays: the overlay is seeded and placement is deterministic.
PLACED_500 = 500
REJECTED_500: dict[str, int] = {}
PEAK_500 = 0.0084
SMALL_FLEET_PLACED = 248
SMALL_FLEET_REJECTED = {"no_capacity": 58, "quota_exceeded": 194}
SMALL_FLEET_PEAK = 0.9856


@pytest.fixture
def fleet():
    trace_import(nodes_path=NODES_CSV)


def test_replay_first_500_tasks(fleet):
    summary = trace_replay(tasks_path=TASKS_CSV, trace_start_at=TRACE_START, limit=500)

    assert summary.submitted == 500
    assert summary.placed == PLACED_500
    assert summary.rejected == 500 - PLACED_500
    assert summary.rejected_by_reason == REJECTED_500
    assert summary.gpu_allocation_ratio == PEAK_500
    assert Reservation.objects.count() == 500
    assert Allocation.objects.count() == PLACED_500
    assert ReservationEvent.objects.filter(from_status="", to_status="pending").count() == 500


def test_replay_on_small_fleet_rejects_with_reasons(tmp_path):
    """Holding every task until the trace's end on the first 40 nodes runs out of quota and capacity."""
    small_fleet = tmp_path / "nodes.csv"
    small_fleet.write_text("".join(NODES_CSV.read_text().splitlines(keepends=True)[:41]))
    trace_import(nodes_path=small_fleet)

    summary = trace_replay(tasks_path=TASKS_CSV, trace_start_at=TRACE_START, limit=500, hold_until_trace_end=True)

    assert summary.submitted == 500
    assert summary.placed == SMALL_FLEET_PLACED
    assert summary.rejected_by_reason == SMALL_FLEET_REJECTED
    assert summary.gpu_allocation_ratio == SMALL_FLEET_PEAK
    assert Allocation.objects.count() == SMALL_FLEET_PLACED


def test_second_replay_submits_nothing(fleet):
    trace_replay(tasks_path=TASKS_CSV, trace_start_at=TRACE_START, limit=100)

    again = trace_replay(tasks_path=TASKS_CSV, trace_start_at=TRACE_START, limit=100)

    assert again.submitted == 0
    assert again.skipped_already_replayed == 100
    assert Reservation.objects.count() == 100


def test_replay_command_prints_json_summary(fleet, capsys):
    call_command("replay_trace", "--limit", "50", "--start", "2026-01-01T00:00:00Z", "--json")

    summary = json.loads(capsys.readouterr().out)
    assert summary["submitted"] == 50
    assert {"submitted", "placed", "rejected", "gpu_allocation_ratio", "wall_seconds",
            "decisions_per_second"} <= set(summary)


def test_replay_without_fleet_is_clear_error():
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="run `python manage.py import_trace` first"):
        call_command("replay_trace", "--limit", "5")
