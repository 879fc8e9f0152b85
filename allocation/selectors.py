"""Read queries for placement, quotas and offers.

The candidate queries do the fleet-wide filtering inside the database, so one placement decision
reads only a shortlist of nodes into Python, however large the fleet. Usage in a window is the sum
of every allocation that overlaps it; that is never below the true peak, so a node that passes
here also passes the exact per-instant check of the PostgreSQL triggers.

NOTE: the sum over-counts when overlapping allocations do not overlap each other (back-to-back
bookings inside one long window), so such a node is skipped although it would fit. Exact per-instant
usage replaces the sum when future-window bookings make that case common.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterable

from django.db import connection, models

from marketplace.models import GPU_MILLI_PER_GPU, Gpu, GpuModel, Node, Region

from .models import Allocation, GpuShare
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


def _node_conditions(alias: str, node_filter: NodeFilter, *, with_price: bool = True) -> tuple[str, list[Any]]:
    """Return the SQL conditions and parameters for ``node_filter`` on the node table ``alias``."""
    conditions = [f"{alias}.status = %s"]
    params: list[Any] = [Node.Status.ACTIVE]

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


def _gpu_use_cte() -> str:
    """Return the ``gpu_use`` CTE: milli held per GPU by shares overlapping the window (two parameters)."""
    return f"""gpu_use AS (
            SELECT s.gpu_id, SUM(s.gpu_milli) AS used_milli
            FROM {_table(GpuShare)} s
            WHERE s.end_at > %s AND s.start_at < %s
            GROUP BY s.gpu_id
        )"""


def _healthy_gpus_sql(alias: str) -> str:
    return (
        f"(SELECT COUNT(*) FROM {_table(Gpu)} hg WHERE hg.node_id = {alias}.id "
        f"AND hg.health = '{Gpu.Health.HEALTHY}')"
    )


def used_candidate_ids(
    request: PlacementRequest, start_at: datetime, end_at: datetime, node_filter: NodeFilter, *, limit: int,
    with_price: bool = True,
) -> list[int]:
    """Return up to ``limit`` ids of partly used nodes that can hold ``request``, tightest fit first.

    The query starts from the allocations and shares that overlap the window, so its cost follows
    the live workload, not the size of the fleet.
    """
    node_sql, node_params = _node_conditions("n", node_filter, with_price=with_price)
    blocked_above = GPU_MILLI_PER_GPU - request.gpu_milli_per_gpu
    sql = f"""
        WITH {_gpu_use_cte()}, node_gpu_use AS (
            SELECT g.node_id,
                   SUM(CASE WHEN u.used_milli > %s THEN 1 ELSE 0 END) AS blocked_gpus,
                   SUM(u.used_milli) AS used_milli
            FROM gpu_use u JOIN {_table(Gpu)} g ON g.id = u.gpu_id
            WHERE g.health = %s
            GROUP BY g.node_id
        ), node_use AS (
            SELECT a.node_id, SUM(a.cpu_millicores) AS used_cpu, SUM(a.memory_mib) AS used_memory
            FROM {_table(Allocation)} a
            WHERE a.end_at > %s AND a.start_at < %s
            GROUP BY a.node_id
        )
        SELECT n.id
        FROM node_use nu
        JOIN {_table(Node)} n ON n.id = nu.node_id
        LEFT JOIN node_gpu_use ng ON ng.node_id = n.id
        WHERE {node_sql}
          AND n.cpu_millicores - nu.used_cpu >= %s
          AND n.memory_mib - nu.used_memory >= %s
          AND {_healthy_gpus_sql("n")} - COALESCE(ng.blocked_gpus, 0) >= %s
        ORDER BY
            0.5 * (n.cpu_millicores - nu.used_cpu - %s) / n.cpu_millicores
            + 0.5 * (n.gpu_count * {GPU_MILLI_PER_GPU} - COALESCE(ng.used_milli, 0) - %s)
                  / (n.gpu_count * {GPU_MILLI_PER_GPU}),
            n.price_per_gpu_hour, n.id
        LIMIT %s
    """
    params = [
        _when(start_at), _when(end_at),
        blocked_above, Gpu.Health.HEALTHY,
        _when(start_at), _when(end_at),
        *node_params,
        request.cpu_millicores, request.memory_mib, request.gpu_count,
        request.cpu_millicores, request.gpu_milli_total,
        limit,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def free_candidate_ids(
    request: PlacementRequest, start_at: datetime, end_at: datetime, node_filter: NodeFilter, *, limit: int,
    with_price: bool = True,
) -> list[int]:
    """Return up to ``limit`` ids of nodes with nothing allocated in the window that can hold ``request``.

    Smaller nodes come first, because best fit prefers them among empty nodes. The order matches
    the ``node_free_order`` index, so the scan stops after ``limit`` matching rows.

    NOTE: GPU health is not filtered here, to keep the scan index-only; the policy skips a node whose
    healthy GPUs are too few. If unhealthy GPUs became common, the shortlist could fill with such
    nodes and the request would be rejected although a healthy node was free.
    """
    node_sql, node_params = _node_conditions("n", node_filter, with_price=with_price)
    sql = f"""
        SELECT n.id
        FROM {_table(Node)} n
        WHERE {node_sql}
          AND n.cpu_millicores >= %s
          AND n.memory_mib >= %s
          AND n.gpu_count >= %s
          AND NOT EXISTS (
              SELECT 1 FROM {_table(Allocation)} a
              WHERE a.node_id = n.id AND a.end_at > %s AND a.start_at < %s
          )
        ORDER BY n.gpu_count, n.cpu_millicores, n.price_per_gpu_hour, n.id
        LIMIT %s
    """
    params = [
        *node_params,
        request.cpu_millicores, request.memory_mib, request.gpu_count,
        _when(start_at), _when(end_at),
        limit,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def node_states(node_ids: Iterable[int], start_at: datetime, end_at: datetime) -> list[NodeState]:
    """Load what is free on each of ``node_ids`` in the window, as the solvers' ``NodeState``."""
    node_ids = list(dict.fromkeys(node_ids))
    if not node_ids:
        return []
    placeholders = ", ".join(["%s"] * len(node_ids))
    window = [_when(start_at), _when(end_at)]

    node_sql = f"""
        SELECT n.id, m.name, n.gpu_count, n.cpu_millicores, n.memory_mib, n.price_per_gpu_hour,
               COALESCE(SUM(a.cpu_millicores), 0), COALESCE(SUM(a.memory_mib), 0)
        FROM {_table(Node)} n
        JOIN {_table(GpuModel)} m ON m.id = n.gpu_model_id
        LEFT JOIN {_table(Allocation)} a ON a.node_id = n.id AND a.end_at > %s AND a.start_at < %s
        WHERE n.id IN ({placeholders})
        GROUP BY n.id, m.name, n.gpu_count, n.cpu_millicores, n.memory_mib, n.price_per_gpu_hour
    """
    gpu_sql = f"""
        SELECT g.node_id, g.id, COALESCE(SUM(s.gpu_milli), 0)
        FROM {_table(Gpu)} g
        LEFT JOIN {_table(GpuShare)} s ON s.gpu_id = g.id AND s.end_at > %s AND s.start_at < %s
        WHERE g.node_id IN ({placeholders}) AND g.health = %s
        GROUP BY g.node_id, g.id, g.{connection.ops.quote_name("index")}
        ORDER BY g.node_id, g.{connection.ops.quote_name("index")}
    """
    gpu_free: dict[int, list[tuple[int, int]]] = {node_id: [] for node_id in node_ids}
    with connection.cursor() as cursor:
        cursor.execute(gpu_sql, [*window, *node_ids, Gpu.Health.HEALTHY])
        for node_id, gpu_id, used_milli in cursor.fetchall():
            gpu_free[node_id].append((gpu_id, GPU_MILLI_PER_GPU - int(used_milli)))
        cursor.execute(node_sql, [*window, *node_ids])
        rows = cursor.fetchall()

    states = {}
    for node_id, model_name, gpu_count, cpu, memory, price, used_cpu, used_memory in rows:
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
        )
    return [states[node_id] for node_id in node_ids if node_id in states]


