"""Read queries for placement, quotas and offers.

The candidate query does the fleet-wide filtering inside the database, so one placement decision
reads only a shortlist of nodes into Python, however large the fleet. Usage in a window is the
peak over its instants, as the PostgreSQL triggers compute it: a sweep over the start and end of
every overlapping row, with ends before starts at the same instant because windows are half-open.
Two short bookings inside one long window therefore count once each, not together.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterable

from django.db import connection, models

from marketplace.models import GPU_MILLI_PER_GPU, Gpu, GpuModel, MaintenanceWindow, Node, Region

from .models import Allocation, CohortMembership, GpuShare, Reservation, ReservationStatus
from .solvers import NodeState, PlacementRequest


@dataclass(frozen=True)
class NodeFilter:
    """Static conditions on a node: which models, which region, and the maximum price."""

    gpu_model_ids: tuple[int, ...]
    region_id: int | None = None
    max_price_per_gpu_hour: Decimal | None = None


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _when(value: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def _node_conditions(alias: str, node_filter: NodeFilter, *, with_price: bool = True,
                     window: tuple[datetime, datetime] | None = None) -> tuple[str, list[Any]]:
    """Return the SQL conditions and parameters for ``node_filter`` on the node table ``alias``.

    With ``window``, nodes with a maintenance window overlapping it are left out.
    """
    conditions = [f"{alias}.status = %s"]
    params: list[Any] = [Node.Status.ACTIVE]
    if window is not None:
        conditions.append(f"NOT EXISTS (SELECT 1 FROM {_table(MaintenanceWindow)} mw WHERE mw.node_id = {alias}.id "
                          f"AND mw.start_at < %s AND mw.end_at > %s)")
        params += [_when(window[1]), _when(window[0])]

    placeholders = ", ".join(["%s"] * len(node_filter.gpu_model_ids))
    conditions.append(f"{alias}.gpu_model_id IN ({placeholders})")
    params.extend(node_filter.gpu_model_ids)

    if node_filter.region_id is not None:
        conditions.append(f"{alias}.region_id = %s")
        params.append(node_filter.region_id)
    if with_price and node_filter.max_price_per_gpu_hour is not None:
        conditions.append(f"{alias}.price_per_gpu_hour <= %s")
        params.append(connection.ops.adapt_decimalfield_value(node_filter.max_price_per_gpu_hour, 10, 4))
    return " AND ".join(conditions), params


def _overlaps_window(alias: str = "r") -> str:
    """Return the condition that row ``alias`` overlaps the window; it takes the window start and end.

    On PostgreSQL it is written as a range overlap, which the GiST indexes of migration 0018 on
    allocations and shares serve by reading only the overlapping rows. A B-tree on ``end_at``
    would also read every row that ends after the window, which grows with the booking horizon.
    An empty row window never overlaps, as in the plain comparison used on SQLite.
    """
    if connection.vendor == "postgresql":
        return f"tstzrange({alias}.start_at, {alias}.end_at, '[)') && tstzrange(%s, %s, '[)')"
    return f"{alias}.end_at > %s AND {alias}.start_at < %s AND {alias}.end_at > {alias}.start_at"


def _peak_sql(table: str, key: str, values: dict[str, str], where: str = "", key_expression: str = "") -> str:
    """Return a query of the peak of each value per ``key`` over the window, as columns named after ``values``.

    ``values`` maps output names to the row's amount (a column of ``table``, alias ``r``). The key
    is the column ``key`` of ``table``, or ``key_expression`` named ``key`` (a constant gives one
    peak over all rows). The query takes the window start and end, then the parameters of
    ``where``, twice.
    """
    key_source = key_expression or f"r.{key}"
    amounts = ", ".join(f"{amount} AS {name}" for name, amount in values.items())
    negatives = ", ".join(f"-{amount}" for amount in values.values())
    running = ", ".join(
        f"SUM({name}) OVER (PARTITION BY {key} ORDER BY at, sign ROWS UNBOUNDED PRECEDING) AS {name}"
        for name in values
    )
    peaks = ", ".join(f"MAX({name}) AS {name}" for name in values)
    overlap = f"{_overlaps_window()} {where}"
    return f"""
        SELECT {key}, {peaks} FROM (
            SELECT {key}, {running} FROM (
                SELECT {key_source} AS {key}, r.start_at AS at, 1 AS sign, {amounts}
                FROM {table} r WHERE {overlap}
                UNION ALL
                SELECT {key_source}, r.end_at, -1, {negatives}
                FROM {table} r WHERE {overlap}
            ) deltas
        ) sweep GROUP BY {key}"""


def _sum_sql(table: str, key: str, values: dict[str, str], where: str = "") -> str:
    """Return the same columns as ``_peak_sql``, but the sum over every overlapping row: an upper bound, cheaper.

    It takes the same parameters as ``_peak_sql``; the second pair is consumed by a no-op condition.
    """
    sums = ", ".join(f"SUM({amount}) AS {name}" for name, amount in values.items())
    overlap = f"{_overlaps_window()} {where}"
    return f"""
        SELECT r.{key} AS {key}, {sums} FROM {table} r
        WHERE {overlap} AND NOT (r.end_at <= %s AND r.start_at >= %s {where})
        GROUP BY r.{key}"""


def _gpu_use_cte(where: str = "", exact: bool = True) -> str:
    """Return the ``gpu_use`` CTE: milli held on each GPU in the window (four parameters).

    ``exact`` gives the peak over the window's instants. Otherwise it is the sum of overlapping
    shares, which is never below the peak and costs a group-by instead of a sort.
    """
    build = _peak_sql if exact else _sum_sql
    return f"gpu_use AS ({build(_table(GpuShare), 'gpu_id', {'used_milli': 'r.gpu_milli'}, where)})"


def _node_use_cte(where: str = "", exact: bool = True) -> str:
    """Return the ``node_use`` CTE: each node's CPU and memory held in the window (four parameters)."""
    values = {"used_cpu": "r.cpu_millicores", "used_memory": "r.memory_mib"}
    build = _peak_sql if exact else _sum_sql
    return f"node_use AS ({build(_table(Allocation), 'node_id', values, where)})"


