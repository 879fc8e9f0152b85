"""A change feed of capacity on PostgreSQL, from which each web process keeps its capacity ledger current.

Triggers append a row to ``allocation_capacity_change`` for every allocation or share that is
inserted, changed or deleted, and for every node whose placement-relevant columns, GPUs or
maintenance windows change. Each row carries the writing transaction's id. A reader remembers the
transactions that were still running at its last read and the first transaction id not yet
assigned then. Its next read takes the rows of those transactions and of every later one, which is
exactly what has become visible since, whatever order transactions commit in.

``allocation_capacity_load`` returns every node and every allocation that ends after a given
instant, and the snapshot to read the feed from next time. It is STABLE, so every query in it
reads the calling statement's snapshot. The feed itself is read by one plain statement in
``allocation/ledger_sync.py``, which psycopg prepares once per connection.

``allocation_capacity_purge_mark`` holds the oldest running transaction at each purge, so the
purge deletes only rows of transactions that committed long ago (``ledger_sync.py``).

Allocation and share changes are recorded once per statement (transition tables), so a writer
that inserts eight shares in one statement adds one row. GPU and node updates are recorded per
row, and only when a column that placement reads changes: heartbeats and the share guard update
those rows far more often than placement cares.
"""

from django.db import migrations

FEED = """
CREATE TABLE allocation_capacity_change (
    id bigserial PRIMARY KEY,
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    kind text NOT NULL CHECK (kind IN ('allocation', 'node')),
    object_id bigint NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX allocation_capacity_change_txid ON allocation_capacity_change (txid);

-- Each purge records the oldest transaction then running. Rows of transactions that completed
-- before a mark at least the retention old are deleted: whatever their recorded_at, those
-- transactions committed long enough ago that every reader has read them or reloads.
CREATE TABLE allocation_capacity_purge_mark (
    id bigserial PRIMARY KEY,
    oldest_running xid8 NOT NULL,
    taken_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION allocation_capacity_change_allocations() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO allocation_capacity_change (kind, object_id) SELECT DISTINCT 'allocation', id FROM old_rows;
    ELSE
        INSERT INTO allocation_capacity_change (kind, object_id) SELECT DISTINCT 'allocation', id FROM new_rows;
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION allocation_capacity_change_shares() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO allocation_capacity_change (kind, object_id)
        SELECT DISTINCT 'allocation', allocation_id FROM old_rows;
    ELSE
        INSERT INTO allocation_capacity_change (kind, object_id)
        SELECT DISTINCT 'allocation', allocation_id FROM new_rows;
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION allocation_capacity_change_node() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- TG_ARGV[0] names the column that holds the node id: id on nodes, node_id on GPUs and windows.
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO allocation_capacity_change (kind, object_id)
        VALUES ('node', CASE WHEN TG_ARGV[0] = 'id' THEN OLD.id ELSE (to_jsonb(OLD)->>TG_ARGV[0])::bigint END);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO allocation_capacity_change (kind, object_id)
        VALUES ('node', CASE WHEN TG_ARGV[0] = 'id' THEN NEW.id ELSE (to_jsonb(NEW)->>TG_ARGV[0])::bigint END);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER allocation_capacity_change_inserted AFTER INSERT ON allocation_allocation
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION allocation_capacity_change_allocations();
CREATE TRIGGER allocation_capacity_change_updated AFTER UPDATE ON allocation_allocation
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION allocation_capacity_change_allocations();
CREATE TRIGGER allocation_capacity_change_deleted AFTER DELETE ON allocation_allocation
REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION allocation_capacity_change_allocations();

CREATE TRIGGER allocation_capacity_change_inserted AFTER INSERT ON allocation_gpushare
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION allocation_capacity_change_shares();
CREATE TRIGGER allocation_capacity_change_updated AFTER UPDATE ON allocation_gpushare
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION allocation_capacity_change_shares();
CREATE TRIGGER allocation_capacity_change_deleted AFTER DELETE ON allocation_gpushare
REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION allocation_capacity_change_shares();

CREATE TRIGGER allocation_capacity_change_added AFTER INSERT OR DELETE ON marketplace_node
FOR EACH ROW EXECUTE FUNCTION allocation_capacity_change_node('id');
CREATE TRIGGER allocation_capacity_change_changed AFTER UPDATE ON marketplace_node
FOR EACH ROW WHEN ((OLD.status, OLD.gpu_model_id, OLD.region_id, OLD.hostname, OLD.gpu_count, OLD.cpu_millicores,
                    OLD.memory_mib, OLD.price_per_gpu_hour, OLD.currency)
                   IS DISTINCT FROM
                   (NEW.status, NEW.gpu_model_id, NEW.region_id, NEW.hostname, NEW.gpu_count, NEW.cpu_millicores,
                    NEW.memory_mib, NEW.price_per_gpu_hour, NEW.currency))
EXECUTE FUNCTION allocation_capacity_change_node('id');

CREATE TRIGGER allocation_capacity_change_added AFTER INSERT OR DELETE ON marketplace_gpu
FOR EACH ROW EXECUTE FUNCTION allocation_capacity_change_node('node_id');
CREATE TRIGGER allocation_capacity_change_changed AFTER UPDATE ON marketplace_gpu
FOR EACH ROW WHEN ((OLD.node_id, OLD.index, OLD.health) IS DISTINCT FROM (NEW.node_id, NEW.index, NEW.health))
EXECUTE FUNCTION allocation_capacity_change_node('node_id');

CREATE TRIGGER allocation_capacity_change_added AFTER INSERT OR DELETE ON marketplace_maintenancewindow
FOR EACH ROW EXECUTE FUNCTION allocation_capacity_change_node('node_id');
CREATE TRIGGER allocation_capacity_change_changed AFTER UPDATE ON marketplace_maintenancewindow
FOR EACH ROW WHEN ((OLD.node_id, OLD.start_at, OLD.end_at) IS DISTINCT FROM (NEW.node_id, NEW.start_at, NEW.end_at))
EXECUTE FUNCTION allocation_capacity_change_node('node_id');
"""

