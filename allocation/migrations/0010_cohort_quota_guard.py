"""Let the PostgreSQL quota guard admit borrowing from a cohort, within the same limits as the service.

An organization above its own quota over all models is admitted only if it is in a cohort, stays
within its borrowing limit, and the cohort's members together stay within the sum of their own
quotas over all models. Per-model quotas never borrow. The cohort row is locked for the check.
"""

import importlib

from django.db import migrations

PEAK_FUNCTION = """
CREATE OR REPLACE FUNCTION allocation_peak_milli(customer bigint, model bigint, window_start timestamptz,
                                                 window_end timestamptz) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT COALESCE(MAX(running), 0) FROM (
        SELECT SUM(delta) OVER (ORDER BY at, delta ROWS UNBOUNDED PRECEDING) AS running
        FROM (
            SELECT GREATEST(a.start_at, window_start) AS at, a.gpu_milli_total::bigint AS delta
            FROM allocation_allocation a
            WHERE a.customer_id = customer AND a.end_at > window_start AND a.start_at < window_end
              AND a.end_at > a.start_at AND (model IS NULL OR a.gpu_model_id = model)
            UNION ALL
            SELECT LEAST(a.end_at, window_end), -a.gpu_milli_total::bigint
            FROM allocation_allocation a
            WHERE a.customer_id = customer AND a.end_at > window_start AND a.start_at < window_end
              AND a.end_at > a.start_at AND (model IS NULL OR a.gpu_model_id = model)
        ) deltas
    ) sweep
$$;
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
    member record;
    cohort_quota bigint;
    cohort_peak bigint;
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
        peak_milli := allocation_peak_milli(NEW.customer_id, quota.gpu_model_id, NEW.start_at, NEW.end_at);
        IF peak_milli <= quota.max_gpu_milli THEN
            CONTINUE;
        END IF;

        -- Above its own quota: only the quota over all models may borrow from a cohort.
        SELECT m.cohort_id, m.borrowing_limit_gpu_milli INTO member
        FROM allocation_cohortmembership m WHERE m.organization_id = NEW.customer_id;
        IF quota.gpu_model_id IS NOT NULL OR member.cohort_id IS NULL THEN
            RAISE EXCEPTION 'Organization % would hold % GPU milli (model %) between % and %; its quota is %.',
                NEW.customer_id, peak_milli, COALESCE(quota.gpu_model_id::text, 'any'),
                NEW.start_at, NEW.end_at, quota.max_gpu_milli
                USING ERRCODE = 'check_violation', CONSTRAINT = 'allocation_quota_limit';
        END IF;
        IF member.borrowing_limit_gpu_milli IS NOT NULL
           AND peak_milli - quota.max_gpu_milli > member.borrowing_limit_gpu_milli THEN
            RAISE EXCEPTION 'Organization % would borrow % GPU milli between % and %; its borrowing limit is %.',
                NEW.customer_id, peak_milli - quota.max_gpu_milli, NEW.start_at, NEW.end_at,
                member.borrowing_limit_gpu_milli
                USING ERRCODE = 'check_violation', CONSTRAINT = 'allocation_quota_limit';
        END IF;

        UPDATE allocation_cohort SET allocation_version = allocation_version + 1 WHERE id = member.cohort_id;
        SELECT COALESCE(SUM(q.max_gpu_milli), 0) INTO cohort_quota
        FROM allocation_quota q JOIN allocation_cohortmembership m ON m.organization_id = q.organization_id
        WHERE m.cohort_id = member.cohort_id AND q.gpu_model_id IS NULL;
        SELECT COALESCE(MAX(running), 0) INTO cohort_peak FROM (
            SELECT SUM(delta) OVER (ORDER BY at, delta ROWS UNBOUNDED PRECEDING) AS running
            FROM (
                SELECT GREATEST(a.start_at, NEW.start_at) AS at, a.gpu_milli_total::bigint AS delta
                FROM allocation_allocation a JOIN allocation_cohortmembership m ON m.organization_id = a.customer_id
                WHERE m.cohort_id = member.cohort_id AND a.end_at > NEW.start_at AND a.start_at < NEW.end_at
                  AND a.end_at > a.start_at
                UNION ALL
                SELECT LEAST(a.end_at, NEW.end_at), -a.gpu_milli_total::bigint
                FROM allocation_allocation a JOIN allocation_cohortmembership m ON m.organization_id = a.customer_id
                WHERE m.cohort_id = member.cohort_id AND a.end_at > NEW.start_at AND a.start_at < NEW.end_at
                  AND a.end_at > a.start_at
            ) deltas
        ) sweep;
        IF cohort_peak > cohort_quota THEN
            RAISE EXCEPTION 'Cohort % would hold % GPU milli between % and %; its members'' quotas total %.',
                member.cohort_id, cohort_peak, NEW.start_at, NEW.end_at, cohort_quota
                USING ERRCODE = 'check_violation', CONSTRAINT = 'allocation_quota_limit';
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

"""


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PEAK_FUNCTION, params=None)
        schema_editor.execute(ALLOCATION_GUARD, params=None)


def restore(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        previous = importlib.import_module("allocation.migrations.0002_postgres_guarantees")
        function = previous.ALLOCATION_GUARD[: previous.ALLOCATION_GUARD.index("CREATE TRIGGER")]
        schema_editor.execute(function, params=None)
        schema_editor.execute("DROP FUNCTION IF EXISTS allocation_peak_milli(bigint, bigint, timestamptz, timestamptz);",
                              params=None)


class Migration(migrations.Migration):
    dependencies = [("allocation", "0009_cohorts")]
    operations = [migrations.RunPython(install, restore)]