def _keep_subquery() -> str:
    """Return the clause that keeps PostgreSQL from merging a subquery into its parent.

    A merged subquery runs a lookup in its select list again for each use of that column outside.
    With ``OFFSET 0`` PostgreSQL computes the subquery's rows once. SQLite needs nothing.
    """
    return "OFFSET 0" if connection.vendor == "postgresql" else ""


def _window(start_at: datetime, end_at: datetime) -> list[Any]:
    return [_when(start_at), _when(end_at), _when(start_at), _when(end_at)]


def _healthy_gpus_sql(alias: str) -> str:
    return (
        f"(SELECT COUNT(*) FROM {_table(Gpu)} hg WHERE hg.node_id = {alias}.id "
        f"AND hg.health = '{Gpu.Health.HEALTHY}')"
    )


def candidate_ids(
    request: PlacementRequest, start_at: datetime, end_at: datetime, node_filter: NodeFilter, *,
    used_limit: int, free_limit: int, with_price: bool = True, exact: bool = True,
) -> list[int]:
    """Return ids of nodes that can hold ``request`` in the window: partly used ones first, tightest fit first.

    Partly used nodes (up to ``used_limit``) come from the allocations and shares that overlap the
    window, so that part costs what the live workload costs, not what the fleet size costs. Empty
    nodes (up to ``free_limit``, smaller first) come from the ``node_free_order`` index, whose scan
    stops after ``free_limit`` matches. Both parts run in one statement, so they see one snapshot
    and a node that is being filled cannot fall between them. Without ``exact``, usage is the sum
    of overlapping rows: every node returned fits, but a node that fits only between two shorter
    bookings is missed.

    NOTE: GPU health is not filtered for empty nodes, to keep that scan on the index; the policy
    skips a node whose healthy GPUs are too few. If unhealthy GPUs became common, the shortlist
    could fill with such nodes and the request would be rejected although a healthy node was free.
    """
    used_sql, used_params = _node_conditions("n", node_filter, with_price=with_price, window=(start_at, end_at))
    free_sql, free_params = _node_conditions("e", node_filter, with_price=with_price, window=(start_at, end_at))
    blocked_above = GPU_MILLI_PER_GPU - request.gpu_milli_per_gpu
    sql = f"""
        WITH {_gpu_use_cte(exact=exact)}, {_node_use_cte(exact=exact)},
        node_gpu_use AS (
            SELECT node_id,
                   SUM(CASE WHEN used_milli > %s THEN 1 ELSE 0 END) AS blocked_gpus,
                   SUM(used_milli) AS used_milli
            FROM (
                -- One lookup per used GPU by primary key. As a join, PostgreSQL's generic plan read
                -- every GPU of the fleet to hash them (0.7 ms of 1.6 ms on the trace fleet).
                SELECT (SELECT g.node_id FROM {_table(Gpu)} g WHERE g.id = u.gpu_id AND g.health = %s) AS node_id,
                       u.used_milli
                FROM gpu_use u {_keep_subquery()}
            ) healthy_use
            WHERE node_id IS NOT NULL
            GROUP BY node_id
        )
        SELECT id FROM (
            SELECT n.id
            FROM node_use nu
            JOIN {_table(Node)} n ON n.id = nu.node_id
            LEFT JOIN node_gpu_use ng ON ng.node_id = n.id
            WHERE {used_sql}
              AND n.cpu_millicores - nu.used_cpu >= %s
              AND n.memory_mib - nu.used_memory >= %s
              AND {_healthy_gpus_sql("n")} - COALESCE(ng.blocked_gpus, 0) >= %s
            ORDER BY
                -- A node without GPUs (an agent reported none) or CPU counts no share of it.
                COALESCE(0.5 * (n.cpu_millicores - nu.used_cpu - %s) / NULLIF(n.cpu_millicores, 0), 0)
                + COALESCE(0.5 * (n.gpu_count * {GPU_MILLI_PER_GPU} - COALESCE(ng.used_milli, 0) - %s)
                           / NULLIF(n.gpu_count * {GPU_MILLI_PER_GPU}, 0), 0),
                n.price_per_gpu_hour, n.id
            LIMIT %s
        ) used_nodes
        UNION ALL
        SELECT id FROM (
            SELECT e.id
            FROM {_table(Node)} e
            WHERE {free_sql}
              AND e.cpu_millicores >= %s
              AND e.memory_mib >= %s
              AND e.gpu_count >= %s
              AND NOT EXISTS (
                  SELECT 1 FROM {_table(Allocation)} a
                  WHERE a.node_id = e.id AND a.end_at > %s AND a.start_at < %s AND a.end_at > a.start_at
              )
            ORDER BY e.gpu_count, e.cpu_millicores, e.price_per_gpu_hour, e.id
            LIMIT %s
        ) free_nodes
    """
    params = [
        *_window(start_at, end_at), *_window(start_at, end_at),
        blocked_above, Gpu.Health.HEALTHY,
        *used_params,
        request.cpu_millicores, request.memory_mib, request.gpu_count,
        request.cpu_millicores, request.gpu_milli_total,
        used_limit,
        *free_params,
        request.cpu_millicores, request.memory_mib, request.gpu_count,
        _when(start_at), _when(end_at),
        free_limit,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def cheapest_empty_nodes(request: PlacementRequest, start_at: datetime, end_at: datetime,
                         node_filter: NodeFilter) -> list[int]:
    """Return, per GPU model, region and currency of ``node_filter``, the cheapest node with no booking in the window.

    Each returned node can hold the request: it is active, free of maintenance in the window, big
    enough, and has ``request.gpu_count`` healthy GPUs. Per group, the ``node_price_order`` index
    gives the nodes cheapest first and the scan stops at the first that qualifies. When most nodes
    are booked or too small, a group's scan reads all of its nodes, as listing every empty node did.
    """
    free_sql, free_params = _node_conditions("e", node_filter, window=(start_at, end_at))
    # Only groups with a node big enough when idle are searched. The nodes booked in the window are
    # read once, as a hashed set: PostgreSQL checks it before the healthy-GPU count, so that count
    # runs only for empty nodes.
    group_sql = (f"n.gpu_model_id IN ({', '.join(['%s'] * len(node_filter.gpu_model_ids))}) "
                 f"AND n.gpu_count >= %s AND n.cpu_millicores >= %s AND n.memory_mib >= %s")
    group_params: list[Any] = [*node_filter.gpu_model_ids, request.gpu_count, request.cpu_millicores,
                               request.memory_mib]
    if node_filter.region_id is not None:
        group_sql += " AND n.region_id = %s"
        group_params.append(node_filter.region_id)
    sql = f"""
        SELECT (
            SELECT e.id FROM {_table(Node)} e
            WHERE e.gpu_model_id = g.gpu_model_id AND e.region_id = g.region_id AND e.currency = g.currency
              AND {free_sql}
              AND e.gpu_count >= %s AND e.cpu_millicores >= %s AND e.memory_mib >= %s
              AND e.id NOT IN (SELECT a.node_id FROM {_table(Allocation)} a WHERE {_overlaps_window("a")})
              AND {_healthy_gpus_sql("e")} >= %s
            ORDER BY e.price_per_gpu_hour, e.id
            LIMIT 1
        ) AS cheapest
        FROM (SELECT DISTINCT n.gpu_model_id, n.region_id, n.currency FROM {_table(Node)} n WHERE {group_sql}) g
    """
    params = [*free_params, request.gpu_count, request.cpu_millicores, request.memory_mib, _when(start_at),
              _when(end_at), request.gpu_count, *group_params]
    with connection.cursor() as cursor:
        # Planned for its values on every call. PostgreSQL's generic plan, which a prepared statement
        # gets after five calls, underestimates the rows of each group. It then sorts all of a
        # group's nodes instead of reading the price index until the first fit (5 ms, not 1 ms, on
        # the bench database).
        # NOTE: the raw psycopg cursor skips Django's wrappers, so this statement is missing from
        # DEBUG query logs, test query counts and the database metrics.
        if connection.vendor == "postgresql":
            with connection.wrap_database_errors:
                cursor.cursor.execute(sql, params, prepare=False)
        else:
            cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall() if row[0] is not None]


