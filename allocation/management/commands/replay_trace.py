"""``python manage.py replay_trace``: submit the trace's tasks as reservations."""

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from allocation.trace import TASKS_CSV
from allocation.trace.csv_reader import TraceFormatError
from allocation.trace.replay import trace_replay


def aware_datetime(text: str) -> datetime:
    """Parse ``--start``: ISO 8601 with a UTC offset, in the years 1970 to 9000."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not ISO 8601; use for example 2026-01-01T00:00:00Z") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset; add one, for example 2026-01-01T00:00:00Z")
    if not 1970 <= value.year <= 9000:
        raise argparse.ArgumentTypeError(f"{text!r} is outside the years 1970 to 9000")
    return value


class Command(BaseCommand):
    help = (
        "Submit every task of the trace as a reservation through the reservation service, in creation-time "
        "order, and print a summary. Tasks replayed before are skipped."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tasks", type=Path, default=TASKS_CSV, help="Task list CSV (default: the bundled trace).")
        parser.add_argument("--limit", type=int, default=None, help="Replay only the first N tasks.")
        parser.add_argument("--start", type=aware_datetime, default=None,
                            help="ISO 8601 date with offset that trace time 0 maps to (default: the trace ends at the "
                                 "next midnight UTC).")
        parser.add_argument("--policy", default=None, help="Placement policy name (default: the PLACEMENT_POLICY setting).")
        parser.add_argument("--hold-until-trace-end", action="store_true",
                            help="Keep every task until the trace's last deletion instead of its own deletion time, "
                                 "so demand accumulates to about 98%% of the fleet.")
        parser.add_argument("--json", action="store_true", help="Print the summary as one JSON object.")

    def handle(self, *args, tasks: Path, limit: int | None, start: datetime | None, policy: str | None,
               hold_until_trace_end: bool, json: bool, **options):
        if limit is not None and limit < 1:
            raise CommandError(f"--limit is {limit}; use 1 or more.")
        show_progress = not json and sys.stderr.isatty()
        bar = tqdm(unit="task", disable=not show_progress, file=sys.stderr)

        def on_progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            summary = trace_replay(tasks_path=tasks, trace_start_at=start, limit=limit, policy_name=policy,
                                   hold_until_trace_end=hold_until_trace_end,
                                   on_progress=on_progress)
        except (TraceFormatError, RuntimeError) as error:
            raise CommandError(f"Nothing was replayed. {error}") from error
        except KeyError as error:
            raise CommandError(f"Nothing was replayed. {error.args[0]}") from error
        finally:
            bar.close()

        if json:
            self.stdout.write(_json_dumps(summary.as_dict()))
            return
        self.stdout.write(
            f"Submitted {summary.submitted} tasks ({summary.skipped_already_replayed} replayed before, skipped); "
            f"placed {summary.placed}, rejected {summary.rejected}."
        )
        for reason, count in summary.rejected_by_reason.items():
            self.stdout.write(f"  rejected, {reason}: {count}")
        self.stdout.write(
            f"Peak GPU allocation ratio {summary.gpu_allocation_ratio:.2%} at {summary.peak_at}; "
            f"wall time {summary.wall_seconds:.1f} s, {summary.decisions_per_second:.0f} decisions/s."
        )


def _json_dumps(data: dict) -> str:
    return json.dumps(data, sort_keys=True)
