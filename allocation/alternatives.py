"""Alternatives for a request that does not fit: the earliest start that fits, and other models or regions now."""

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db import connection

from marketplace.models import GpuModel

from .budgets import budget_admit
from .ledger import CapacityLedger
from .ledger_sync import ledger_for_window, ledger_usage_reader, micros, node_search
from .placement import any_node_could_hold, placement_rank
from .pricing import charged_price, node_price_cap
from .quotas import quota_admit
from .selectors import (
    NodeFilter, allocation_end_instants, candidate_ids, cheapest_empty_nodes, customer_usage, lowest_prices,
    node_states_in_windows, nodes_that_could_hold,
)
from .solvers import NodeState, PlacementPolicy, PlacementRequest

logger = logging.getLogger(__name__)

EARLIEST_START_CANDIDATES = 24
"""Later start instants tried when looking for the earliest start that fits."""
ALL_NODES = 1_000_000
"""A shortlist limit above any fleet's size, for queries that want every node that fits."""
EARLIEST_START_NODE_LIMIT = 32
"""Up to this many nodes that could hold a request, all its later start instants are checked in one query."""


@dataclass(frozen=True)
class Option:
    """A GPU model and region where the request fits in its window, at the lowest price found there."""

    gpu_model: str
    region: str
    price_per_gpu_hour: Decimal
    currency: str


@dataclass(frozen=True)
class Alternatives:
    earliest_start_at: datetime | None
    options: list[Option] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "earliest_start_at": self.earliest_start_at.isoformat() if self.earliest_start_at else None,
            "options": [
                {"gpu_model": o.gpu_model, "region": o.region, "price_per_gpu_hour": str(o.price_per_gpu_hour),
                 "currency": o.currency}
                for o in self.options
            ],
        }


def alternatives_find(
    *, customer_id: int, request: PlacementRequest, start_at: datetime, end_at: datetime,
    node_filter: NodeFilter, policy: PlacementPolicy, now: datetime, price_factor: Decimal = Decimal(1),
) -> Alternatives:
    """Find when the request would fit as asked, and which other models or regions fit in its window.

    ``node_filter``'s price cap is what the customer pays per GPU-hour, and ``price_factor`` the
    share of a node's list price that the request pays (below 1 for interruptible work). Nodes are
    searched up to the list price that the cap and the budget afford at that share, and options
    are priced at it, as placement does.

    The earliest start keeps the request's models, region, price cap and duration, and respects
    the customer's quotas, budget and the booking horizon. It is one of the next instants at which
    an allocation ends on a node of the request's models, region and price, or at which one of the
    customer's or its cohort's allocations ends, which frees quota. Options respect the quotas and
    the budget's price cap. The search costs dozens of queries, so its result is cached for
    ``ALTERNATIVES_CACHE_SECONDS`` per customer and request. Alternatives are advice, so a few
    seconds of staleness only makes one less exact.

    When no node of the request's models and region could hold it even idle, the earliest start
    is ``None`` without a search.

    NOTE: only the first ``EARLIEST_START_CANDIDATES`` such instants are tried, so
    ``earliest_start_at`` is ``None`` when the request fits only later than those.
    """
    key = "alternatives:" + ":".join(str(part) for part in (
        customer_id, request.gpu_count, request.gpu_milli_per_gpu, request.cpu_millicores, request.memory_mib,
        start_at.isoformat(), end_at.isoformat(), ",".join(map(str, sorted(node_filter.gpu_model_ids))),
        node_filter.region_id, node_filter.max_price_per_gpu_hour, policy.name, price_factor,
    ))
    cached = cache.get(key)
    if cached is not None:
        return cached
    ledger = ledger_for_window(start_at)
    listed = NodeFilter(node_filter.gpu_model_ids, node_filter.region_id,
                        node_price_cap(node_filter.max_price_per_gpu_hour, price_factor))
    found = Alternatives(
        earliest_start_at=(_earliest_start(customer_id, request, start_at, end_at, listed, policy, now, ledger,
                                           price_factor)
                           if any_node_could_hold(request, listed) else None),
        options=_options_now(customer_id, request, start_at, end_at, policy, ledger, price_factor),
    )
    cache.set(key, found, settings.MARKETPLACE["ALTERNATIVES_CACHE_SECONDS"])
    return found