def nodes_that_could_hold(
    request: PlacementRequest, node_filter: NodeFilter, *, limit: int, window: tuple[datetime, datetime] | None = None,
) -> list[int] | None:
    """Return the ids of the filter's active nodes big enough for the request when idle, or None if more than ``limit``.

    When the filter is narrow (one scarce model, one region), this small set can be checked window
    by window in one query. With ``window``, nodes with maintenance overlapping it are left out.
    Without it, the caller checks maintenance itself, as ``node_states_in_windows`` does.
    """
    conditions, params = _node_conditions("n", node_filter, window=window)
    # The order of the node_model_free_order index: for one model PostgreSQL reads only that model's
    # nodes. Ordered by id, it walked the primary key through the whole fleet to find the two nodes
    # of the scarcest model.
    sql = (f"SELECT n.id FROM {_table(Node)} n WHERE {conditions} AND n.cpu_millicores >= %s "
           f"AND n.memory_mib >= %s AND n.gpu_count >= %s "
           f"ORDER BY n.gpu_count, n.cpu_millicores, n.price_per_gpu_hour, n.id LIMIT %s")
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, request.cpu_millicores, request.memory_mib, request.gpu_count, limit + 1])
        node_ids = sorted(row[0] for row in cursor.fetchall())
    return node_ids if len(node_ids) <= limit else None


