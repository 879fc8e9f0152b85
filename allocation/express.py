"""The express path of ``reservation_create`` on PostgreSQL: the same rules in two statements.

The full path in ``services.py`` admits, places and records a request with about 24 statements
through the ORM, and on these machines the ORM's Python work costs more than the database's. On
PostgreSQL this module runs the same rules around these statements:

1. ``allocation_admission_context`` (migrations 0017 and 0025) locks the organization row, as the
   full path does, and returns the duplicate ``external_ref`` if any, the quotas, whether a budget
   exists, the approval policy and the capacity feed's changes since this thread's ledger last
   read it.
2. The quota check (``quota_admit``, given the quotas just read) and the shortlist read usage and
   free capacity from the thread's capacity ledger (``ledger_sync.py``), brought up to date with
   those changes. Without a ledger (switched off, or a window before its horizon) they read the
   tables with the full path's own queries.
3. ``allocation_reservation_write`` writes the reservation, its models, events and workload, and
   either the rejection or the first of the ranked placements that still fits. It locks each
   node and compares it with what the shortlist read. The triggers check the allocation against
   everything committed, as on the full path, so a stale ledger can only lose a race here.

Quotas, ranking, prices, billing, approvals and every message come from the same Python functions
as on the full path, so the rules stay in one place. The SQL functions only lock, compare, read
and write. The reservation returned carries its allocation, shares, models and workload, so the
API builds its response without reading it back.

The full path runs instead, with nothing written here, in three cases:

- a request with ``queue_if_unavailable``;
- an organization with a budget, because its per-node spend check reads each period;
- every ranked placement lost its race. The full path then reads a fresh shortlist and re-plans
  on the locked node.
"""

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone

from marketplace.logs import bind_reservation
from marketplace.metrics import SOURCE_REQUEST, reservation_decision_record
from marketplace.models import Gpu, GpuModel, Node, Organization, Region

from .approval_policy import policy_approval_reason
from .ledger_sync import (
    ledger_after_changes, ledger_feed_position, ledger_for_window, ledger_load_if_due, ledger_shortlist,
    ledger_usage_reader,
)
from .lifecycle import placed_status
from .models import Allocation, ApprovalPolicy, GpuShare, RejectionReason, Reservation, ReservationStatus
from .placement import MAX_COMMIT_ATTEMPTS, placement_diagnose, placement_shortlist
from .pricing import billed_gpu_milli, charged_price, estimated_cost
from .quotas import quota_admit
from .selectors import NodeFilter, customer_usage
from .solvers import NodeState, Placement, PlacementPolicy
from scheduler.models import Workload

logger = logging.getLogger(__name__)

SUBMITTED_NOTE = "Submitted."


class _UseFullPath(Exception):
    """Every ranked choice lost its race: the transaction is rolled back and the full path decides."""


@dataclass(frozen=True)
class _DecidedBeforeWriting:
    """The outcome of a request the admission context alone settled: the full path takes it, or ``error`` is raised.

    The transaction commits, because it wrote nothing. A rollback would make psycopg drop every
    prepared statement of the connection, so later requests on it would plan their queries again.
    Every request of an organization with a budget ends here.
    """

    full_path_reason: str = ""
    error: Exception | None = None


def express_available(spec) -> bool:
    """Return whether the express path can take ``spec`` (a ``services.ReservationSpec``)."""
    return connection.vendor == "postgresql" and not spec.queue_if_unavailable


def reservation_create_express(
    *, customer: Organization, resolved, terms, policy: PlacementPolicy, actor: AbstractBaseUser | None,
    now: datetime, price_factor: Decimal,
) -> Reservation | None:
    """Admit, place and record ``resolved`` (a ``services.ResolvedSpec``) in one transaction.

    Returns the reservation as ``services.reservation_create`` does, complete for the API's
    response, or None when the full path must decide it (nothing was written). Raises
    ``DuplicateExternalRef`` as the full path does.
    """
    ledger_load_if_due()
    try:
        with transaction.atomic():
            decided = _decide_and_write(customer=customer, resolved=resolved, terms=terms, policy=policy, actor=actor,
                                        now=now, price_factor=price_factor)
    except _UseFullPath as reason:
        logger.info("Reservation request of %s takes the full path: %s", customer.slug, reason)
        return None
    if isinstance(decided, Reservation):
        return decided
    if decided.error is not None:
        raise decided.error
    logger.info("Reservation request of %s takes the full path: %s", customer.slug, decided.full_path_reason)
    return None


