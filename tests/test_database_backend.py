"""The PostgreSQL backend's health check sends no query, and replaces a connection whose server session ended."""

import time

import psycopg
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.test_prepared_statements import _conninfo


@pytest.mark.django_db(transaction=True)
def test_idle_connection_usable_without_query(require_postgres):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 'last statement'")
    session = connection.connection.info.backend_pid

    with CaptureQueriesContext(connection) as queries:
        usable = connection.is_usable()

    assert usable
    assert len(queries) == 0
    assert _last_statement_of(session) == "SELECT 'last statement'"


@pytest.mark.django_db(transaction=True)
def test_terminated_session_replaced(require_postgres):
    connection.ensure_connection()
    session = connection.connection.info.backend_pid
    with psycopg.connect(_conninfo(), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [session])

    deadline = time.monotonic() + 5
    while connection.is_usable() and time.monotonic() < deadline:
        time.sleep(0.05)  # The server's termination message arrives a moment after the call returns.
    assert not connection.is_usable()

    connection.health_check_done = False  # As at the start of a request.
    connection.close_if_health_check_failed()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        replacement = cursor.fetchone()[0]

    assert replacement != session


def _last_statement_of(session: int) -> str:
    """Return the text of the last statement the server session ``session`` ran, as ``pg_stat_activity`` shows it."""
    with psycopg.connect(_conninfo(), autocommit=True) as other:
        return other.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [session]).fetchone()[0]
