"""Let the PostgreSQL status guard allow the approval, expiry and preemption transitions."""

import importlib

from django.db import migrations

ALLOWED_TRANSITIONS = [
    ("active", "cancelled"), ("active", "completed"), ("active", "failed"), ("active", "preempted"),
    ("pending", "active"), ("pending", "cancelled"), ("pending", "failed"), ("pending", "pending_approval"),
    ("pending", "rejected"), ("pending", "scheduled"),
    ("pending_approval", "active"), ("pending_approval", "cancelled"), ("pending_approval", "expired"),
    ("pending_approval", "failed"), ("pending_approval", "rejected"), ("pending_approval", "scheduled"),
    ("scheduled", "active"), ("scheduled", "cancelled"), ("scheduled", "completed"), ("scheduled", "failed"),
    ("scheduled", "preempted"),
]

FUNCTION = """
CREATE OR REPLACE FUNCTION allocation_reservation_status_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'pending' THEN
            RAISE EXCEPTION 'A reservation is created pending, not %%.', NEW.status
                USING ERRCODE = 'check_violation', CONSTRAINT = 'reservation_status_lifecycle';
        END IF;
    ELSIF NEW.status <> OLD.status AND (OLD.status, NEW.status) NOT IN (%s) THEN
        RAISE EXCEPTION 'Reservation %% cannot move from %% to %%.', NEW.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'reservation_status_lifecycle';
    END IF;
    RETURN NEW;
END;
$$;
"""


def function_for(pairs) -> str:
    return (FUNCTION % ", ".join(f"('{a}', '{b}')" for a, b in pairs)).replace("%%", "%")


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(function_for(ALLOWED_TRANSITIONS), params=None)


def restore(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        previous = importlib.import_module("allocation.migrations.0002_postgres_guarantees")
        schema_editor.execute(function_for(previous.ALLOWED_TRANSITIONS), params=None)


class Migration(migrations.Migration):
    dependencies = [("allocation", "0007_approvals_and_more_statuses")]
    operations = [migrations.RunPython(install, restore)]