def _decide_and_write(
    *, customer, resolved, terms, policy, actor, now, price_factor,
) -> Reservation | _DecidedBeforeWriting:
    from .services import DuplicateExternalRef, node_price_cap  # services imports this module.

    spec = resolved.spec
    position = ledger_feed_position()
    context = _admission_context(customer.pk, spec.external_ref, position)
    if context["duplicate_id"] is not None:
        return _DecidedBeforeWriting(error=DuplicateExternalRef(spec.external_ref, context["duplicate_id"]))
    if context["has_budget"]:
        return _DecidedBeforeWriting(full_path_reason="the organization has a budget")

    request = resolved.request
    model_names = {model.id: model.name for model in resolved.models}
    # The changes were read after the customer's row was locked, so the ledger contains every
    # committed admission of the customer.
    if position is not None:
        ledger = ledger_after_changes(context["changes"], spec.start_at)
    else:
        ledger = ledger_for_window(spec.start_at)
    quota = quota_admit(
        customer_id=customer.pk, model_ids=tuple(model_names), model_names=model_names,
        gpu_milli=request.gpu_milli_total, start_at=spec.start_at, end_at=spec.end_at,
        quotas=[tuple(row) for row in context["quotas"]],
        read_usage=ledger_usage_reader(ledger) if ledger is not None else customer_usage,
    )
    payload = _reservation_payload(customer, resolved, terms, actor, now, quota.borrowed_gpu_milli)
    if not quota.admitted_model_ids:
        return _write_rejection(payload, customer, resolved, terms, actor, RejectionReason.QUOTA_EXCEEDED,
                                quota.detail)

    node_filter = NodeFilter(
        gpu_model_ids=quota.admitted_model_ids,
        region_id=resolved.region.id if resolved.region else None,
        max_price_per_gpu_hour=node_price_cap(spec.max_price_per_gpu_hour, price_factor),
    )
    if ledger is not None:
        ranked, states = ledger_shortlist(ledger, request=request, start_at=spec.start_at, end_at=spec.end_at,
                                          node_filter=node_filter, policy=policy)
    else:
        ranked, states = placement_shortlist(request=request, start_at=spec.start_at, end_at=spec.end_at,
                                             node_filter=node_filter, policy=policy)
    if not ranked:
        outcome = placement_diagnose(request, spec.start_at, spec.end_at, node_filter, shortlisted_any=bool(states),
                                     price_factor=price_factor)
        return _write_rejection(payload, customer, resolved, terms, actor, outcome.reason, outcome.detail)

    approval_policy = _approval_policy(context["approval"])
    payload["allowed_gpu_model_ids"] = list(node_filter.gpu_model_ids)
    payload["placements"] = [
        _choice(placement, states[placement.node_id], resolved, policy, price_factor, approval_policy, now)
        for placement in ranked[:MAX_COMMIT_ATTEMPTS]
    ]
    written = _write(payload)
    for lost in written["lost"]:
        logger.warning("Placement of reservation %s on node %s lost a race: %s", written["reservation_id"],
                       lost["node_id"], lost["error"])
    if written["placed"] is None:
        raise _UseFullPath(f"all {len(payload['placements'])} ranked nodes lost their races, so reservation "
                           f"{written['reservation_id']} is rolled back")

    reservation = _reservation_in_memory(payload, written, customer, resolved, actor)
    chosen = payload["placements"][written["placed"]]
    reservation.status = chosen["status"]
    reservation.reason_detail = chosen["note"]
    if chosen["hold_expires_at"] is not None:
        reservation.hold_expires_at = datetime.fromisoformat(chosen["hold_expires_at"])
    reservation.allocation = _allocation_in_memory(reservation, written, chosen, states[chosen["node_id"]], payload,
                                                   resolved)
    reservation.workload = _workload_in_memory(reservation, terms, payload)
    bind_reservation(reservation.pk)
    reservation_decision_record(status=reservation.status, reason="", source=SOURCE_REQUEST)
    return reservation


def _admission_context(customer_id: int, external_ref: str, position: tuple[list[str], str] | None) -> dict:
    """Lock the customer's row and return its admission context, with the capacity feed's changes since ``position``."""
    pending, xmax = position if position is not None else (None, None)
    with connection.cursor() as cursor:
        cursor.execute("SELECT allocation_admission_context(%s, %s, %s::xid8[], %s::xid8)",
                       [customer_id, external_ref, pending, xmax])
        value = cursor.fetchone()[0]
    return value if isinstance(value, dict) else json.loads(value)


def _approval_policy(row: dict | None) -> ApprovalPolicy | None:
    if row is None:
        return None
    return ApprovalPolicy(
        flagged=row["flagged"], max_gpus_without_approval=row["max_gpus"],
        max_cost_without_approval=Decimal(row["max_cost"]) if row["max_cost"] is not None else None,
    )


