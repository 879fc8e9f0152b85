"""The express path's admission context also returns what the capacity feed changed since a given position.

``allocation_capacity_changes_since`` returns the same rows as the feed read in
``allocation/ledger_sync.py`` did: the snapshot to read from next time, the ids of changed
allocations and nodes, and each changed allocation's current row with its shares. It is PL/pgSQL,
so PostgreSQL keeps its plans per session, and STABLE, so it reads its caller's snapshot.

A four-argument ``allocation_admission_context`` calls it after locking the customer's row, so
one statement replaces two on every express reservation. The two-argument function stays as it
was. With a NULL position the changes are NULL.
"""

import importlib

from django.db import migrations

EXPRESS_FUNCTIONS = importlib.import_module("allocation.migrations.0017_express_reservation_functions")
GENERIC_PLANS = importlib.import_module("allocation.migrations.0021_reservation_transaction_generic_plans")

CHANGES_SINCE = """
CREATE OR REPLACE FUNCTION allocation_capacity_changes_since(p_pending xid8[], p_xmax xid8)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        WITH changed AS MATERIALIZED (
            SELECT DISTINCT kind, object_id FROM allocation_capacity_change
            WHERE txid = ANY(p_pending) OR txid >= p_xmax
        )
        SELECT jsonb_build_object(
            'xmax', pg_snapshot_xmax(pg_current_snapshot())::text,
            'pending', to_jsonb(ARRAY(
                SELECT running::text FROM pg_snapshot_xip(pg_current_snapshot()) running
                UNION SELECT pg_current_xact_id_if_assigned()::text
                WHERE pg_current_xact_id_if_assigned() IS NOT NULL)),
            'allocation_ids', to_jsonb(ARRAY(SELECT object_id FROM changed WHERE kind = 'allocation')),
            'node_ids', to_jsonb(ARRAY(SELECT object_id FROM changed WHERE kind = 'node')),
            'allocations', COALESCE((
                SELECT jsonb_agg(jsonb_build_array(
                    a.id, a.node_id, a.customer_id, a.gpu_model_id,
                    (extract(epoch FROM a.start_at) * 1000000)::bigint,
                    (extract(epoch FROM a.end_at) * 1000000)::bigint,
                    a.cpu_millicores, a.memory_mib, a.gpu_milli_total,
                    COALESCE((SELECT jsonb_agg(jsonb_build_array(
                                  s.gpu_id, s.gpu_milli, (extract(epoch FROM s.start_at) * 1000000)::bigint,
                                  (extract(epoch FROM s.end_at) * 1000000)::bigint))
                              FROM allocation_gpushare s WHERE s.allocation_id = a.id), '[]'::jsonb)))
                FROM allocation_allocation a
                WHERE a.id IN (SELECT object_id FROM changed WHERE kind = 'allocation')), '[]'::jsonb))
    );
END;
$$;
"""

TWO_ARGUMENTS = "allocation_admission_context(p_customer bigint, p_external_ref text)"
FOUR_ARGUMENTS = ("allocation_admission_context(p_customer bigint, p_external_ref text, p_pending xid8[], "
                  "p_xmax xid8)")
LAST_FIELD = "FROM allocation_approvalpolicy p WHERE p.organization_id = p_customer)\n    );"
WITH_CHANGES = ("FROM allocation_approvalpolicy p WHERE p.organization_id = p_customer),\n"
                "        'changes', CASE WHEN p_xmax IS NULL THEN NULL\n"
                "                        ELSE allocation_capacity_changes_since(p_pending, p_xmax) END\n"
                "    );")


def admission_context_with_changes() -> str:
    """Return migration 0021's admission context with the feed position as arguments and the changes as a field."""
    source = EXPRESS_FUNCTIONS.ADMISSION_CONTEXT.replace(GENERIC_PLANS.LOCK_STATEMENT, GENERIC_PLANS.GENERIC_PLANS)
    assert source.count(TWO_ARGUMENTS) == 1 and source.count(LAST_FIELD) == 1
    return source.replace(TWO_ARGUMENTS, FOUR_ARGUMENTS).replace(LAST_FIELD, WITH_CHANGES)


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CHANGES_SINCE, params=None)
        schema_editor.execute(admission_context_with_changes(), params=None)


def remove(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP FUNCTION IF EXISTS allocation_admission_context(bigint, text, xid8[], xid8)",
                              params=None)
        schema_editor.execute("DROP FUNCTION IF EXISTS allocation_capacity_changes_since(xid8[], xid8)", params=None)


class Migration(migrations.Migration):

    dependencies = [("allocation", "0024_customer_window_index")]

    operations = [migrations.RunPython(install, remove)]