def _earliest_start(customer_id, request, start_at, end_at, node_filter, policy, now,
                    ledger: CapacityLedger | None, price_factor: Decimal) -> datetime | None:
    """Return the first later start at which the request fits; ``node_filter`` caps the nodes' list prices."""
    duration = end_at - start_at
    latest_start = now + timedelta(seconds=settings.MARKETPLACE["MAX_HORIZON_SECONDS"])
    model_names = dict(GpuModel.objects.filter(id__in=node_filter.gpu_model_ids).values_list("id", "name"))

    candidates = allocation_end_instants(start_at, latest_start, limit=EARLIEST_START_CANDIDATES,
                                         node_filter=node_filter, customer_id=customer_id)
    if ledger is not None:
        return _earliest_start_in_ledger(ledger, customer_id, request, candidates, duration, node_filter,
                                         model_names, price_factor)
    # Room under the request's own filter is checked first, because quota and budget can only narrow
    # it. Most candidates fail there.
    for candidate, states in _starts_with_room(request, candidates, duration, node_filter):
        allowed = _filter_at(customer_id, request, node_filter, model_names, candidate, candidate + duration,
                             customer_usage, price_factor)
        if allowed is None:
            continue
        if states is not None and _same_filter(allowed, node_filter):
            # Quota and budget left the filter as it was, and ``states`` contains every node it allows.
            if policy.rank(request, states):
                return candidate
            continue
        if placement_rank(request=request, start_at=candidate, end_at=candidate + duration, node_filter=allowed,
                          policy=policy, summed_first=False):
            return candidate
    return None


def _earliest_start_in_ledger(ledger: CapacityLedger, customer_id: int, request: PlacementRequest,
                              candidates: list[datetime], duration: timedelta, node_filter: NodeFilter,
                              model_names: dict[int, str], price_factor: Decimal) -> datetime | None:
    """Return the first of ``candidates`` at which the request fits, checking room and quota in ``ledger``.

    The same checks as ``_earliest_start``, in the same order. A node that can hold the request is
    one that every policy can place it on, so room needs no ranking.
    """
    read_usage = ledger_usage_reader(ledger)
    for candidate in candidates:
        if not _room_in_ledger(ledger, request, candidate, candidate + duration, node_filter):
            continue
        allowed = _filter_at(customer_id, request, node_filter, model_names, candidate, candidate + duration,
                             read_usage, price_factor)
        if allowed is None:
            continue
        if _same_filter(allowed, node_filter) or _room_in_ledger(ledger, request, candidate, candidate + duration,
                                                                 allowed):
            return candidate
    return None


def _filter_at(customer_id: int, request: PlacementRequest, node_filter: NodeFilter, model_names: dict[int, str],
               start_at: datetime, end_at: datetime, read_usage, price_factor: Decimal) -> NodeFilter | None:
    """Return what is left of ``node_filter`` after the customer's quota and budget in the window, or None if nothing.

    ``read_usage`` reads the customer's usage, from the database or the capacity ledger. Both
    filters cap list prices: the budget's cap on what the customer pays becomes one on list
    prices through ``price_factor``.
    """
    decision = quota_admit(
        customer_id=customer_id, model_ids=node_filter.gpu_model_ids, model_names=model_names,
        gpu_milli=request.gpu_milli_total, start_at=start_at, end_at=end_at, read_usage=read_usage,
    )
    if not decision.admitted_model_ids:
        return None
    budget = budget_admit(customer_id=customer_id, gpu_milli=request.gpu_milli_total, start_at=start_at,
                          end_at=end_at)
    if budget.refusal:
        return None
    list_price_cap = node_filter.max_price_per_gpu_hour
    affordable = node_price_cap(budget.max_affordable_price, price_factor)
    if affordable is not None and (list_price_cap is None or affordable < list_price_cap):
        list_price_cap = affordable
    return NodeFilter(decision.admitted_model_ids, node_filter.region_id, list_price_cap)


def _same_filter(allowed: NodeFilter, node_filter: NodeFilter) -> bool:
    return (set(allowed.gpu_model_ids) == set(node_filter.gpu_model_ids)
            and allowed.max_price_per_gpu_hour == node_filter.max_price_per_gpu_hour)


