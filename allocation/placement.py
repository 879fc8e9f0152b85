"""Place one admitted reservation: shortlist nodes in the database, rank them, commit the best.

The commit of each choice runs in a savepoint. On PostgreSQL it first locks the node row and
inserts the shortlisted choice, which the database triggers check against what is committed. If
another transaction took those GPUs since the shortlist was read, the request is placed again on
the locked node's fresh state and inserted once more. A choice that no longer fits
rolls back its savepoint, which also releases its node lock, so a transaction never holds more than
one node lock and lock order cannot deadlock.
"""

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Exists, OuterRef, Subquery
from django.db.models.functions import Coalesce

from marketplace.models import Gpu, MaintenanceWindow, Node

from .models import Allocation, Budget, GpuShare, RejectionReason, Reservation
from .budgets import budget_fits
from .pricing import billed_gpu_milli, charged_price
from .selectors import NodeFilter, candidate_ids, node_states, nodes_that_could_hold
from .solvers import NodeState, Placement, PlacementPolicy, PlacementRequest

logger = logging.getLogger(__name__)

MAX_COMMIT_ATTEMPTS = 5
"""Ranked choices tried from one shortlist."""
SHORTLIST_ROUNDS = 3
"""Shortlists read before a request that lost every race is rejected as ``no_capacity``."""


class CapacityConflict(Exception):
    """The chosen node no longer has the capacity the placement needs."""


class BudgetConflict(CapacityConflict):
    """The chosen node's charge would take the customer past its budget."""


@dataclass(frozen=True)
class PlacementOutcome:
    allocation: Allocation | None
    reason: str = ""
    detail: str = ""


def placement_rank(
    *, request: PlacementRequest, start_at: datetime, end_at: datetime, node_filter: NodeFilter,
    policy: PlacementPolicy, summed_first: bool = True,
) -> list[Placement]:
    """Shortlist nodes in the database and return the policy's feasible placements, best first.

    The shortlist first counts usage as the sum of overlapping bookings, which is cheap and never
    lets in a node that does not fit. Only when that finds nothing is the exact per-instant usage
    computed, so a node that fits between shorter bookings is still found. Callers that expect
    no fit, such as the search for alternatives, skip the first pass with ``summed_first=False``.
    """
    return placement_shortlist(request=request, start_at=start_at, end_at=end_at, node_filter=node_filter,
                               policy=policy, summed_first=summed_first)[0]