def customer_usage_by_model(customer_id: int, start_at: datetime, end_at: datetime) -> dict[int, int]:
    """Return the customer's GPU milli per GPU model id, summed over allocations overlapping the window."""
    sql = f"""
        SELECT a.gpu_model_id, SUM(a.gpu_milli_total)
        FROM {_table(Allocation)} a
        WHERE a.customer_id = %s AND a.end_at > %s AND a.start_at < %s
        GROUP BY a.gpu_model_id
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [customer_id, _when(start_at), _when(end_at)])
        return {model_id: int(total) for model_id, total in cursor.fetchall()}


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
    node_sql, node_params = _node_conditions("n", node_filter)
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
    params = [_when(start_at), _when(end_at), Gpu.Health.HEALTHY, *node_params]
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


def allocation_end_instants(after: datetime, until: datetime, *, limit: int) -> list[datetime]:
    """Return the first ``limit`` distinct instants in ``(after, until]`` at which an allocation ends.

    Free capacity only grows when an allocation ends, so these are the only later start times at
    which a request that does not fit now can begin to fit.
    """
    return list(
        Allocation.objects.filter(end_at__gt=after, end_at__lte=until, start_at__lt=models.F("end_at"))
        .order_by("end_at").values_list("end_at", flat=True).distinct()[:limit]
    )