# Instants travel as integer microseconds since the Unix epoch: exact, and cheap to compare in Python.
READERS = """
CREATE FUNCTION allocation_capacity_micros(t timestamptz) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT (extract(epoch FROM t) * 1000000)::bigint
$$;

CREATE FUNCTION allocation_capacity_allocations(p_ids bigint[]) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT COALESCE(jsonb_agg(jsonb_build_array(
        a.id, a.node_id, a.customer_id, a.gpu_model_id, allocation_capacity_micros(a.start_at),
        allocation_capacity_micros(a.end_at), a.cpu_millicores, a.memory_mib, a.gpu_milli_total,
        COALESCE((SELECT jsonb_agg(jsonb_build_array(s.gpu_id, s.gpu_milli, allocation_capacity_micros(s.start_at),
                                                     allocation_capacity_micros(s.end_at)))
                  FROM allocation_gpushare s WHERE s.allocation_id = a.id), '[]'::jsonb)
    )), '[]'::jsonb)
    FROM allocation_allocation a WHERE a.id = ANY(p_ids)
$$;

CREATE FUNCTION allocation_capacity_nodes(p_ids bigint[]) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT COALESCE(jsonb_agg(jsonb_build_array(
        n.id, n.gpu_model_id, m.name, n.region_id, n.hostname, n.gpu_count, n.cpu_millicores, n.memory_mib,
        n.price_per_gpu_hour::text, n.currency, n.status,
        COALESCE((SELECT jsonb_agg(g.id ORDER BY g.index) FROM marketplace_gpu g
                  WHERE g.node_id = n.id AND g.health = 'healthy'), '[]'::jsonb),
        COALESCE((SELECT jsonb_agg(jsonb_build_array(allocation_capacity_micros(w.start_at),
                                                     allocation_capacity_micros(w.end_at)))
                  FROM marketplace_maintenancewindow w WHERE w.node_id = n.id), '[]'::jsonb),
        COALESCE((SELECT jsonb_agg(g.id) FROM marketplace_gpu g WHERE g.node_id = n.id), '[]'::jsonb),
        r.code
    )), '[]'::jsonb)
    FROM marketplace_node n JOIN marketplace_gpumodel m ON m.id = n.gpu_model_id
    JOIN marketplace_region r ON r.id = n.region_id
    WHERE p_ids IS NULL OR n.id = ANY(p_ids)
$$;

CREATE FUNCTION allocation_capacity_snapshot() RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'xmax', pg_snapshot_xmax(pg_current_snapshot())::text,
        'pending', (SELECT COALESCE(jsonb_agg(x::text), '[]'::jsonb) FROM (
                        SELECT pg_snapshot_xip(pg_current_snapshot()) AS x
                        UNION SELECT pg_current_xact_id_if_assigned()) running WHERE x IS NOT NULL))
$$;

CREATE FUNCTION allocation_capacity_load(p_ends_after timestamptz) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT allocation_capacity_snapshot() || jsonb_build_object(
        'nodes', allocation_capacity_nodes(NULL),
        'allocations', allocation_capacity_allocations(ARRAY(
            SELECT a.id FROM allocation_allocation a
            WHERE a.end_at > p_ends_after OR EXISTS (
                SELECT 1 FROM allocation_gpushare s WHERE s.allocation_id = a.id AND s.end_at > p_ends_after))))
$$;
"""

