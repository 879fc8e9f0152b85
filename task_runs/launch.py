"""Start long tasks from the ops pages: parse their parameters, record a queued run, send them to Celery."""

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from celery import Task

from allocation.tasks import propose_rebalance_task, replay_trace_task
from capacity.tasks import refresh_capacity_forecasts_task
from marketplace.exceptions import FieldProblem, InvalidRequest

from .models import TaskRun
from .progress import run_fail, run_queue

logger = logging.getLogger(__name__)

MAX_REPLAY_LIMIT = 10_000
"""Most trace tasks one replay from the page may submit; the bundled trace has 8,152."""
DEFAULT_REPLAY_LIMIT = 200


@dataclass(frozen=True)
class Launch:
    """Start settings of one kind of task: the task, the permission it needs, and its form parser."""

    kind: str
    task: Task
    permission: str
    permission_message: str
    parse: Callable[[Mapping[str, str]], dict]


def replay_parameters(data: Mapping[str, str]) -> dict:
    """Return the replay's keyword arguments: ``limit``, a whole number of trace tasks from 1 to ``MAX_REPLAY_LIMIT``."""
    raw = (data.get("limit") or "").strip()
    try:
        limit = int(raw)
    except ValueError:
        limit = None
    if limit is None or not 1 <= limit <= MAX_REPLAY_LIMIT:
        message = f"limit is {raw!r}; enter a whole number of trace tasks from 1 to {MAX_REPLAY_LIMIT}."
        raise InvalidRequest(message, errors=[FieldProblem(field="limit", message=message)])
    return {"limit": limit}


def no_parameters(data: Mapping[str, str]) -> dict:
    return {}


LAUNCHES = {
    launch.kind: launch for launch in (
        Launch(TaskRun.Kind.REPLAY, replay_trace_task, "allocation.add_reservation",
               "Replaying the trace needs the 'add reservation' permission.", replay_parameters),
        Launch(TaskRun.Kind.FORECASTS, refresh_capacity_forecasts_task, "capacity.add_demandforecast",
               "Refreshing forecasts needs the 'add demand forecast' permission.", no_parameters),
        Launch(TaskRun.Kind.REBALANCE, propose_rebalance_task, "allocation.add_rebalanceplan",
               "Proposing a rebalancing plan needs the 'add rebalance plan' permission.", no_parameters),
    )
}


def launch_for(kind: str) -> Launch:
    """Return how to start ``kind``; raise ``InvalidRequest`` for a kind that the page cannot start."""
    try:
        return LAUNCHES[kind]
    except KeyError:
        raise InvalidRequest(f"kind is {kind!r}; choose one of {', '.join(LAUNCHES)}.") from None


def run_launch(launch: Launch, *, user, data: Mapping[str, str]) -> TaskRun:
    """Record a queued run for ``user`` and send the task; return the run, whatever became of the task.

    Raises ``InvalidRequest`` for invalid parameters, before anything is stored. Without a broker
    (``CELERY_TASK_ALWAYS_EAGER``) the task runs before this returns, and its error, already
    stored on the run by the task, is not raised again. When the broker rejects the message, the
    run is marked failed with that error.
    """
    parameters = launch.parse(data)
    task_id = str(uuid.uuid4())
    run = run_queue(launch.kind, task_id=task_id, started_by=user, parameters=parameters)
    try:
        launch.task.apply_async(kwargs=parameters, task_id=task_id)
    except Exception as error:  # An eager task may raise anything; a broker outage raises kombu's errors.
        run.refresh_from_db()
        if run.state == TaskRun.State.QUEUED:
            logger.warning("Queueing task run %s (%s) failed: %s", run.pk, launch.task.name, error)
            run_fail(task_id, error=f"Queueing the task failed: {type(error).__name__}: {error}. "
                                    "Check that the broker at REDIS_URL is reachable, then start the task again.")
        else:
            logger.info("Task run %s (%s) failed in the request: %s", run.pk, launch.task.name, error)
    run.refresh_from_db()
    return run
