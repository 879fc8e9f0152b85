"""Add the queued status, and let the PostgreSQL status guard allow its transitions."""

import importlib

from django.db import migrations, models

ALLOWED_TRANSITIONS = [
    *importlib.import_module("allocation.migrations.0008_status_guard_approvals").ALLOWED_TRANSITIONS,
    ("pending", "queued"),
    ("queued", "active"), ("queued", "cancelled"), ("queued", "expired"), ("queued", "failed"),
    ("queued", "pending_approval"), ("queued", "rejected"), ("queued", "scheduled"),
]


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        guard = importlib.import_module("allocation.migrations.0008_status_guard_approvals")
        schema_editor.execute(guard.function_for(ALLOWED_TRANSITIONS), params=None)


def restore(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        guard = importlib.import_module("allocation.migrations.0008_status_guard_approvals")
        schema_editor.execute(guard.function_for(guard.ALLOWED_TRANSITIONS), params=None)


class Migration(migrations.Migration):
    dependencies = [("allocation", "0013_solver_runs_and_rebalancing")]
    operations = [
        migrations.AlterField(
            model_name="reservation", name="status",
            field=models.CharField(
                choices=[("pending", "Pending"), ("pending_approval", "Pending approval"), ("queued", "Queued"),
                         ("scheduled", "Scheduled"), ("active", "Active"), ("completed", "Completed"),
                         ("cancelled", "Cancelled"), ("failed", "Failed"), ("rejected", "Rejected"),
                         ("expired", "Expired"), ("preempted", "Preempted")],
                default="pending", max_length=16,
            ),
        ),
        migrations.RunPython(install, restore),
    ]