def placement_shortlist(
    *, request: PlacementRequest, start_at: datetime, end_at: datetime, node_filter: NodeFilter,
    policy: PlacementPolicy, summed_first: bool = True,
) -> tuple[list[Placement], dict[int, NodeState]]:
    """Return what ``placement_rank`` returns, and the state of each shortlisted node by id.

    When at most ``PLACEMENT_SHORTLIST_SIZE`` nodes of the filter could hold the request (a scarce
    model, one region), their exact state is read directly. That takes one short query and one
    state query, instead of two passes over the usage of the whole fleet in the window.
    """
    shortlist_size = settings.MARKETPLACE["PLACEMENT_SHORTLIST_SIZE"]
    if summed_first:
        node_ids = nodes_that_could_hold(request, node_filter, limit=shortlist_size, window=(start_at, end_at))
        if node_ids is not None:
            states = node_states(node_ids, start_at, end_at)
            return policy.rank(request, states), {state.node_id: state for state in states}

    states: list[NodeState] = []
    for exact in ((False, True) if summed_first else (True,)):
        ids = candidate_ids(request, start_at, end_at, node_filter, used_limit=shortlist_size,
                            free_limit=max(shortlist_size // 4, 2), exact=exact)
        states = node_states(ids, start_at, end_at)
        ranked = policy.rank(request, states)
        if ranked:
            return ranked, {state.node_id: state for state in states}
    return [], {state.node_id: state for state in states}


def placement_find_and_commit(
    *, reservation: Reservation, request: PlacementRequest, node_filter: NodeFilter, policy: PlacementPolicy,
    borrowed_gpu_milli: int = 0, budget: Budget | None = None, price_factor: Decimal = Decimal(1),
    only_node_ids: tuple[int, ...] | None = None,
) -> PlacementOutcome:
    """Choose a node and GPUs for ``reservation`` and insert its allocation, or return why none fits.

    Under contention a shortlist can go stale while it is tried, so a fresh shortlist is read
    up to ``SHORTLIST_ROUNDS`` times before the request is rejected as ``no_capacity``.
    ``price_factor`` scales the node's price (interruptible reservations pay less).
    ``only_node_ids`` restricts the choice to those nodes, as the scheduling cycle decided;
    the node filter still applies to them.
    """
    start_at, end_at = reservation.start_at, reservation.end_at
    attempts = budget_refusals = 0

    for _round in range(SHORTLIST_ROUNDS):
        if only_node_ids is not None:
            ranked = policy.rank(request, node_states(_filtered(only_node_ids, node_filter, start_at, end_at),
                                                      start_at, end_at))
        else:
            ranked = placement_rank(request=request, start_at=start_at, end_at=end_at, node_filter=node_filter,
                                    policy=policy)
        if not ranked:
            break

        for placement in ranked[:MAX_COMMIT_ATTEMPTS]:
            attempts += 1
            try:
                allocation = _commit_on_node(reservation, request, placement, policy, borrowed_gpu_milli, budget,
                                             price_factor)
            except (CapacityConflict, IntegrityError) as error:
                budget_refusals += isinstance(error, BudgetConflict)
                logger.warning(
                    "Placement of reservation %s on node %s lost a race (attempt %d): %s",
                    reservation.pk, placement.node_id, attempts, error,
                )
                continue
            return PlacementOutcome(allocation=allocation)

    if attempts and budget_refusals == attempts:
        return PlacementOutcome(
            allocation=None,
            reason=RejectionReason.BUDGET_EXCEEDED,
            detail=(
                "On every node that fits, the charge (for the GPUs, or for the larger share of the node's CPU or "
                "memory) would take the organization past its budget for the period. Shorten the window, ask "
                "for less CPU or memory, or ask an admin to raise the budget."
            ),
        )
    if attempts:
        return PlacementOutcome(
            allocation=None,
            reason=RejectionReason.NO_CAPACITY,
            detail=(
                f"Concurrent reservations took the capacity of the {attempts} best nodes while this request "
                f"was placed. Submit the request again, or see GET /api/v1/offers/ for free capacity."
            ),
        )
    return placement_diagnose(request, start_at, end_at, node_filter, price_factor=price_factor)


def _interruptible_note(price_factor: Decimal) -> str:
    return "" if price_factor == 1 else f" (interruptible work pays {price_factor} of a node's list price)"


def _filtered(node_ids: tuple[int, ...], node_filter: NodeFilter, start_at: datetime, end_at: datetime) -> list[int]:
    """Return those of ``node_ids`` that are active, pass ``node_filter`` and have no maintenance in the window."""
    # One window must meet both conditions. exclude() over the relation would drop a node whose
    # windows meet one each, as a window ending before the request and another starting after it do.
    in_maintenance = MaintenanceWindow.objects.filter(node=OuterRef("pk"), start_at__lt=end_at, end_at__gt=start_at)
    nodes = Node.objects.filter(~Exists(in_maintenance), pk__in=node_ids, status=Node.Status.ACTIVE,
                                gpu_model_id__in=node_filter.gpu_model_ids)
    if node_filter.region_id is not None:
        nodes = nodes.filter(region_id=node_filter.region_id)
    if node_filter.max_price_per_gpu_hour is not None:
        nodes = nodes.filter(price_per_gpu_hour__lte=node_filter.max_price_per_gpu_hour)
    return list(nodes.values_list("id", flat=True))


def _commit_on_node(
    reservation: Reservation, request: PlacementRequest, placement: Placement, policy: PlacementPolicy,
    borrowed_gpu_milli: int, budget: Budget | None, price_factor: Decimal,
) -> Allocation:
    """Commit ``placement`` in a savepoint, and place it once more on the same node if the database rejects it.

    The shortlist's choice usually still fits, so it is inserted as it is and the triggers check it,
    which saves reading the node's state again. If another transaction took those GPUs since the
    shortlist was read, a second savepoint locks the node, places the request on its fresh state
    and inserts that. SQLite serialises writers with BEGIN IMMEDIATE, so its shortlist is never stale.
    """
    try:
        with transaction.atomic():
            return _commit(reservation, request, placement, policy, borrowed_gpu_milli, budget, price_factor)
    except IntegrityError as error:
        if not connection.features.has_select_for_update:
            raise
        logger.info("Reservation %s: the database rejected the shortlisted GPUs of node %s (%s). Placing it "
                    "again on the node's fresh state", reservation.pk, placement.node_id, error)
    with transaction.atomic():
        return _commit(reservation, request, placement, policy, borrowed_gpu_milli, budget, price_factor,
                       replan=True)


def _commit(
    reservation: Reservation, request: PlacementRequest, placement: Placement, policy: PlacementPolicy,
    borrowed_gpu_milli: int, budget: Budget | None, price_factor: Decimal = Decimal(1), replan: bool = False,
) -> Allocation:
    """Lock the node and insert the allocation; with ``replan``, choose the GPUs again on the node's fresh state.

    The lock query also reads what the database triggers do not check: that the node is still
    active and free of maintenance in the window, and that the chosen GPUs are still healthy. A
    heartbeat or a drain changes those only under the node's lock, so they cannot change after it.
    """
    chosen_gpu_ids = [gpu_id for gpu_id, _milli in placement.gpu_shares]
    healthy_chosen = (
        Gpu.objects.filter(node=OuterRef("pk"), pk__in=chosen_gpu_ids, health=Gpu.Health.HEALTHY)
        .order_by().values("node").annotate(count=Count("pk")).values("count")
    )
    maintenance = MaintenanceWindow.objects.filter(
        node=OuterRef("pk"), start_at__lt=reservation.end_at, end_at__gt=reservation.start_at,
    )
    node = (
        Node.objects.select_for_update(of=("self",))
        .select_related("gpu_model", "provider", "region")  # For the response, without reading them again.
        .only("id", "hostname", "gpu_model", "gpu_count", "cpu_millicores", "memory_mib", "price_per_gpu_hour",
              "currency", "status", "gpu_model__name", "provider__slug", "region__code")
        .annotate(healthy_chosen=Coalesce(Subquery(healthy_chosen), 0), in_maintenance=Exists(maintenance))
        .get(pk=placement.node_id)
    )
    if node.status != Node.Status.ACTIVE or node.in_maintenance:
        raise CapacityConflict(f"node {node.pk} became {node.status} or got a maintenance window in "
                               f"{reservation.start_at:%Y-%m-%d %H:%M} to {reservation.end_at:%Y-%m-%d %H:%M} "
                               f"after the shortlist was read")
    if node.healthy_chosen < len(chosen_gpu_ids):
        replan = True  # A chosen GPU failed after the shortlist was read. The fresh state lists only healthy GPUs.

    billed = billed_gpu_milli(request, node_gpu_count=node.gpu_count, node_cpu_millicores=node.cpu_millicores,
                              node_memory_mib=node.memory_mib)
    price = charged_price(node.price_per_gpu_hour, price_factor)
    if not budget_fits(budget=budget, billed_milli=billed,
                       price_per_gpu_hour=price, start_at=reservation.start_at,
                       end_at=reservation.end_at):
        raise BudgetConflict(f"node {node.pk} would take the organization past its budget")

    if replan:
        placement = _replan_locked_node(reservation, request, placement, policy)
    allocation = Allocation.objects.create(
        reservation=reservation,
        customer_id=reservation.customer_id,
        node=node,
        gpu_model=node.gpu_model,
        start_at=reservation.start_at,
        end_at=reservation.end_at,
        cpu_millicores=request.cpu_millicores,
        memory_mib=request.memory_mib,
        gpu_milli_total=request.gpu_milli_total,
        borrowed_gpu_milli=borrowed_gpu_milli,
        billed_gpu_milli=billed,
        price_per_gpu_hour=price,
        currency=node.currency,
    )
    GpuShare.objects.bulk_create(
        GpuShare(
            allocation=allocation, gpu_id=gpu_id, gpu_milli=milli,
            start_at=reservation.start_at, end_at=reservation.end_at,
        )
        for gpu_id, milli in placement.gpu_shares
    )
    return allocation


def _replan_locked_node(
    reservation: Reservation, request: PlacementRequest, placement: Placement, policy: PlacementPolicy,
) -> Placement:
    """Place ``request`` again on the locked node's fresh state; raise ``CapacityConflict`` if it no longer fits.

    The GPUs chosen from the shortlist may have been taken meanwhile while others on the node are
    still free, so the policy chooses again instead of rechecking the stale choice.
    """
    fresh = node_states([placement.node_id], reservation.start_at, reservation.end_at)
    replanned = policy.rank(request, fresh)
    if not replanned:
        raise CapacityConflict(f"node {placement.node_id} can no longer hold the request")
    return replanned[0]


def placement_diagnose(
    request: PlacementRequest, start_at: datetime, end_at: datetime, node_filter: NodeFilter, *,
    shortlisted_any: bool = False, price_factor: Decimal = Decimal(1),
) -> PlacementOutcome:
    """Explain why no node fits: the price cap, current usage, or a shape no node can ever hold.

    ``shortlisted_any`` is true when the shortlist read at least one node's state. Such a node
    could hold the request when idle, so no query is needed to rule out ``no_matching_node``.
    ``node_filter`` caps list prices; the message states the cap as the request pays it, at
    ``price_factor`` of the list price.
    """
    window = f"from {start_at:%Y-%m-%d %H:%M} to {end_at:%Y-%m-%d %H:%M} UTC"
    shape = describe_shape(request)

    if node_filter.max_price_per_gpu_hour is not None:
        above_cap = candidate_ids(request, start_at, end_at, node_filter, used_limit=1, free_limit=1,
                                  with_price=False)
        if above_cap:
            return PlacementOutcome(
                allocation=None,
                reason=RejectionReason.PRICE_ABOVE_MAXIMUM,
                detail=(
                    f"Nodes can hold {shape} {window}, but none at or below the maximum price of "
                    f"{charged_price(node_filter.max_price_per_gpu_hour, price_factor)} per GPU-hour"
                    f"{_interruptible_note(price_factor)}. Raise max_price_per_gpu_hour or see GET "
                    f"/api/v1/offers/ for current prices."
                ),
            )

    if not shortlisted_any and not any_node_could_hold(request, node_filter):
        return PlacementOutcome(
            allocation=None,
            reason=RejectionReason.NO_MATCHING_NODE,
            detail=(
                f"No active node of the requested GPU models and region can hold {shape}, even when idle. "
                f"Request fewer GPUs, less CPU or memory, or allow other GPU models or regions."
            ),
        )
    return PlacementOutcome(
        allocation=None,
        reason=RejectionReason.NO_CAPACITY,
        detail=(
            f"No node has {shape} free {window}. Choose another window, allow other GPU models or "
            f"regions, or see GET /api/v1/offers/ for free capacity."
        ),
    )


def any_node_could_hold(request: PlacementRequest, node_filter: NodeFilter) -> bool:
    """Return whether an active node of the filter's models and region could hold the request when idle.

    Plain SQL: this runs for every rejection, where compiling the ORM query cost more than running it.
    """
    models = ", ".join(["%s"] * len(node_filter.gpu_model_ids))
    sql = (f"SELECT 1 FROM {connection.ops.quote_name(Node._meta.db_table)} WHERE status = %s "
           f"AND gpu_model_id IN ({models}) AND cpu_millicores >= %s AND memory_mib >= %s AND gpu_count >= %s")
    params = [Node.Status.ACTIVE, *node_filter.gpu_model_ids, request.cpu_millicores, request.memory_mib,
              request.gpu_count]
    if node_filter.region_id is not None:
        sql += " AND region_id = %s"
        params.append(node_filter.region_id)
    with connection.cursor() as cursor:
        cursor.execute(sql + " LIMIT 1", params)
        return cursor.fetchone() is not None


def describe_shape(request: PlacementRequest) -> str:
    """Return the request's shape in words, for messages."""
    if request.gpu_count == 0:
        gpus = "no GPU"
    elif request.gpu_milli_per_gpu == 1000:
        gpus = f"{request.gpu_count} whole GPU{'s' if request.gpu_count > 1 else ''}"
    else:
        gpus = f"{request.gpu_count} x {request.gpu_milli_per_gpu} milli of a GPU"
    return f"{gpus}, {request.cpu_millicores} CPU millicores and {request.memory_mib} MiB memory"