def _reservation_payload(customer, resolved, terms, actor, now: datetime, borrowed_gpu_milli: int) -> dict:
    spec = resolved.spec
    return {
        "at": now.isoformat(),
        "written_at": timezone.now().isoformat(),
        "actor_id": actor.pk if actor is not None and actor.pk is not None else None,
        "submitted_note": SUBMITTED_NOTE,
        "gpu_model_ids": [model.id for model in resolved.models] if spec.gpu_models else [],
        "gpu_milli_total": resolved.request.gpu_milli_total,
        "borrowed_gpu_milli": borrowed_gpu_milli,
        "reservation": {
            "customer_id": customer.pk, "external_ref": spec.external_ref, "gpu_count": spec.gpu_count,
            "gpu_milli_per_gpu": spec.gpu_milli_per_gpu, "region_id": resolved.region.id if resolved.region else None,
            "cpu_millicores": spec.cpu_millicores, "memory_mib": spec.memory_mib,
            "start_at": spec.start_at.isoformat(), "end_at": spec.end_at.isoformat(),
            "max_price_per_gpu_hour": (str(spec.max_price_per_gpu_hour)
                                       if spec.max_price_per_gpu_hour is not None else None),
            "currency": settings.MARKETPLACE["DEFAULT_CURRENCY"], "do_not_migrate": spec.do_not_migrate,
        },
        "workload": {
            "priority_class_id": terms.priority_class.pk, "queue_id": terms.queue.pk,
            "interruptible": spec.interruptible,
            "latest_start_at": terms.latest_start_at.isoformat() if terms.latest_start_at else None,
            "duration_seconds": _duration_seconds(spec),
        },
    }


def _duration_seconds(spec) -> int:
    return max(int((spec.end_at - spec.start_at).total_seconds()), 1)


def _choice(placement: Placement, state: NodeState, resolved, policy: PlacementPolicy,
            price_factor: Decimal, approval_policy: ApprovalPolicy | None, now: datetime) -> dict:
    """Return what the writer needs to commit ``placement``: the node as read, the charge, the status and note."""
    spec = resolved.spec
    list_price = Decimal(repr(state.price_per_gpu_hour))  # The shortest repr is the stored 4-place value.
    price = charged_price(list_price, price_factor)
    billed = billed_gpu_milli(resolved.request, node_gpu_count=state.gpu_count,
                              node_cpu_millicores=state.cpu_capacity_millicores,
                              node_memory_mib=state.memory_capacity_mib)
    needs_approval = policy_approval_reason(
        approval_policy, gpu_count=spec.gpu_count,
        estimated_cost=estimated_cost(price_per_gpu_hour=price, billed_milli=billed, start_at=spec.start_at,
                                      end_at=spec.end_at),
    )
    placed = placed_status(placed_note=f"Placed on node {state.hostname} by policy {policy.name}.",
                           needs_approval=needs_approval, start_at=spec.start_at, now=now)
    return {
        "node_id": placement.node_id, "hostname": state.hostname, "gpu_count": state.gpu_count,
        "cpu_millicores": state.cpu_capacity_millicores, "memory_mib": state.memory_capacity_mib,
        "list_price": str(list_price),
        "gpu_shares": [[gpu_id, milli] for gpu_id, milli in placement.gpu_shares],
        "billed_gpu_milli": billed, "price_per_gpu_hour": str(price), "status": str(placed.status),
        "note": placed.note,
        "hold_expires_at": placed.hold_expires_at.isoformat() if placed.hold_expires_at else None,
    }


