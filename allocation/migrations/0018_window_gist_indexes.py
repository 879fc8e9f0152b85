"""GiST indexes on the windows of allocations and GPU shares, for the range-overlap queries in selectors.py.

The fleet-wide usage queries of placement read every allocation and share overlapping a window.
With only B-tree indexes on ``end_at``, PostgreSQL also read every row ending after the window,
all bookings up to the horizon. The range indexes return only the overlapping rows. SQLite keeps
its plain comparisons and gets no index here.
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
                f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING gist (tstzrange(start_at, end_at, '[)'))",
                params=None,
            )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for name in INDEXES:
            schema_editor.execute(f"DROP INDEX IF EXISTS {name}", params=None)


class Migration(migrations.Migration):

    dependencies = [("allocation", "0017_express_reservation_functions")]

    operations = [migrations.RunPython(create, drop)]
