"""PostgreSQL triggers that make over-allocation impossible, whatever the Python code does.

- ``allocation_share_guard``: the shares on one GPU never exceed 1000 milli at any instant.
- ``allocation_allocation_guard``: a node's CPU and memory are never overcommitted at any instant,
  and a customer's allocations never exceed a quota (per GPU model, or over all models).
- ``allocation_reservation_status_guard``: reservations are created pending, and the status only
  moves along the lifecycle's allowed transitions.

Each guard first updates a version column of the GPU, node or organization row. That row lock
makes concurrent writers of the same GPU, node or customer run the check one after another; under
REPEATABLE READ or SERIALIZABLE a concurrent writer fails with a serialization error instead.
The peak load in a window is a sweep over the start and end instants of the overlapping rows,
with ends sorted before starts at the same instant because windows are half-open.

Violations raise SQLSTATE 23P01 (capacity) or 23514 (quota, status), which Django reports as
``IntegrityError``. SQLite, used only for the demo, has none of these triggers: its writers are
serialised by ``BEGIN IMMEDIATE`` and the services check the same rules.
"""

from django.db import migrations

ALLOWED_TRANSITIONS = [
    ("active", "cancelled"), ("active", "completed"), ("active", "failed"),
    ("pending", "active"), ("pending", "cancelled"), ("pending", "failed"), ("pending", "rejected"),
    ("pending", "scheduled"),
    ("scheduled", "active"), ("scheduled", "cancelled"), ("scheduled", "completed"), ("scheduled", "failed"),
]

SHARE_GUARD = """
CREATE OR REPLACE FUNCTION allocation_share_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    peak_milli bigint;
BEGIN
    IF NEW.end_at <= NEW.start_at THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.gpu_id = OLD.gpu_id AND NEW.gpu_milli <= OLD.gpu_milli
       AND NEW.start_at >= OLD.start_at AND NEW.end_at <= OLD.end_at THEN
        RETURN NULL;  -- a shrinking share cannot overload the GPU
    END IF;

    UPDATE marketplace_gpu SET share_version = share_version + 1 WHERE id = NEW.gpu_id;

    SELECT COALESCE(MAX(running), 0) INTO peak_milli FROM (
        SELECT SUM(delta) OVER (ORDER BY at, delta ROWS UNBOUNDED PRECEDING) AS running
        FROM (
            SELECT GREATEST(s.start_at, NEW.start_at) AS at, s.gpu_milli::bigint AS delta
            FROM allocation_gpushare s
            WHERE s.gpu_id = NEW.gpu_id AND s.end_at > NEW.start_at AND s.start_at < NEW.end_at
              AND s.end_at > s.start_at
            UNION ALL
            SELECT LEAST(s.end_at, NEW.end_at), -s.gpu_milli::bigint
            FROM allocation_gpushare s
            WHERE s.gpu_id = NEW.gpu_id AND s.end_at > NEW.start_at AND s.start_at < NEW.end_at
              AND s.end_at > s.start_at
        ) deltas
    ) sweep;

    IF peak_milli > 1000 THEN
        RAISE EXCEPTION 'GPU % would hold % milli between % and %; a GPU holds at most 1000.',
            NEW.gpu_id, peak_milli, NEW.start_at, NEW.end_at
            USING ERRCODE = 'exclusion_violation', CONSTRAINT = 'share_gpu_capacity';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER allocation_share_guard
AFTER INSERT OR UPDATE ON allocation_gpushare
FOR EACH ROW EXECUTE FUNCTION allocation_share_guard();
"""

