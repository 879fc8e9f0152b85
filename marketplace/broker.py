"""Sending Celery tasks from request handlers, where a broker outage must not fail the request.

The database is the record of every reservation, migration and heartbeat, and beat re-runs each
periodic task, so a task message that cannot be sent while Redis is down is caught up later: the
caller logs it and carries on.
"""

import logging

from celery import Task
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

BROKER_ERRORS = (KombuError, RedisError, OSError)


def enqueue(task: Task, *, reason: str, args: tuple = (), kwargs: dict | None = None, **options) -> bool:
    """Send ``task`` with ``args``, ``kwargs`` and ``apply_async`` options; return False when the broker is down.

    ``reason`` names what catches up when sending fails, for the warning in the log.
    """
    try:
        task.apply_async(args=args, kwargs=kwargs, **options)
    except Exception as error:
        if task.app.conf.task_always_eager:
            # Eager mode (the demo) runs the task inside this call. Its failure is the task's, as it would be
            # on a worker, so it is logged and does not fail the caller.
            logger.exception("Task %s failed while run eagerly for %s", task.name, reason)
            return False
        if not isinstance(error, BROKER_ERRORS):
            raise
        logger.warning("Could not send task %s (the broker is unavailable, %s catches up): %s",
                       task.name, reason, error)
        return False
    return True
