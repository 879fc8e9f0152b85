"""A connection whose prepared statements a migration made stale is replaced, not kept failing."""

import psycopg
import pytest
from django.db import close_old_connections, connection
from django.db.utils import NotSupportedError

from marketplace.prepared_statements import STALE_PLAN_MESSAGE, close_after_stale_plan


def test_stale_plan_marks_connection_for_closing():
    class FakeConnection:
        close_at = None

    def raise_not_supported(sql, params, many, context):
        raise NotSupportedError(STALE_PLAN_MESSAGE)

    fake = FakeConnection()
    with pytest.raises(NotSupportedError):
        close_after_stale_plan(raise_not_supported, "SELECT 1", None, False, {"connection": fake})

    assert fake.close_at == 0


def test_other_errors_leave_connection_open():
    class FakeConnection:
        close_at = None

    def raise_not_supported(sql, params, many, context):
        raise NotSupportedError("some other error")

    fake = FakeConnection()
    with pytest.raises(NotSupportedError):
        close_after_stale_plan(raise_not_supported, "SELECT 1", None, False, {"connection": fake})

    assert fake.close_at is None


@pytest.mark.django_db(transaction=True)
def test_widened_column_fails_once_then_works(require_postgres):
    if not connection.settings_dict.get("OPTIONS", {}).get("server_side_binding"):
        pytest.skip("needs DB_SERVER_SIDE_BINDING on")
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE prepared_probe (price numeric(10, 4))")
        cursor.execute("INSERT INTO prepared_probe VALUES (1.5)")
    try:
        for _ in range(6):  # Past psycopg's prepare threshold.
            with connection.cursor() as cursor:
                cursor.execute("SELECT price FROM prepared_probe WHERE price > %s", [0])
        with psycopg.connect(_conninfo(), autocommit=True) as other:
            other.execute("ALTER TABLE prepared_probe ALTER COLUMN price TYPE numeric(12, 4)")

        with pytest.raises(NotSupportedError), connection.cursor() as cursor:
            cursor.execute("SELECT price FROM prepared_probe WHERE price > %s", [0])
        close_old_connections()  # What Django does when the request ends.
        with connection.cursor() as cursor:
            cursor.execute("SELECT price FROM prepared_probe WHERE price > %s", [0])
            rows = cursor.fetchall()

        assert [float(price) for (price,) in rows] == [1.5]
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS prepared_probe")


def _conninfo() -> str:
    params = connection.get_connection_params()
    return " ".join(f"{key}={value}" for key, value in params.items()
                    if key in ("host", "port", "user", "password", "dbname") and value)
