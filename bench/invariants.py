"""The independent invariant checker behind the API, soak and fault-tolerance runs.

Plain SQL over the tables, written apart from the product's own queries. It checks that no GPU,
node or quota is overrun at any instant. It also checks that nothing is half-written: a booked
reservation without its allocation, a finished one still holding capacity, or a migration hold
without its migration. Each check counts offending rows, so every value of a clean database is 0.
"""

import psycopg

CHECKS = {
    "gpu_over_1000_milli": """
        SELECT COUNT(*) FROM (
            SELECT gpu_id, MAX(running) AS peak FROM (
                SELECT gpu_id, SUM(delta) OVER (PARTITION BY gpu_id ORDER BY at, delta ROWS UNBOUNDED PRECEDING)
                       AS running
                FROM (SELECT gpu_id, start_at AS at, gpu_milli AS delta FROM allocation_gpushare WHERE end_at > start_at
                      UNION ALL
                      SELECT gpu_id, end_at, -gpu_milli FROM allocation_gpushare WHERE end_at > start_at) events
            ) sweep GROUP BY gpu_id
        ) peaks WHERE peak > 1000""",
    "node_cpu_or_memory_overcommitted": """
        SELECT COUNT(*) FROM (
            SELECT node_id, MAX(cpu) AS cpu, MAX(memory) AS memory FROM (
                SELECT node_id,
                       SUM(cpu) OVER (PARTITION BY node_id ORDER BY at, sign ROWS UNBOUNDED PRECEDING) AS cpu,
                       SUM(memory) OVER (PARTITION BY node_id ORDER BY at, sign ROWS UNBOUNDED PRECEDING) AS memory
                FROM (SELECT node_id, start_at AS at, 1 AS sign, cpu_millicores AS cpu, memory_mib AS memory
                      FROM allocation_allocation WHERE end_at > start_at
                      UNION ALL
                      SELECT node_id, end_at, -1, -cpu_millicores, -memory_mib
                      FROM allocation_allocation WHERE end_at > start_at) events
            ) sweep GROUP BY node_id
        ) peaks JOIN marketplace_node n ON n.id = peaks.node_id
        WHERE peaks.cpu > n.cpu_millicores OR peaks.memory > n.memory_mib""",
    # A customer stays within each quota per GPU model. Over all models it may pass its own quota
    # only as a cohort member: by at most its borrowing limit, and never past its cohort's summed
    # quotas, which every borrowing admission checked. A lender admitted within its own quota may
    # later take the cohort past that sum, so at each instant only the members above their own
    # quota are added up against it.
    "quota_overrun": """
        WITH events AS (
            SELECT customer_id, gpu_model_id, start_at AS at, gpu_milli_total AS delta
            FROM allocation_allocation WHERE end_at > start_at
            UNION ALL
            SELECT customer_id, gpu_model_id, end_at, -gpu_milli_total
            FROM allocation_allocation WHERE end_at > start_at
        ), overall AS (
            SELECT customer_id, MAX(running) AS peak FROM (
                SELECT customer_id,
                       SUM(delta) OVER (PARTITION BY customer_id ORDER BY at, delta ROWS UNBOUNDED PRECEDING) AS running
                FROM events
            ) sweep GROUP BY customer_id
        ), per_model AS (
            SELECT customer_id, gpu_model_id, MAX(running) AS peak FROM (
                SELECT customer_id, gpu_model_id,
                       SUM(delta) OVER (PARTITION BY customer_id, gpu_model_id ORDER BY at, delta
                                        ROWS UNBOUNDED PRECEDING) AS running
                FROM events
            ) sweep GROUP BY customer_id, gpu_model_id
        ), cohort_quota AS (
            SELECT m.cohort_id, SUM(q.max_gpu_milli) AS total
            FROM allocation_cohortmembership m
            JOIN allocation_quota q ON q.organization_id = m.organization_id AND q.gpu_model_id IS NULL
            GROUP BY m.cohort_id
        ), cohort_instants AS (
            SELECT DISTINCT m.cohort_id, a.start_at AS at
            FROM allocation_allocation a
            JOIN allocation_cohortmembership m ON m.organization_id = a.customer_id
            WHERE a.end_at > a.start_at
        ), member_usage AS (
            SELECT i.cohort_id, i.at, m.organization_id, SUM(a.gpu_milli_total) AS used
            FROM cohort_instants i
            JOIN allocation_cohortmembership m ON m.cohort_id = i.cohort_id
            JOIN allocation_allocation a ON a.customer_id = m.organization_id AND a.start_at <= i.at
                                         AND a.end_at > i.at
            GROUP BY i.cohort_id, i.at, m.organization_id
        ), borrowers AS (
            SELECT u.cohort_id, u.at, SUM(u.used) AS used
            FROM member_usage u
            JOIN allocation_quota q ON q.organization_id = u.organization_id AND q.gpu_model_id IS NULL
            WHERE u.used > q.max_gpu_milli
            GROUP BY u.cohort_id, u.at
        )
        SELECT (SELECT COUNT(*) FROM overall p
                JOIN allocation_quota q ON q.organization_id = p.customer_id AND q.gpu_model_id IS NULL
                LEFT JOIN allocation_cohortmembership m ON m.organization_id = p.customer_id
                LEFT JOIN cohort_quota c ON c.cohort_id = m.cohort_id
                WHERE p.peak > q.max_gpu_milli
                  AND (m.id IS NULL OR p.peak > c.total
                       OR p.peak - q.max_gpu_milli > COALESCE(m.borrowing_limit_gpu_milli, p.peak)))
             + (SELECT COUNT(*) FROM per_model p
                JOIN allocation_quota q ON q.organization_id = p.customer_id AND q.gpu_model_id = p.gpu_model_id
                WHERE p.peak > q.max_gpu_milli)
             + (SELECT COUNT(DISTINCT b.cohort_id) FROM borrowers b
                JOIN cohort_quota c ON c.cohort_id = b.cohort_id
                WHERE b.used > c.total)""",
    # Half-written states, as a crash or a lost database between two writes would leave them.
    "booked_without_allocation": """
        SELECT COUNT(*) FROM allocation_reservation r
        WHERE r.status IN ('scheduled', 'active')
          AND NOT EXISTS (SELECT 1 FROM allocation_allocation a WHERE a.reservation_id = r.id AND a.end_at > a.start_at)""",
    "finished_but_holding_capacity": """
        SELECT COUNT(*) FROM allocation_reservation r JOIN allocation_allocation a ON a.reservation_id = r.id
        WHERE r.status IN ('cancelled', 'rejected', 'expired', 'failed', 'preempted')
          AND a.end_at > a.start_at AND a.end_at > now() + interval '1 second'""",
    "allocation_without_shares": """
        SELECT COUNT(*) FROM allocation_allocation a JOIN allocation_reservation r ON r.id = a.reservation_id
        WHERE a.end_at > a.start_at AND r.gpu_count > 0
          AND NOT EXISTS (SELECT 1 FROM allocation_gpushare s WHERE s.allocation_id = a.id)""",
    "share_outside_its_allocation": """
        SELECT COUNT(*) FROM allocation_gpushare s JOIN allocation_allocation a ON a.id = s.allocation_id
        WHERE s.start_at < a.start_at OR s.end_at > a.end_at""",
    "hold_without_open_migration": """
        SELECT COUNT(*) FROM allocation_allocation a
        WHERE a.reservation_id IS NULL AND a.end_at > now()
          AND NOT EXISTS (SELECT 1 FROM scheduler_migration m
                          WHERE m.hold_id = a.id AND m.status IN ('planned', 'target_reserved', 'moving'))""",
}