def _write(payload: dict) -> dict:
    """Call the writer with ``payload``; return what it wrote: ids, the placed choice or None, and lost races."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT allocation_reservation_write(%s::jsonb)", [json.dumps(payload)])
        value = cursor.fetchone()[0]
    return value if isinstance(value, dict) else json.loads(value)


def _write_rejection(payload: dict, customer, resolved, terms, actor, reason: str, detail: str) -> Reservation:
    payload["rejection"] = {"reason_code": str(reason), "note": detail}
    written = _write(payload)
    reservation = _reservation_in_memory(payload, written, customer, resolved, actor)
    reservation.status = ReservationStatus.REJECTED
    reservation.reason_code = str(reason)
    reservation.reason_detail = detail
    reservation._state.fields_cache["allocation"] = None  # Known to have none: spares a query.
    reservation.workload = _workload_in_memory(reservation, terms, payload)
    bind_reservation(reservation.pk)
    reservation_decision_record(status=reservation.status, reason=str(reason), source=SOURCE_REQUEST)
    return reservation


def _reservation_in_memory(payload: dict, written: dict, customer, resolved, actor) -> Reservation:
    """Return the reservation as written, with its customer, region and requested models attached."""
    spec = resolved.spec
    reservation_id = written["reservation_id"]
    written_at = datetime.fromisoformat(payload["written_at"])
    reservation = Reservation(
        id=reservation_id, customer=customer, created_by=actor if payload["actor_id"] else None,
        external_ref=spec.external_ref, gpu_count=spec.gpu_count, gpu_milli_per_gpu=spec.gpu_milli_per_gpu,
        region=resolved.region, cpu_millicores=spec.cpu_millicores, memory_mib=spec.memory_mib,
        start_at=spec.start_at, end_at=spec.end_at, max_price_per_gpu_hour=spec.max_price_per_gpu_hour,
        currency=payload["reservation"]["currency"], status=ReservationStatus.PENDING, reason_code="",
        reason_detail="", hold_expires_at=None, do_not_migrate=spec.do_not_migrate, created_at=written_at,
        updated_at=written_at,
    )
    reservation._state.adding = False
    reservation._state.db = connection.alias
    requested = [_gpu_model(model_id, name, resolved) for model_id, name in written["requested_models"]]
    _prefetched(reservation, "gpu_models", reservation.gpu_models.all(), requested)
    reservation.response_ready = True
    return reservation


def _allocation_in_memory(reservation: Reservation, written: dict, chosen: dict, state: NodeState,
                          payload: dict, resolved) -> Allocation:
    """Return the allocation the writer inserted for ``chosen``, with its node and shares attached."""
    gpu_model = _gpu_model(written["gpu_model_id"], written["gpu_model_name"], resolved)
    node = Node(
        id=state.node_id, hostname=state.hostname, gpu_model=gpu_model, gpu_count=state.gpu_count,
        cpu_millicores=state.cpu_capacity_millicores, memory_mib=state.memory_capacity_mib,
        price_per_gpu_hour=Decimal(chosen["list_price"]), currency=written["currency"],
        provider=Organization(slug=written["provider_slug"], kind=Organization.Kind.PROVIDER),
        region=Region(code=written["region_code"]),
    )
    allocation = Allocation(
        id=written["allocation_id"], reservation=reservation, customer_id=reservation.customer_id, node=node,
        gpu_model=gpu_model, start_at=reservation.start_at, end_at=reservation.end_at,
        cpu_millicores=reservation.cpu_millicores, memory_mib=reservation.memory_mib,
        gpu_milli_total=payload["gpu_milli_total"], borrowed_gpu_milli=payload["borrowed_gpu_milli"],
        billed_gpu_milli=chosen["billed_gpu_milli"], price_per_gpu_hour=Decimal(chosen["price_per_gpu_hour"]),
        currency=written["currency"], created_at=reservation.created_at, released_at=None,
    )
    allocation._state.adding = False
    allocation._state.db = connection.alias
    milli_by_gpu = {gpu_id: milli for gpu_id, milli in chosen["gpu_shares"]}
    shares = []
    for share_id, gpu_id, index, uuid in written["shares"]:
        share = GpuShare(id=share_id, allocation=allocation, gpu=Gpu(id=gpu_id, node=node, index=index, uuid=uuid),
                         gpu_milli=milli_by_gpu[gpu_id], start_at=reservation.start_at, end_at=reservation.end_at)
        share._state.adding = False
        shares.append(share)
    _prefetched(allocation, "shares", allocation.shares.all(), shares)
    return allocation


def _gpu_model(model_id: int, name: str, resolved) -> GpuModel:
    """Return the catalogue's model ``model_id``; read it again if this process's cached copy has another name."""
    for model in resolved.models:
        if model.id == model_id and model.name == name:
            return model
    return GpuModel.objects.get(pk=model_id)


def _workload_in_memory(reservation: Reservation, terms, payload: dict) -> Workload:
    """Return the workload row as written, from the request's scheduling ``terms``."""
    written = payload["workload"]
    return Workload(
        reservation=reservation, priority_class=terms.priority_class, queue=terms.queue,
        interruptible=written["interruptible"], latest_start_at=terms.latest_start_at,
        duration_seconds=written["duration_seconds"], queued_at=None, position=None, waiting_reason_code="",
        waiting_reason="", estimated_start_at=None, requeued_from=None, start_attempts=0, failed_node_ids=[],
    )


def _prefetched(instance, name: str, queryset, objects: list) -> None:
    """Fill ``instance``'s prefetch cache for the relation ``name`` with ``objects``, as prefetch_related would."""
    queryset._result_cache = list(objects)
    queryset._prefetch_done = True
    if not hasattr(instance, "_prefetched_objects_cache"):
        instance._prefetched_objects_cache = {}
    instance._prefetched_objects_cache[name] = queryset