def node_states(node_ids: Iterable[int], start_at: datetime, end_at: datetime) -> list[NodeState]:
    """Load what is free on each of ``node_ids`` at the busiest instant of the window, as ``NodeState``."""
    node_ids = list(dict.fromkeys(node_ids))
    if not node_ids:
        return []
    if connection.vendor == "postgresql":
        # One array parameter keeps the statement's text the same for any number of nodes, so
        # psycopg can prepare it once per connection.
        in_nodes, node_params = "= ANY(%s)", [node_ids]
    else:
        in_nodes, node_params = f"IN ({', '.join(['%s'] * len(node_ids))})", node_ids
    on_nodes = f"AND r.node_id {in_nodes}"
    node_gpus = f"SELECT id FROM {_table(Gpu)} WHERE node_id {in_nodes}"
    if connection.vendor == "postgresql":
        # ARRAY(...) is computed once, so PostgreSQL reads each GPU's shares through the (gpu, end)
        # index instead of scanning every share that ends after the window starts.
        on_node_gpus = f"AND r.gpu_id = ANY(ARRAY({node_gpus}))"
    else:
        on_node_gpus = f"AND r.gpu_id IN ({node_gpus})"

    sql = f"""
        WITH {_gpu_use_cte(on_node_gpus)}, {_node_use_cte(on_nodes)}
        SELECT n.id, m.name, n.hostname, n.gpu_count, n.cpu_millicores, n.memory_mib, n.price_per_gpu_hour,
               COALESCE(nu.used_cpu, 0), COALESCE(nu.used_memory, 0), g.id, COALESCE(u.used_milli, 0)
        FROM {_table(Node)} n
        JOIN {_table(GpuModel)} m ON m.id = n.gpu_model_id
        LEFT JOIN node_use nu ON nu.node_id = n.id
        LEFT JOIN {_table(Gpu)} g ON g.node_id = n.id AND g.health = %s
        LEFT JOIN gpu_use u ON u.gpu_id = g.id
        WHERE n.id {in_nodes}
        ORDER BY n.id, g.{connection.ops.quote_name("index")}
    """
    window = [_when(start_at), _when(end_at)]
    params = [*window, *node_params, *window, *node_params,  # gpu_use
              *window, *node_params, *window, *node_params,  # node_use
              Gpu.Health.HEALTHY, *node_params]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()

    states = _states_from_rows(rows)
    return [states[node_id] for node_id in node_ids if node_id in states]


