"""Indexes built by migrations: an index left invalid by a failed concurrent build is built again."""

import pytest
from django.db import connection

from marketplace.online_indexes import index_create, index_drop

NAME = "test_online_reservation_created"
DEFINITION = "ON allocation_reservation (created_at)"


def index_state() -> bool | None:
    """Return whether the index is valid, or None if it does not exist."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                       "WHERE c.relname = %s", [NAME])
        row = cursor.fetchone()
    return row[0] if row is not None else None


def index_oid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::regclass::oid", [NAME])
        return cursor.fetchone()[0]


def build() -> None:
    with connection.schema_editor(atomic=False) as editor:
        index_create(editor, NAME, DEFINITION)


@pytest.fixture
def outside_transaction(transactional_db):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL")
    yield
    with connection.schema_editor(atomic=False) as editor:
        index_drop(editor, NAME)


def test_builds_missing_index(outside_transaction):
    build()

    assert index_state() is True


def test_rebuilds_invalid_index(outside_transaction):
    build()
    with connection.cursor() as cursor:
        # What a failed CREATE INDEX CONCURRENTLY leaves behind.
        cursor.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass", [NAME])
    assert index_state() is False

    build()

    assert index_state() is True


def test_keeps_valid_index(outside_transaction):
    build()
    first_oid = index_oid()

    build()

    assert index_oid() == first_oid
