"""GiST indexes on the windows of allocations and GPU shares, for the range-overlap queries in selectors.py.

The fleet-wide usage queries of placement read every allocation and share overlapping a window.
With only B-tree indexes on ``end_at``, PostgreSQL also read every row ending after the window,
all bookings up to the horizon. The range indexes return only the overlapping rows. SQLite keeps
its plain comparisons and gets no index here.

The indexes are built ``CONCURRENTLY``, so reservations keep being written while they build; that
needs the migration to run outside a transaction.
"""

from django.db import migrations

INDEXES = {
    "allocation_window_gist": "allocation_allocation",
    "share_window_gist": "allocation_gpushare",
}


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for name, table in INDEXES.items():
            schema_editor.execute(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} "
                f"USING gist (tstzrange(start_at, end_at, '[)'))",
                params=None,
            )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for name in INDEXES:
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}", params=None)


class Migration(migrations.Migration):

    atomic = False

    dependencies = [("allocation", "0017_express_reservation_functions")]

    operations = [migrations.RunPython(create, drop)]