def _states_from_rows(rows: Iterable[tuple]) -> dict[int, NodeState]:
    """Build ``NodeState``s from ``node_states`` rows: one row per healthy GPU, or one without a GPU for a node with none."""
    nodes: dict[int, tuple] = {}
    gpu_free: dict[int, list[tuple[int, int]]] = {}
    for node_id, model_name, hostname, gpu_count, cpu, memory, price, used_cpu, used_memory, gpu_id, used_milli in rows:
        nodes[node_id] = (model_name, hostname, gpu_count, cpu, memory, price, used_cpu, used_memory)
        free = gpu_free.setdefault(node_id, [])
        if gpu_id is not None:
            free.append((gpu_id, GPU_MILLI_PER_GPU - int(used_milli)))

    states = {}
    for node_id, (model_name, hostname, gpu_count, cpu, memory, price, used_cpu, used_memory) in nodes.items():
        states[node_id] = NodeState(
            node_id=node_id,
            gpu_model=model_name,
            gpu_count=gpu_count,
            cpu_capacity_millicores=cpu,
            cpu_free_millicores=cpu - int(used_cpu),
            memory_capacity_mib=memory,
            memory_free_mib=memory - int(used_memory),
            gpu_free_milli=tuple(gpu_free[node_id]),
            price_per_gpu_hour=float(price),
            hostname=hostname,
        )
    return states


