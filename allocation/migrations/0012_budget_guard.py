"""A PostgreSQL trigger that keeps every customer within its budget, whatever the Python code does.

For each calendar period (UTC day, ISO week or month) that a new or grown allocation overlaps, the
customer's allocations are charged by their overlap with the period: billed GPUs times hours, and
that times the price. The organization row is locked first, as for quotas. A margin of 0.000001
absorbs the rounding difference between the service's arithmetic and SQL numerics.
"""

from django.db import migrations

BUDGET_GUARD = """
CREATE OR REPLACE FUNCTION allocation_budget_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    budget record;
    period_start timestamptz;
    period_end timestamptz;
    step interval;
    used_hours numeric;
    used_spend numeric;
BEGIN
    IF NEW.end_at <= NEW.start_at THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.customer_id = OLD.customer_id AND NEW.start_at >= OLD.start_at
       AND NEW.end_at <= OLD.end_at AND NEW.billed_gpu_milli <= OLD.billed_gpu_milli
       AND NEW.price_per_gpu_hour <= OLD.price_per_gpu_hour THEN
        RETURN NULL;  -- a shrinking allocation cannot overspend
    END IF;
    SELECT b.period, b.max_gpu_hours, b.max_spend INTO budget
    FROM allocation_budget b WHERE b.organization_id = NEW.customer_id;
    IF NOT FOUND OR (budget.max_gpu_hours IS NULL AND budget.max_spend IS NULL) THEN
        RETURN NULL;
    END IF;

    UPDATE marketplace_organization SET allocation_version = allocation_version + 1 WHERE id = NEW.customer_id;
    step := CASE budget.period WHEN 'day' THEN interval '1 day' WHEN 'week' THEN interval '7 days'
                               ELSE interval '1 month' END;
    period_start := date_trunc(budget.period, NEW.start_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    WHILE period_start < NEW.end_at LOOP
        period_end := ((period_start AT TIME ZONE 'UTC') + step) AT TIME ZONE 'UTC';
        SELECT COALESCE(SUM(overlap_hours * a.billed_gpu_milli / 1000), 0),
               COALESCE(SUM(overlap_hours * a.billed_gpu_milli / 1000 * a.price_per_gpu_hour), 0)
        INTO used_hours, used_spend
        FROM (
            SELECT a.*, EXTRACT(EPOCH FROM (LEAST(a.end_at, period_end) - GREATEST(a.start_at, period_start)))
                        / 3600 AS overlap_hours
            FROM allocation_allocation a
            WHERE a.customer_id = NEW.customer_id AND a.end_at > period_start AND a.start_at < period_end
              AND a.end_at > a.start_at
        ) a;
        IF budget.max_gpu_hours IS NOT NULL AND used_hours > budget.max_gpu_hours + 0.000001 THEN
            RAISE EXCEPTION 'Organization % would use % GPU-hours in the % starting %; its budget is %.',
                NEW.customer_id, round(used_hours, 3), budget.period, period_start, budget.max_gpu_hours
                USING ERRCODE = 'check_violation', CONSTRAINT = 'allocation_budget_limit';
        END IF;
        IF budget.max_spend IS NOT NULL AND used_spend > budget.max_spend + 0.000001 THEN
            RAISE EXCEPTION 'Organization % would spend % in the % starting %; its budget is %.',
                NEW.customer_id, round(used_spend, 2), budget.period, period_start, budget.max_spend
                USING ERRCODE = 'check_violation', CONSTRAINT = 'allocation_budget_limit';
        END IF;
        period_start := period_end;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER allocation_budget_guard
AFTER INSERT OR UPDATE ON allocation_allocation
FOR EACH ROW EXECUTE FUNCTION allocation_budget_guard();
"""

DROP = """
DROP TRIGGER IF EXISTS allocation_budget_guard ON allocation_allocation;
DROP FUNCTION IF EXISTS allocation_budget_guard();
"""


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BUDGET_GUARD, params=None)


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("allocation", "0011_budgets")]
    operations = [migrations.RunPython(install, uninstall)]
