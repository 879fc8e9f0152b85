"""Two PostgreSQL functions for the express reservation path (``allocation/express.py``).

``allocation_admission_context`` locks the customer's organization row and then reads what
admission needs. Each statement of a PL/pgSQL function takes a fresh snapshot under READ
COMMITTED, so the reads after the lock see every transaction that held it before.

``allocation_reservation_write`` writes a reservation decided in Python: the row, its requested
models, its events and workload, and either a rejection or the first of the ranked placements
that still holds. Each placement is tried in its own subtransaction: the node row is locked and
compared with what the shortlist read, and the allocation and its shares are inserted, which the
existing triggers check against everything committed. The rules (quotas, ranking, prices,
approvals, messages) stay in Python; these functions only lock, compare, read and write.
"""

from django.db import migrations

ADMISSION_CONTEXT = """
CREATE OR REPLACE FUNCTION allocation_admission_context(p_customer bigint, p_external_ref text)
RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM marketplace_organization WHERE id = p_customer FOR UPDATE;
    RETURN jsonb_build_object(
        'duplicate_id', (
            SELECT r.id FROM allocation_reservation r
            WHERE p_external_ref <> '' AND r.customer_id = p_customer AND r.external_ref = p_external_ref
              AND r.status <> 'rejected'
            ORDER BY r.id LIMIT 1),
        'quotas', COALESCE((
            SELECT jsonb_agg(jsonb_build_array(q.gpu_model_id, q.max_gpu_milli))
            FROM allocation_quota q WHERE q.organization_id = p_customer), '[]'::jsonb),
        'has_budget', EXISTS (SELECT 1 FROM allocation_budget b WHERE b.organization_id = p_customer),
        'approval', (
            SELECT jsonb_build_object('flagged', p.flagged, 'max_gpus', p.max_gpus_without_approval,
                                      'max_cost', p.max_cost_without_approval::text)
            FROM allocation_approvalpolicy p WHERE p.organization_id = p_customer)
    );
END;
$$;
"""