def lowest_prices(node_ids: list[int], min_healthy_gpus: int) -> list[tuple[int, str, Decimal, str]]:
    """Return ``(gpu_model_id, region code, lowest price, currency)`` over those of ``node_ids`` with enough healthy GPUs."""
    if not node_ids:
        return []
    if connection.vendor == "postgresql":
        in_nodes, node_params = "= ANY(%s)", [list(node_ids)]  # One parameter, however many nodes.
    else:
        in_nodes, node_params = f"IN ({', '.join(['%s'] * len(node_ids))})", list(node_ids)
    sql = f"""
        SELECT n.gpu_model_id, r.code, MIN(n.price_per_gpu_hour), n.currency
        FROM {_table(Node)} n JOIN {_table(Region)} r ON r.id = n.region_id
        WHERE n.id {in_nodes} AND {_healthy_gpus_sql("n")} >= %s
        GROUP BY n.gpu_model_id, r.code, n.currency
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [*node_params, min_healthy_gpus])
        return [(model_id, region, Decimal(str(price)).quantize(Decimal("0.0001")), currency)
                for model_id, region, price, currency in cursor.fetchall()]


def node_states_in_windows(node_ids: list[int], windows: list[tuple[datetime, datetime]]) -> list[list[NodeState]]:
    """Return, for each window, the ``NodeState`` of each of ``node_ids`` that is active and free of maintenance then.

    PostgreSQL only. One statement computes the busiest instant of every window, so checking 24
    later start times for a request costs one query instead of 24. Usage is computed as in
    ``node_states``: a sweep per window over the shares and allocations on these nodes only.
    """
    if not node_ids or not windows:
        return [[] for _ in windows]
    indexes = list(range(len(windows)))
    starts = [_when(start) for start, _end in windows]
    ends = [_when(end) for _start, end in windows]
    overlap = "tstzrange(r.start_at, r.end_at, '[)') && tstzrange(w.start_at, w.end_at, '[)')"
    on_gpus = f"r.gpu_id = ANY(ARRAY(SELECT id FROM {_table(Gpu)} WHERE node_id = ANY(%s)))"
    # Ends sort before starts at the same instant, because windows are half-open.
    sql = f"""
        WITH windows AS (
            SELECT * FROM unnest(%s::integer[], %s::timestamptz[], %s::timestamptz[]) AS w(idx, start_at, end_at)
        ),
        gpu_deltas AS (
            SELECT w.idx, r.gpu_id, r.start_at AS at, 1 AS sign, r.gpu_milli AS milli
            FROM windows w JOIN {_table(GpuShare)} r ON {overlap} AND {on_gpus}
            UNION ALL
            SELECT w.idx, r.gpu_id, r.end_at, -1, -r.gpu_milli
            FROM windows w JOIN {_table(GpuShare)} r ON {overlap} AND {on_gpus}
        ),
        gpu_use AS (
            SELECT idx, gpu_id, MAX(used) AS used_milli FROM (
                SELECT idx, gpu_id,
                       SUM(milli) OVER (PARTITION BY idx, gpu_id ORDER BY at, sign ROWS UNBOUNDED PRECEDING) AS used
                FROM gpu_deltas
            ) sweep GROUP BY idx, gpu_id
        ),
        node_deltas AS (
            SELECT w.idx, r.node_id, r.start_at AS at, 1 AS sign, r.cpu_millicores AS cpu, r.memory_mib AS memory
            FROM windows w JOIN {_table(Allocation)} r ON {overlap} AND r.node_id = ANY(%s)
            UNION ALL
            SELECT w.idx, r.node_id, r.end_at, -1, -r.cpu_millicores, -r.memory_mib
            FROM windows w JOIN {_table(Allocation)} r ON {overlap} AND r.node_id = ANY(%s)
        ),
        node_use AS (
            SELECT idx, node_id, MAX(cpu) AS used_cpu, MAX(memory) AS used_memory FROM (
                SELECT idx, node_id,
                       SUM(cpu) OVER (PARTITION BY idx, node_id ORDER BY at, sign ROWS UNBOUNDED PRECEDING) AS cpu,
                       SUM(memory) OVER (PARTITION BY idx, node_id ORDER BY at, sign ROWS UNBOUNDED PRECEDING)
                           AS memory
                FROM node_deltas
            ) sweep GROUP BY idx, node_id
        )
        SELECT w.idx, n.id, m.name, n.hostname, n.gpu_count, n.cpu_millicores, n.memory_mib, n.price_per_gpu_hour,
               COALESCE(nu.used_cpu, 0), COALESCE(nu.used_memory, 0), g.id, COALESCE(u.used_milli, 0)
        FROM windows w
        JOIN {_table(Node)} n ON n.id = ANY(%s) AND n.status = %s
        JOIN {_table(GpuModel)} m ON m.id = n.gpu_model_id
        LEFT JOIN node_use nu ON nu.idx = w.idx AND nu.node_id = n.id
        LEFT JOIN {_table(Gpu)} g ON g.node_id = n.id AND g.health = %s
        LEFT JOIN gpu_use u ON u.idx = w.idx AND u.gpu_id = g.id
        WHERE NOT EXISTS (SELECT 1 FROM {_table(MaintenanceWindow)} mw
                          WHERE mw.node_id = n.id AND mw.start_at < w.end_at AND mw.end_at > w.start_at)
        ORDER BY w.idx, n.id, g.{connection.ops.quote_name("index")}
    """
    params = [indexes, starts, ends, node_ids, node_ids, node_ids, node_ids, node_ids, Node.Status.ACTIVE,
              Gpu.Health.HEALTHY]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()

    rows_by_window: list[list[tuple]] = [[] for _ in windows]
    for index, *row in rows:
        rows_by_window[index].append(tuple(row))
    return [list(_states_from_rows(window_rows).values()) for window_rows in rows_by_window]


@dataclass(frozen=True)
class CustomerUsage:
    """A customer's peak GPU milli in a window, per GPU model id and over all models together."""

    by_model: dict[int, int]
    total: int


