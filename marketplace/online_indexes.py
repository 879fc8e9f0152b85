"""Build indexes in migrations without blocking writes, and without keeping one that a failed build left behind.

On PostgreSQL an index is built ``CONCURRENTLY``, so reservations keep being written while it
builds. The migration must then run outside a transaction (``atomic = False``). A concurrent
build that fails (a lock timeout, a cancelled migration) leaves the index marked invalid, and
``CREATE INDEX ... IF NOT EXISTS`` would keep it. The planner never uses an invalid index, yet
every write still updates it, so ``index_create`` drops such an index first. SQLite builds the
index plainly.
"""

import logging

logger = logging.getLogger(__name__)


def index_create(schema_editor, name: str, definition: str) -> None:
    """Create index ``name`` as ``definition`` (``ON table USING ... (columns)``), replacing an invalid one."""
    concurrently = ""
    if schema_editor.connection.vendor == "postgresql":
        concurrently = "CONCURRENTLY "
        if _is_invalid(schema_editor, name):
            logger.warning("Index %s was left invalid by a failed build; dropping it to build it again", name)
            schema_editor.execute(f"DROP INDEX CONCURRENTLY {name}", params=None)
    schema_editor.execute(f"CREATE INDEX {concurrently}IF NOT EXISTS {name} {definition}", params=None)


def index_drop(schema_editor, name: str) -> None:
    """Drop index ``name`` if it exists, concurrently on PostgreSQL."""
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    schema_editor.execute(f"DROP INDEX {concurrently}IF EXISTS {name}", params=None)


def _is_invalid(schema_editor, name: str) -> bool:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                       "WHERE c.relname = %s", [name])
        row = cursor.fetchone()
    return row is not None and row[0]


def redundant_index_drops(indexes: dict[str, tuple[str, str]]):
    """Return forward and backward ``RunPython`` functions that drop and rebuild foreign key indexes.

    ``indexes`` maps each index name to its ``(table, column)``. Use it for the index Django builds
    for a foreign key when a composite index that leads with the same column already serves its
    lookups: every write pays for each index, so a redundant one only costs.
    """

    def drop(apps, schema_editor):
        for name in indexes:
            index_drop(schema_editor, name)

    def rebuild(apps, schema_editor):
        for name, (table, column) in indexes.items():
            index_create(schema_editor, name, f"ON {table} ({column})")

    return drop, rebuild
