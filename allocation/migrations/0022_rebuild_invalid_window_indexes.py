"""Build again a window GiST index of migration 0018 that a failed concurrent build left invalid.

Migration 0018 used ``CREATE INDEX CONCURRENTLY IF NOT EXISTS``. If that build failed and the
migration was run again, it kept the invalid index: the usage queries then read every booking
that ends after their window, and every write still updated the index. Where the indexes are
valid, as on any database where 0018 succeeded at once, this changes nothing.
"""

import importlib

from django.db import migrations

from marketplace.online_indexes import index_create

WINDOW_INDEXES = importlib.import_module("allocation.migrations.0018_window_gist_indexes").INDEXES


def rebuild_invalid(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for name, table in WINDOW_INDEXES.items():
            index_create(schema_editor, name, f"ON {table} USING gist (tstzrange(start_at, end_at, '[)'))")


class Migration(migrations.Migration):

    atomic = False

    dependencies = [("allocation", "0021_reservation_transaction_generic_plans")]

    operations = [migrations.RunPython(rebuild_invalid, migrations.RunPython.noop)]
