"""A plain index on a reservation's customer and ``external_ref``, for the duplicate check of every request.

The check runs as a prepared statement (and inside ``allocation_admission_context``), so its
parameters are unknown when PostgreSQL plans it. The partial unique index
``reservation_unique_external_ref`` only serves a query whose conditions name the literal ``''``
and ``'rejected'``, so the generic plan read every reservation of the customer instead: 1 ms at
600 reservations, growing with the customer's history. This index serves the lookup at any size.

On PostgreSQL it is built ``CONCURRENTLY``, so reservations keep being written while it builds;
that needs the migration to run outside a transaction.
"""

from django.db import migrations, models

NAME = "reservation_customer_ref"


def create(apps, schema_editor):
    concurrently = ""
    if schema_editor.connection.vendor == "postgresql":
        concurrently = "CONCURRENTLY "
        # A concurrent build that failed (a lock timeout, a cancelled migration) leaves an invalid
        # index, which IF NOT EXISTS would keep: the planner never uses it, yet every write updates it.
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                           "WHERE c.relname = %s", [NAME])
            row = cursor.fetchone()
        if row is not None and row[0]:
            schema_editor.execute(f"DROP INDEX CONCURRENTLY {NAME}", params=None)
    schema_editor.execute(
        f"CREATE INDEX {concurrently}IF NOT EXISTS {NAME} ON allocation_reservation (customer_id, external_ref)",
        params=None,
    )


def drop(apps, schema_editor):
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    schema_editor.execute(f"DROP INDEX {concurrently}IF EXISTS {NAME}", params=None)


class Migration(migrations.Migration):

    atomic = False

    dependencies = [("allocation", "0018_window_gist_indexes")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddIndex(
                    model_name="reservation",
                    index=models.Index(fields=["customer", "external_ref"], name=NAME),
                ),
            ],
            database_operations=[migrations.RunPython(create, drop)],
        ),
    ]
