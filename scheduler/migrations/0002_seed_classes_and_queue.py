"""Seed the default queue and three priority classes, which admins may change in the admin."""

from django.db import migrations

CLASSES = [
    # name, value, can_preempt, preemptible, mode, grace s, minimum runtime s, needs approval, default, description
    ("low", 100, False, True, "requeue", 60, 0, False, False,
     "Batch work that yields to everything else."),
    ("standard", 500, True, True, "requeue", 120, 600, False, True,
     "The default: may preempt interruptible low work at once."),
    ("high", 1000, True, False, "cancel", 300, 0, True, False,
     "Urgent work: its preemptions wait for an admin's approval."),
]


def seed(apps, schema_editor):
    PriorityClass = apps.get_model("scheduler", "PriorityClass")
    Queue = apps.get_model("scheduler", "Queue")
    for name, value, can_preempt, preemptible, mode, grace, runtime, approval, default, description in CLASSES:
        PriorityClass.objects.get_or_create(name=name, defaults={
            "value": value, "can_preempt": can_preempt, "preemptible": preemptible, "preemption_mode": mode,
            "grace_period_seconds": grace, "min_runtime_seconds": runtime, "preemption_needs_approval": approval,
            "is_default": default, "description": description,
        })
    Queue.objects.get_or_create(name="default", defaults={"description": "Priority, fair share, then backfill."})
    Queue.objects.get_or_create(name="fifo", defaults={"strict_fifo": True,
                                                       "description": "Strict first in, first out; no backfill."})


class Migration(migrations.Migration):
    dependencies = [("scheduler", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