def check_invariants(database_url: str, placed: list[int], rejected: list[int]) -> dict[str, int]:
    """Count violations over the database at ``database_url``.

    ``placed`` are reservation ids whose response said booked (201, or 202 pending approval) and
    ``rejected`` those whose response said rejected (409). Each placed one needs an allocation, and no
    rejected one may have one.
    """
    found = {}
    with psycopg.connect(database_url) as connection:
        for name, sql in CHECKS.items():
            found[name] = connection.execute(sql).fetchone()[0]
        found["placed_without_allocation"] = connection.execute(
            "SELECT COUNT(*) FROM unnest(%s::bigint[]) AS r(id) WHERE NOT EXISTS "
            "(SELECT 1 FROM allocation_allocation a WHERE a.reservation_id = r.id)", [placed]).fetchone()[0]
        found["rejected_with_allocation"] = connection.execute(
            "SELECT COUNT(*) FROM allocation_allocation a WHERE a.reservation_id = ANY(%s::bigint[])",
            [rejected]).fetchone()[0]
    return found


def main() -> None:
    """Print the violations of the database named on the command line (or by DATABASE_URL) as JSON; exit 1 if any."""
    import json
    import os
    import sys

    usage = "usage: python -m bench.invariants [postgres://USER@HOST:PORT/DATABASE] (default: DATABASE_URL)"
    database_url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DATABASE_URL", "")
    if database_url in ("-h", "--help"):
        print(usage)
        sys.exit(0)
    if not database_url.startswith(("postgres://", "postgresql://")):
        sys.exit(f"{usage}\nGot {database_url!r}: name a PostgreSQL database URL.")
    found = check_invariants(database_url, [], [])
    print(json.dumps(found))
    sys.exit(1 if any(found.values()) else 0)


if __name__ == "__main__":
    main()
