"""Let the quota guard pass an allocation that moves to another node without growing.

The guard checked quotas on every insert and on every update that changed the node, so a
reservation whose customer is above its quota (an admin lowered it after booking) could never
move: drains and maintenance rolled back with a quota error and the reservation stayed on a node
that was leaving. A move keeps the customer, the GPU model, the GPU milli and the window, so no
instant's usage grows. Node capacity is still checked for the target, as before.
"""

import importlib

from django.db import migrations

COHORT_QUOTA_GUARD = importlib.import_module("allocation.migrations.0010_cohort_quota_guard")
QUOTA_SECTION = "    -- Customer quotas.\n"
MOVE_PASSES = """    -- Customer quotas. An update that adds no usage at any instant, such as a move to another
    -- node, passes even when an admin has since lowered the quota below what the customer holds.
    IF TG_OP = 'UPDATE' AND NEW.customer_id = OLD.customer_id AND NEW.gpu_model_id = OLD.gpu_model_id
       AND NEW.gpu_milli_total <= OLD.gpu_milli_total
       AND NEW.start_at >= OLD.start_at AND NEW.end_at <= OLD.end_at THEN
        RETURN NULL;
    END IF;
"""


def guard_function(moves_pass: bool) -> str:
    source = COHORT_QUOTA_GUARD.ALLOCATION_GUARD
    source = source[: source.index("CREATE TRIGGER")] if "CREATE TRIGGER" in source else source
    assert source.count(QUOTA_SECTION) == 1
    return source.replace(QUOTA_SECTION, MOVE_PASSES) if moves_pass else source


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(guard_function(moves_pass=True), params=None)


def restore(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(guard_function(moves_pass=False), params=None)


class Migration(migrations.Migration):
    dependencies = [("allocation", "0026_drop_redundant_foreign_key_indexes")]
    operations = [migrations.RunPython(install, restore)]
