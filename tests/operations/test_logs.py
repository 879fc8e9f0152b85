"""Structured logs: request ids on requests and log lines, reservation and task ids in the lines."""

import json
import logging

import pytest
import structlog
from django.http import HttpResponse

from marketplace.logs import RequestIdMiddleware, _bind_task, _clear_task, bind_reservation, formatter


def _json_formatter():
    options = dict(formatter(json_lines=True))
    factory = options.pop("()")
    return factory(**options)


@pytest.fixture(autouse=True)
def clean_context():
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()


def test_lines_carry_the_bound_ids():
    structlog.contextvars.bind_contextvars(request_id="abc123")
    bind_reservation(42)

    line = json.loads(_json_formatter().format(
        logging.LogRecord("allocation.services", logging.INFO, __file__, 1, "Placed %s", ("it",), None)))

    assert line["event"] == "Placed it"
    assert line["request_id"] == "abc123"
    assert line["reservation_id"] == 42
    assert line["level"] == "info"
    assert line["logger"] == "allocation.services"


def test_task_ids_are_bound_for_the_task_only():
    class Task:
        name = "scheduler.run_cycle"

    _bind_task(task_id="t-1", task=Task())
    inside = json.loads(_json_formatter().format(
        logging.LogRecord("scheduler.cycle", logging.INFO, __file__, 1, "cycle", None, None)))
    _clear_task()
    after = json.loads(_json_formatter().format(
        logging.LogRecord("scheduler.cycle", logging.INFO, __file__, 1, "cycle", None, None)))

    assert (inside["task_id"], inside["task"]) == ("t-1", "scheduler.run_cycle")
    assert "task_id" not in after


@pytest.mark.parametrize("offered, kept", [("req-7.a_B", True), ("bad id!", False), ("x" * 65, False)])
def test_request_id_is_echoed_or_replaced(client, offered, kept):
    response = client.get("/health/live/", HTTP_X_REQUEST_ID=offered)

    assert (response["X-Request-ID"] == offered) is kept
    assert 1 <= len(response["X-Request-ID"]) <= 64


def test_middleware_clears_the_ids_after_the_request(rf):
    middleware = RequestIdMiddleware(lambda request: HttpResponse("ok"))

    middleware(rf.get("/"))

    assert structlog.contextvars.get_contextvars() == {}