def cohort_peak_usage(cohort_id: int, start_at: datetime, end_at: datetime) -> int:
    """Return the peak GPU milli that all members of the cohort hold together at one instant of the window."""
    members = "AND r.customer_id IN (SELECT organization_id FROM {} WHERE cohort_id = %s)".format(
        _table(CohortMembership)
    )
    sql = _peak_sql(_table(Allocation), "cohort_key", {"used_milli": "r.gpu_milli_total"}, members,
                    key_expression="0")
    window = [_when(start_at), _when(end_at)]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*window, cohort_id, *window, cohort_id])
        row = cursor.fetchone()
    return int(row[1]) if row else 0


def customer_usage(customer_id: int, start_at: datetime, end_at: datetime, *, exact: bool = True) -> CustomerUsage:
    """Return the customer's GPU milli held by allocations in the window, per model and in total.

    ``exact`` gives the peak over the window's instants; otherwise the sum of overlapping
    allocations, an upper bound that is cheaper to compute.
    """
    on_customer = "AND r.customer_id = %s"
    build = _peak_sql if exact else _sum_sql
    per_model = build(_table(Allocation), "gpu_model_id", {"used_milli": "r.gpu_milli_total"}, on_customer)
    window = [_when(start_at), _when(end_at)]
    params = [*window, customer_id, *window, customer_id]
    with connection.cursor() as cursor:
        cursor.execute(per_model, params)
        by_model = {model_id: int(peak) for model_id, peak in cursor.fetchall()}
        if not exact:
            # Sums add up: the total of the overlapping allocations is the sum over their models.
            return CustomerUsage(by_model=by_model, total=sum(by_model.values()))
        overall = build(_table(Allocation), "customer_id", {"used_milli": "r.gpu_milli_total"}, on_customer)
        cursor.execute(overall, params)
        row = cursor.fetchone()
    return CustomerUsage(by_model=by_model, total=int(row[1]) if row else 0)


@dataclass(frozen=True)
class Offer:
    """Free capacity of one GPU model in one region at one price, for a window."""

    gpu_model: str
    region: str
    price_per_gpu_hour: Decimal
    currency: str
    nodes: int
    whole_gpus_free: int
    gpu_milli_free: int