REMOVE = """
DROP FUNCTION IF EXISTS allocation_capacity_load(timestamptz);
DROP FUNCTION IF EXISTS allocation_capacity_snapshot();
DROP FUNCTION IF EXISTS allocation_capacity_nodes(bigint[]);
DROP FUNCTION IF EXISTS allocation_capacity_allocations(bigint[]);
DROP FUNCTION IF EXISTS allocation_capacity_micros(timestamptz);
DROP TRIGGER IF EXISTS allocation_capacity_change_inserted ON allocation_allocation;
DROP TRIGGER IF EXISTS allocation_capacity_change_updated ON allocation_allocation;
DROP TRIGGER IF EXISTS allocation_capacity_change_deleted ON allocation_allocation;
DROP TRIGGER IF EXISTS allocation_capacity_change_inserted ON allocation_gpushare;
DROP TRIGGER IF EXISTS allocation_capacity_change_updated ON allocation_gpushare;
DROP TRIGGER IF EXISTS allocation_capacity_change_deleted ON allocation_gpushare;
DROP TRIGGER IF EXISTS allocation_capacity_change_added ON marketplace_node;
DROP TRIGGER IF EXISTS allocation_capacity_change_changed ON marketplace_node;
DROP TRIGGER IF EXISTS allocation_capacity_change_added ON marketplace_gpu;
DROP TRIGGER IF EXISTS allocation_capacity_change_changed ON marketplace_gpu;
DROP TRIGGER IF EXISTS allocation_capacity_change_added ON marketplace_maintenancewindow;
DROP TRIGGER IF EXISTS allocation_capacity_change_changed ON marketplace_maintenancewindow;
DROP FUNCTION IF EXISTS allocation_capacity_change_allocations();
DROP FUNCTION IF EXISTS allocation_capacity_change_shares();
DROP FUNCTION IF EXISTS allocation_capacity_change_node();
DROP TABLE IF EXISTS allocation_capacity_change;
DROP TABLE IF EXISTS allocation_capacity_purge_mark;
"""


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FEED, params=None)
        schema_editor.execute(READERS, params=None)


def remove(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(REMOVE, params=None)


class Migration(migrations.Migration):

    dependencies = [
        ("allocation", "0022_rebuild_invalid_window_indexes"),
        ("marketplace", "0010_node_price_order"),
    ]

    operations = [migrations.RunPython(install, remove)]
