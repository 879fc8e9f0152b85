"""Structured logs (structlog over the standard logging module) carrying request, reservation and task ids.

Every log line, whether written through ``logging`` or structlog, passes through one
``ProcessorFormatter``: JSON with ``LOG_FORMAT=json`` (the deployment), readable key=value text
otherwise. ``RequestIdMiddleware`` binds ``request_id`` (the caller's ``X-Request-ID`` or a new
one, echoed in the response) for the request; the Celery signals below bind ``task_id`` and
``task``; services bind ``reservation_id`` while they work on one. Bindings live in context
variables and are cleared at the end of each request and task.
"""

import logging
import re
import uuid

import structlog
from celery.signals import task_postrun, task_prerun

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

SHARED_PROCESSORS = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def formatter(json_lines: bool) -> dict:
    """Return the ``logging`` formatter configuration that renders every record through structlog."""
    renderer = structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=False)
    return {
        "()": structlog.stdlib.ProcessorFormatter,
        "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                       structlog.processors.format_exc_info, renderer],
        "foreign_pre_chain": SHARED_PROCESSORS,
    }


def configure_structlog() -> None:
    structlog.configure(
        processors=[*SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


DECISION_LOGGED = "reservation_decision_logged"
"""The attribute a view sets on Django's request once it has logged the request's decision itself."""


class SkipLoggedDecisions(logging.Filter):
    """Drop Django's per-response record (``django.request``) of a request whose view logged its decision.

    A 409 for a full window is a normal decision, which the reservation API logs at INFO with its
    reason. Django's warning for each such 409 cost 6 % of a worker's CPU under contention. Other
    4xx responses (bad tokens, duplicate references, invalid transitions) and server errors stay
    logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(getattr(record, "request", None), DECISION_LOGGED, False)


def bind_reservation(reservation_id: int) -> None:
    """Add ``reservation_id`` to every log line until the request or task ends."""
    structlog.contextvars.bind_contextvars(reservation_id=reservation_id)


class RequestIdMiddleware:
    """Bind a request id to the request's log lines and return it in ``X-Request-ID``."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        offered = request.headers.get("X-Request-ID", "")
        request_id = offered if REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            response = self.get_response(request)
        finally:
            structlog.contextvars.clear_contextvars()
        response["X-Request-ID"] = request_id
        return response


@task_prerun.connect
def _bind_task(task_id=None, task=None, **kwargs):
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id, task=getattr(task, "name", ""))


@task_postrun.connect
def _clear_task(**kwargs):
    structlog.contextvars.clear_contextvars()