def offers(start_at: datetime, end_at: datetime, node_filter: NodeFilter) -> list[Offer]:
    """Aggregate free capacity in the window by GPU model, region and price, cheapest first."""
    node_sql, node_params = _node_conditions("n", node_filter, window=(start_at, end_at))
    sql = f"""
        WITH {_gpu_use_cte()}
        SELECT m.name, r.code, n.price_per_gpu_hour, n.currency,
               COUNT(DISTINCT n.id),
               SUM(CASE WHEN COALESCE(u.used_milli, 0) = 0 THEN 1 ELSE 0 END),
               SUM({GPU_MILLI_PER_GPU} - COALESCE(u.used_milli, 0))
        FROM {_table(Node)} n
        JOIN {_table(GpuModel)} m ON m.id = n.gpu_model_id
        JOIN {_table(Region)} r ON r.id = n.region_id
        JOIN {_table(Gpu)} g ON g.node_id = n.id AND g.health = %s
        LEFT JOIN gpu_use u ON u.gpu_id = g.id
        WHERE {node_sql}
        GROUP BY m.name, r.code, n.price_per_gpu_hour, n.currency
        HAVING SUM({GPU_MILLI_PER_GPU} - COALESCE(u.used_milli, 0)) > 0
        ORDER BY n.price_per_gpu_hour, m.name, r.code
    """
    params = [*_window(start_at, end_at), Gpu.Health.HEALTHY, *node_params]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [
        Offer(
            gpu_model=model, region=region, price_per_gpu_hour=Decimal(str(price)).quantize(Decimal("0.0001")),
            currency=currency, nodes=nodes, whole_gpus_free=int(whole), gpu_milli_free=int(milli),
        )
        for model, region, price, currency, nodes, whole, milli in rows
    ]


def allocation_end_instants(after: datetime, until: datetime, *, limit: int,
                            node_filter: NodeFilter | None = None, customer_id: int | None = None) -> list[datetime]:
    """Return the first ``limit`` distinct instants in ``(after, until]`` at which an allocation ends.

    Free capacity only grows when an allocation ends, so these are the only later start times at
    which a request that does not fit now can begin to fit. With ``node_filter``, only the ends
    that can free room for the request count: allocations on nodes that pass the filter, and,
    with ``customer_id``, allocations of the customer and of its cohort, which free its quota.
    """
    ending = Allocation.objects.filter(end_at__gt=after, end_at__lte=until, start_at__lt=models.F("end_at"))
    if node_filter is not None:
        frees_room = models.Q(node__gpu_model_id__in=node_filter.gpu_model_ids)
        if node_filter.region_id is not None:
            frees_room &= models.Q(node__region_id=node_filter.region_id)
        if node_filter.max_price_per_gpu_hour is not None:
            frees_room &= models.Q(node__price_per_gpu_hour__lte=node_filter.max_price_per_gpu_hour)
        if customer_id is not None:
            cohorts = CohortMembership.objects.filter(organization_id=customer_id).values("cohort_id")
            cohort_members = CohortMembership.objects.filter(cohort_id__in=cohorts).values("organization_id")
            frees_room |= models.Q(customer_id=customer_id) | models.Q(customer_id__in=cohort_members)
        ending = ending.filter(frees_room)
    return list(ending.order_by("end_at").values_list("end_at", flat=True).distinct()[:limit])


PLACED_STATUSES = frozenset({ReservationStatus.SCHEDULED, ReservationStatus.ACTIVE, ReservationStatus.PENDING_APPROVAL})


def placed_reservation_for_response(reservation: Reservation) -> Reservation | None:
    """Complete, in two small queries, a reservation that this process has just placed, for its API body.

    The service leaves the reservation, its workload with class and queue, and its allocation with
    node, provider, region and GPU model on the instance. Only the requested GPU models and the
    shares with their GPUs are read here, which spares reading it all back through a 10-table
    join. Returns None for any other reservation; read those from the database.
    """
    if getattr(reservation, "response_ready", False):
        return reservation  # Built complete by the express path.
    if reservation.status not in PLACED_STATUSES:
        return None
    allocation = getattr(reservation, "allocation", None)
    if allocation is None:
        return None
    models.prefetch_related_objects([reservation], "gpu_models")
    models.prefetch_related_objects(
        [allocation], models.Prefetch("shares", queryset=GpuShare.objects.select_related("gpu")),
    )
    return reservation