RESERVATION_WRITE = """
CREATE OR REPLACE FUNCTION allocation_reservation_write(p jsonb) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    r jsonb := p->'reservation';
    w jsonb := p->'workload';
    at_ timestamptz := (p->>'at')::timestamptz;
    written_at timestamptz := (p->>'written_at')::timestamptz;
    actor integer := (p->>'actor_id')::integer;
    v_reservation_id bigint;
    placement jsonb;
    attempt integer := 0;
    node record;
    healthy_chosen integer;
    v_allocation_id bigint;
    lost jsonb := '[]'::jsonb;
    requested_models jsonb;
BEGIN
    INSERT INTO allocation_reservation (
        customer_id, created_by_id, external_ref, gpu_count, gpu_milli_per_gpu, region_id, cpu_millicores,
        memory_mib, start_at, end_at, max_price_per_gpu_hour, currency, status, reason_code, reason_detail,
        hold_expires_at, do_not_migrate, created_at, updated_at)
    VALUES (
        (r->>'customer_id')::bigint, actor, r->>'external_ref', (r->>'gpu_count')::smallint,
        (r->>'gpu_milli_per_gpu')::smallint, (r->>'region_id')::bigint, (r->>'cpu_millicores')::integer,
        (r->>'memory_mib')::bigint, (r->>'start_at')::timestamptz, (r->>'end_at')::timestamptz,
        (r->>'max_price_per_gpu_hour')::numeric, r->>'currency', 'pending', '', '', NULL,
        (r->>'do_not_migrate')::boolean, written_at, written_at)
    RETURNING id INTO v_reservation_id;

    INSERT INTO allocation_reservation_gpu_models (reservation_id, gpumodel_id)
    SELECT v_reservation_id, model_id::bigint FROM jsonb_array_elements_text(p->'gpu_model_ids') AS model_id;
    -- The requested models as the API lists them: ordered by name in the database's collation.
    SELECT COALESCE(jsonb_agg(jsonb_build_array(m.id, m.name) ORDER BY m.name), '[]'::jsonb) INTO requested_models
    FROM marketplace_gpumodel m
    WHERE m.id IN (SELECT model_id::bigint FROM jsonb_array_elements_text(p->'gpu_model_ids') AS model_id);
    INSERT INTO allocation_reservationevent (reservation_id, actor_id, at, from_status, to_status, reason_code, note)
    VALUES (v_reservation_id, actor, at_, '', 'pending', '', p->>'submitted_note');
    INSERT INTO scheduler_workload (
        reservation_id, priority_class_id, queue_id, interruptible, latest_start_at, duration_seconds, queued_at,
        position, waiting_reason_code, waiting_reason, estimated_start_at, requeued_from_id, start_attempts,
        failed_node_ids)
    VALUES (
        v_reservation_id, (w->>'priority_class_id')::bigint, (w->>'queue_id')::bigint, (w->>'interruptible')::boolean,
        (w->>'latest_start_at')::timestamptz, (w->>'duration_seconds')::integer, NULL, NULL, '', '', NULL, NULL, 0,
        '[]'::jsonb);

    IF p->'rejection' IS NOT NULL AND p->'rejection' <> 'null'::jsonb THEN
        UPDATE allocation_reservation
        SET status = 'rejected', reason_code = p->'rejection'->>'reason_code',
            reason_detail = p->'rejection'->>'note', updated_at = written_at
        WHERE id = v_reservation_id;
        INSERT INTO allocation_reservationevent (reservation_id, actor_id, at, from_status, to_status, reason_code,
                                                 note)
        VALUES (v_reservation_id, actor, at_, 'pending', 'rejected', p->'rejection'->>'reason_code',
                p->'rejection'->>'note');
        RETURN jsonb_build_object('reservation_id', v_reservation_id, 'placed', NULL,
                                  'requested_models', requested_models);
    END IF;

    FOR placement IN SELECT value FROM jsonb_array_elements(p->'placements') LOOP
        attempt := attempt + 1;
        BEGIN
            SELECT n.id, n.hostname, n.status, n.gpu_count, n.cpu_millicores, n.memory_mib, n.price_per_gpu_hour,
                   n.currency, n.gpu_model_id, n.region_id, gm.name AS gpu_model_name, pr.slug AS provider_slug,
                   rg.code AS region_code,
                   EXISTS (SELECT 1 FROM marketplace_maintenancewindow mw
                           WHERE mw.node_id = n.id AND mw.start_at < (r->>'end_at')::timestamptz
                             AND mw.end_at > (r->>'start_at')::timestamptz) AS in_maintenance
            INTO node
            FROM marketplace_node n
            JOIN marketplace_gpumodel gm ON gm.id = n.gpu_model_id
            JOIN marketplace_organization pr ON pr.id = n.provider_id
            JOIN marketplace_region rg ON rg.id = n.region_id
            WHERE n.id = (placement->>'node_id')::bigint
            FOR UPDATE OF n;

            SELECT COUNT(*) INTO healthy_chosen FROM marketplace_gpu g
            WHERE g.node_id = node.id AND g.health = 'healthy'
              AND g.id IN (SELECT (share->>0)::bigint FROM jsonb_array_elements(placement->'gpu_shares') AS share);

            IF node.id IS NULL OR node.status <> 'active' OR node.in_maintenance
               OR NOT (p->'allowed_gpu_model_ids' @> to_jsonb(node.gpu_model_id))
               OR node.region_id IS DISTINCT FROM COALESCE((r->>'region_id')::bigint, node.region_id)
               OR node.hostname <> placement->>'hostname'
               OR node.gpu_count <> (placement->>'gpu_count')::integer
               OR node.cpu_millicores <> (placement->>'cpu_millicores')::integer
               OR node.memory_mib <> (placement->>'memory_mib')::bigint
               OR node.price_per_gpu_hour <> (placement->>'list_price')::numeric
               OR healthy_chosen < jsonb_array_length(placement->'gpu_shares') THEN
                -- Rolls the subtransaction back, which also releases the node lock.
                RAISE EXCEPTION 'Node % changed after the shortlist was read.', placement->>'node_id';
            END IF;

            INSERT INTO allocation_allocation (
                reservation_id, customer_id, node_id, gpu_model_id, start_at, end_at, cpu_millicores, memory_mib,
                gpu_milli_total, borrowed_gpu_milli, billed_gpu_milli, price_per_gpu_hour, currency, created_at,
                released_at)
            SELECT v_reservation_id, (r->>'customer_id')::bigint, n.id, n.gpu_model_id, (r->>'start_at')::timestamptz,
                   (r->>'end_at')::timestamptz, (r->>'cpu_millicores')::integer, (r->>'memory_mib')::bigint,
                   (p->>'gpu_milli_total')::integer, (p->>'borrowed_gpu_milli')::integer,
                   (placement->>'billed_gpu_milli')::integer, (placement->>'price_per_gpu_hour')::numeric,
                   n.currency, written_at, NULL
            FROM marketplace_node n WHERE n.id = node.id
            RETURNING id INTO v_allocation_id;

            INSERT INTO allocation_gpushare (allocation_id, gpu_id, gpu_milli, start_at, end_at)
            SELECT v_allocation_id, (share->>0)::bigint, (share->>1)::smallint, (r->>'start_at')::timestamptz,
                   (r->>'end_at')::timestamptz
            FROM jsonb_array_elements(placement->'gpu_shares') AS share;
        EXCEPTION WHEN integrity_constraint_violation OR raise_exception THEN
            lost := lost || jsonb_build_object('node_id', placement->'node_id', 'error', SQLERRM);
            CONTINUE;
        END;

        UPDATE allocation_reservation
        SET status = placement->>'status', reason_code = '', reason_detail = placement->>'note',
            hold_expires_at = (placement->>'hold_expires_at')::timestamptz, updated_at = written_at
        WHERE id = v_reservation_id;
        INSERT INTO allocation_reservationevent (reservation_id, actor_id, at, from_status, to_status, reason_code,
                                                 note)
        VALUES (v_reservation_id, actor, at_, 'pending', placement->>'status', '', placement->>'note');
        INSERT INTO scheduler_decision (reservation_id, cycle_id, kind, reason_code, reason, at, detail)
        VALUES (v_reservation_id, NULL, 'placed', '', placement->>'note', at_,
                jsonb_build_object('node_id', node.id, 'status', placement->>'status'));

        RETURN jsonb_build_object(
            'reservation_id', v_reservation_id, 'placed', attempt - 1, 'allocation_id', v_allocation_id,
            'requested_models', requested_models,
            'currency', node.currency, 'provider_slug', node.provider_slug, 'region_code', node.region_code,
            'gpu_model_id', node.gpu_model_id, 'gpu_model_name', node.gpu_model_name,
            'lost', lost,
            'shares', COALESCE((
                SELECT jsonb_agg(jsonb_build_array(s.id, s.gpu_id, g.index, g.uuid::text) ORDER BY g.index)
                FROM allocation_gpushare s JOIN marketplace_gpu g ON g.id = s.gpu_id
                WHERE s.allocation_id = v_allocation_id), '[]'::jsonb));
    END LOOP;
    RETURN jsonb_build_object('reservation_id', v_reservation_id, 'placed', NULL, 'lost', lost,
                              'requested_models', requested_models);
END;
$$;
"""


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(ADMISSION_CONTEXT, params=None)
        schema_editor.execute(RESERVATION_WRITE, params=None)


def remove(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP FUNCTION IF EXISTS allocation_admission_context(bigint, text)", params=None)
        schema_editor.execute("DROP FUNCTION IF EXISTS allocation_reservation_write(jsonb)", params=None)


class Migration(migrations.Migration):

    dependencies = [
        ("allocation", "0016_decision_permissions"),
        ("scheduler", "0001_initial"),
    ]

    operations = [migrations.RunPython(install, remove)]