ALLOCATION_GUARD = """
CREATE OR REPLACE FUNCTION allocation_allocation_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    cpu_capacity bigint;
    memory_capacity bigint;
    peak_cpu bigint;
    peak_memory bigint;
    peak_milli bigint;
    quota record;
BEGIN
    IF NEW.end_at <= NEW.start_at THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.node_id = OLD.node_id AND NEW.customer_id = OLD.customer_id
       AND NEW.gpu_model_id = OLD.gpu_model_id
       AND NEW.cpu_millicores <= OLD.cpu_millicores AND NEW.memory_mib <= OLD.memory_mib
       AND NEW.gpu_milli_total <= OLD.gpu_milli_total
       AND NEW.start_at >= OLD.start_at AND NEW.end_at <= OLD.end_at THEN
        RETURN NULL;  -- a shrinking allocation cannot overcommit anything
    END IF;

    -- Node CPU and memory.
    UPDATE marketplace_node SET allocation_version = allocation_version + 1 WHERE id = NEW.node_id
    RETURNING cpu_millicores, memory_mib INTO cpu_capacity, memory_capacity;

    SELECT COALESCE(MAX(running_cpu), 0), COALESCE(MAX(running_memory), 0) INTO peak_cpu, peak_memory FROM (
        SELECT SUM(cpu_delta) OVER w AS running_cpu, SUM(memory_delta) OVER w AS running_memory
        FROM (
            SELECT GREATEST(a.start_at, NEW.start_at) AS at, 1 AS sign,
                   a.cpu_millicores::bigint AS cpu_delta, a.memory_mib::bigint AS memory_delta
            FROM allocation_allocation a
            WHERE a.node_id = NEW.node_id AND a.end_at > NEW.start_at AND a.start_at < NEW.end_at
              AND a.end_at > a.start_at
            UNION ALL
            SELECT LEAST(a.end_at, NEW.end_at), -1, -a.cpu_millicores::bigint, -a.memory_mib::bigint
            FROM allocation_allocation a
            WHERE a.node_id = NEW.node_id AND a.end_at > NEW.start_at AND a.start_at < NEW.end_at
              AND a.end_at > a.start_at
        ) deltas
        WINDOW w AS (ORDER BY at, sign ROWS UNBOUNDED PRECEDING)
    ) sweep;

    IF peak_cpu > cpu_capacity OR peak_memory > memory_capacity THEN
        RAISE EXCEPTION 'Node % would hold % of % CPU millicores and % of % MiB between % and %.',
            NEW.node_id, peak_cpu, cpu_capacity, peak_memory, memory_capacity, NEW.start_at, NEW.end_at
            USING ERRCODE = 'exclusion_violation', CONSTRAINT = 'allocation_node_capacity';
    END IF;

    -- Customer quotas.
    IF NEW.gpu_milli_total = 0
       OR NOT EXISTS (SELECT 1 FROM allocation_quota q WHERE q.organization_id = NEW.customer_id) THEN
        RETURN NULL;
    END IF;
    UPDATE marketplace_organization SET allocation_version = allocation_version + 1 WHERE id = NEW.customer_id;

    FOR quota IN
        SELECT q.gpu_model_id, q.max_gpu_milli FROM allocation_quota q
        WHERE q.organization_id = NEW.customer_id
          AND (q.gpu_model_id IS NULL OR q.gpu_model_id = NEW.gpu_model_id)
    LOOP
        SELECT COALESCE(MAX(running), 0) INTO peak_milli FROM (
            SELECT SUM(delta) OVER (ORDER BY at, delta ROWS UNBOUNDED PRECEDING) AS running
            FROM (
                SELECT GREATEST(a.start_at, NEW.start_at) AS at, a.gpu_milli_total::bigint AS delta
                FROM allocation_allocation a
                WHERE a.customer_id = NEW.customer_id AND a.end_at > NEW.start_at AND a.start_at < NEW.end_at
                  AND a.end_at > a.start_at
                  AND (quota.gpu_model_id IS NULL OR a.gpu_model_id = quota.gpu_model_id)
                UNION ALL
                SELECT LEAST(a.end_at, NEW.end_at), -a.gpu_milli_total::bigint
                FROM allocation_allocation a
                WHERE a.customer_id = NEW.customer_id AND a.end_at > NEW.start_at AND a.start_at < NEW.end_at
                  AND a.end_at > a.start_at
                  AND (quota.gpu_model_id IS NULL OR a.gpu_model_id = quota.gpu_model_id)
            ) deltas
        ) sweep;
        IF peak_milli > quota.max_gpu_milli THEN
            RAISE EXCEPTION 'Organization % would hold % GPU milli (model %) between % and %; its quota is %.',
                NEW.customer_id, peak_milli, COALESCE(quota.gpu_model_id::text, 'any'),
                NEW.start_at, NEW.end_at, quota.max_gpu_milli
                USING ERRCODE = 'check_violation', CONSTRAINT = 'allocation_quota_limit';
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER allocation_allocation_guard
AFTER INSERT OR UPDATE ON allocation_allocation
FOR EACH ROW EXECUTE FUNCTION allocation_allocation_guard();
"""

STATUS_GUARD = """
CREATE OR REPLACE FUNCTION allocation_reservation_status_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'pending' THEN
            RAISE EXCEPTION 'A reservation is created pending, not %.', NEW.status
                USING ERRCODE = 'check_violation', CONSTRAINT = 'reservation_status_lifecycle';
        END IF;
    ELSIF NEW.status <> OLD.status AND (OLD.status, NEW.status) NOT IN (%(pairs)s) THEN
        RAISE EXCEPTION 'Reservation % cannot move from % to %.', NEW.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'reservation_status_lifecycle';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER allocation_reservation_status_guard
BEFORE INSERT OR UPDATE OF status ON allocation_reservation
FOR EACH ROW EXECUTE FUNCTION allocation_reservation_status_guard();
""".replace("%(pairs)s", ", ".join(f"('{a}', '{b}')" for a, b in ALLOWED_TRANSITIONS))

DROP = """
DROP TRIGGER IF EXISTS allocation_share_guard ON allocation_gpushare;
DROP FUNCTION IF EXISTS allocation_share_guard();
DROP TRIGGER IF EXISTS allocation_allocation_guard ON allocation_allocation;
DROP FUNCTION IF EXISTS allocation_allocation_guard();
DROP TRIGGER IF EXISTS allocation_reservation_status_guard ON allocation_reservation;
DROP FUNCTION IF EXISTS allocation_reservation_status_guard();
"""


def install(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for sql in (SHARE_GUARD, ALLOCATION_GUARD, STATUS_GUARD):
        schema_editor.execute(sql, params=None)


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("allocation", "0001_initial"), ("marketplace", "0002_seed_gpu_models")]
    operations = [migrations.RunPython(install, uninstall)]