def _room_in_ledger(ledger: CapacityLedger, request: PlacementRequest, start_at: datetime, end_at: datetime,
                    node_filter: NodeFilter) -> bool:
    return ledger.has_room(request, micros(start_at), micros(end_at), node_search(node_filter))


def _starts_with_room(request: PlacementRequest, candidates: list[datetime], duration: timedelta,
                      node_filter: NodeFilter) -> Iterator[tuple[datetime, list[NodeState] | None]]:
    """Yield, in order, those of ``candidates`` at which a node of ``node_filter`` has room for the request.

    When at most ``EARLIEST_START_NODE_LIMIT`` nodes of the filter could ever hold the request, one
    query reads their state in every candidate window. Each candidate then comes with the states of
    those nodes that are active and free of maintenance in its window. Otherwise each candidate
    costs one fleet-wide shortlist query, stopping at the first that fits, and comes with None.
    """
    if connection.vendor == "postgresql":
        node_ids = nodes_that_could_hold(request, node_filter, limit=EARLIEST_START_NODE_LIMIT)
        if node_ids is not None:
            windows = node_states_in_windows(node_ids, [(candidate, candidate + duration) for candidate in candidates])
            for candidate, states in zip(candidates, windows):
                if any(state.can_hold(request) for state in states):
                    yield candidate, states
            return
    for candidate in candidates:
        if candidate_ids(request, candidate, candidate + duration, node_filter, used_limit=1, free_limit=1):
            yield candidate, None


def _options_now(customer_id, request, start_at, end_at, policy,
                 ledger: CapacityLedger | None = None, price_factor: Decimal = Decimal(1)) -> list[Option]:
    """List every (GPU model, region) that can hold the request in its window, ignoring the request's filters.

    Prices are what the request would pay: the node's list price times ``price_factor``.

    ``candidate_ids`` already checks CPU, memory and room on enough healthy GPUs of partly used
    nodes. The last query also drops empty nodes with too few healthy GPUs. ``policy`` is not
    consulted: every node that can hold the request is an option, whichever the policy would pick.
    With ``ledger``, usage and room come from it instead of the database.
    """
    catalogue = dict(GpuModel.objects.values_list("id", "name"))
    decision = quota_admit(
        customer_id=customer_id, model_ids=tuple(catalogue), model_names=catalogue,
        gpu_milli=request.gpu_milli_total, start_at=start_at, end_at=end_at,
        **({"read_usage": ledger_usage_reader(ledger)} if ledger is not None else {}),
    )
    budget = budget_admit(customer_id=customer_id, gpu_milli=request.gpu_milli_total, start_at=start_at,
                          end_at=end_at)
    if budget.refusal or not decision.admitted_model_ids:
        return []
    node_filter = NodeFilter(decision.admitted_model_ids, None, node_price_cap(budget.max_affordable_price, price_factor))
    if ledger is not None:
        rows = ledger.lowest_prices(request, micros(start_at), micros(end_at), node_search(node_filter))
    else:
        rows = _option_rows(request, start_at, end_at, node_filter)
    cheapest: dict[tuple[str, str], Option] = {}
    for model_id, region, list_price, currency in rows:
        price = charged_price(list_price, price_factor)
        key = (catalogue[model_id], region)
        if key not in cheapest or price < cheapest[key].price_per_gpu_hour:
            cheapest[key] = Option(gpu_model=key[0], region=region, price_per_gpu_hour=price, currency=currency)
    return sorted(cheapest.values(), key=lambda o: (o.price_per_gpu_hour, o.gpu_model, o.region))


def _option_rows(request: PlacementRequest, start_at: datetime, end_at: datetime,
                 node_filter: NodeFilter) -> list[tuple]:
    """Return ``(gpu_model_id, region code, price, currency)`` for the nodes of ``node_filter`` that can hold the request.

    The partly used nodes with room come from the shortlist query without a limit, with exact
    per-instant usage, so a node that fits between two shorter bookings counts. The cheapest empty
    node of each model, region and currency joins them. The last query keeps the nodes with enough
    healthy GPUs, which the shortlist does not check, and returns the lowest price per model,
    region and currency.
    """
    node_ids = candidate_ids(request, start_at, end_at, node_filter, used_limit=ALL_NODES, free_limit=0, exact=True)
    node_ids += cheapest_empty_nodes(request, start_at, end_at, node_filter)
    return lowest_prices(node_ids, min_healthy_gpus=request.gpu_count)
