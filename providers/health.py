"""GPU and node health from the agents' readings, and what the marketplace does about it.

- Each GPU's state follows its latest reading (``health_rules``); a GPU that recovers stays out of
  placement for ``PROBATION_SECONDS``. Placement only uses GPUs whose health is ``healthy``.
- A node is unhealthy when half or more of its GPUs failed. Only a node that stays unhealthy for
  ``UNHEALTHY_DRAIN_AFTER_SECONDS`` is drained: at once when it holds at most
  ``DRAIN_APPROVAL_ABOVE_RESERVATIONS`` reservations, otherwise after an admin approves
  (``NodeDrainRequest``).
- A node without a heartbeat for ``HEARTBEAT_TIMEOUT_SECONDS`` becomes ``unknown``. Its GPUs keep
  their last state and nothing is cancelled or moved: a short loss of contact is not a failure.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Avg, Count, Max, OuterRef, Subquery
from django.db.models.functions import TruncHour
from django.utils import timezone

from allocation.models import Allocation, ReservationStatus
from marketplace.audit import audit_record
from marketplace.models import Gpu, GpuHealthEvent, GpuReading, GpuReadingHour, Node
from scheduler.migrating import node_drain

from . import health_rules
from .models import NodeDrainRequest

logger = logging.getLogger(__name__)


def apply_readings(*, gpus: dict, latest: dict, nodes: list[Node], now: datetime) -> int:
    """Update the health of the GPUs with a new latest reading, and of their nodes; return the GPU state changes.

    ``latest`` maps a GPU id to ``(at, reading, xid_events)``; ``gpus`` maps ``(node_id, uuid)`` to
    ``Gpu`` rows. Only GPUs whose health changed are written, so a steady fleet costs one UPDATE of
    the nodes' heartbeat time per call. Call it after storing the readings: a change is applied
    only if its reading is the GPU's newest stored one, because heartbeats may arrive out of order
    and an older reading must not override what a newer one set.
    """
    probation = timedelta(seconds=settings.MARKETPLACE["PROBATION_SECONDS"])
    by_id = {gpu.pk: gpu for gpu in gpus.values()}
    changed_nodes, changes = set(), 0
    updates = []
    for gpu_id, (at, reading, xids) in sorted(latest.items()):
        gpu = by_id[gpu_id]
        observed = health_rules.evaluate_reading(temperature_c=reading.get("temperature_c"),
                                                 ecc_uncorrected=reading.get("ecc_uncorrected") or 0, xid_events=xids)
        state, until, reasons = health_rules.next_gpu_state(current=gpu.health, observed=observed,
                                                           probation_until=gpu.probation_until, now=now,
                                                           probation=probation)
        values = {"health": state, "probation_until": until, "health_reasons": reasons, "health_score": observed.score}
        if gpu.first_reading_at is None:
            values["first_reading_at"] = at
        if any(getattr(gpu, field) != value for field, value in values.items()):
            updates.append((gpu, at, state, reasons, values))

    for gpu, at, state, reasons, values in _from_newest_readings(updates):
        if state != gpu.health:
            changes += 1
            logger.info("GPU %s of node %s: %s -> %s (%s)", gpu.pk, gpu.node_id, gpu.health, state,
                        "; ".join(reasons) or "readings normal")
            GpuHealthEvent.objects.create(gpu=gpu, node_id=gpu.node_id, at=at, from_state=gpu.health,
                                          to_state=state, reasons=reasons)
        Gpu.objects.filter(pk=gpu.pk).update(**values)
        for field, value in values.items():
            setattr(gpu, field, value)
        changed_nodes.add(gpu.node_id)

    Node.objects.filter(pk__in=[node.pk for node in nodes]).update(last_heartbeat_at=now)
    recompute = changed_nodes | {node.pk for node in nodes if node.health == "unknown"}
    if recompute:
        _update_nodes(sorted(recompute), now)
    return changes


def _from_newest_readings(updates: list[tuple]) -> list[tuple]:
    """Return those of ``updates`` (``(gpu, at, ...)``) whose ``at`` is the GPU's newest stored reading.

    Only GPUs about to change are checked, one probe of the ``(gpu, at)`` index each, so a steady
    fleet pays nothing for it.
    """
    if not updates:
        return updates
    newest = Subquery(GpuReading.objects.filter(gpu=OuterRef("pk")).order_by("-at").values("at")[:1])
    stored = dict(Gpu.objects.filter(pk__in=[update[0].pk for update in updates]).annotate(newest=newest)
                  .values_list("pk", "newest"))
    fresh = [update for update in updates if stored.get(update[0].pk) is None or update[1] >= stored[update[0].pk]]
    if len(fresh) < len(updates):
        logger.info("Ignored the health of %d GPUs whose readings were older than their newest stored one",
                    len(updates) - len(fresh))
    return fresh


def _update_nodes(node_ids: list[int], now: datetime) -> None:
    """Recompute the health of ``node_ids`` from their GPUs."""
    states: dict[int, list[str]] = {node_id: [] for node_id in node_ids}
    reasons: dict[int, list[str]] = {node_id: [] for node_id in node_ids}
    for node_id, index, health, gpu_reasons in (Gpu.objects.filter(node_id__in=node_ids, retired_at__isnull=True)
                                                .values_list("node_id", "index", "health", "health_reasons")):
        states[node_id].append(health)
        reasons[node_id] += [f"GPU {index}: {reason}" for reason in gpu_reasons]
    for node in Node.objects.filter(pk__in=node_ids).only("id", "health", "unhealthy_since"):
        state = health_rules.node_state(states[node.pk])
        unhealthy_since = node.unhealthy_since
        if state == "unhealthy" and node.health != "unhealthy":
            unhealthy_since = now
        elif state != "unhealthy":
            unhealthy_since = None
        Node.objects.filter(pk=node.pk).update(health=state, health_reasons=reasons[node.pk][:20],
                                               unhealthy_since=unhealthy_since)


def heartbeats_check(*, now: datetime | None = None) -> int:
    """Mark nodes without a recent heartbeat ``unknown``; return how many changed. Nothing else changes."""
    now = now or timezone.now()
    timeout = timedelta(seconds=settings.MARKETPLACE["HEARTBEAT_TIMEOUT_SECONDS"])
    stale = (Node.objects.filter(last_heartbeat_at__lt=now - timeout).exclude(health="unknown"))
    count = stale.update(health="unknown", unhealthy_since=None,
                         health_reasons=["no heartbeat within the timeout; state unknown, nothing is moved"])
    if count:
        logger.warning("%d nodes missed their heartbeats; their state is unknown", count)
    return count


def unhealthy_nodes_drain(*, now: datetime | None = None) -> dict:
    """Drain nodes unhealthy for longer than the threshold, or ask an admin first when many reservations run there."""
    now = now or timezone.now()
    config = settings.MARKETPLACE
    since = now - timedelta(seconds=config["UNHEALTHY_DRAIN_AFTER_SECONDS"])
    drained, requested = 0, 0
    for node in Node.objects.filter(health="unhealthy", unhealthy_since__lte=since, status=Node.Status.ACTIVE):
        affected = Allocation.objects.filter(
            node=node, released_at__isnull=True, end_at__gt=now,
            reservation__status__in=[ReservationStatus.SCHEDULED, ReservationStatus.ACTIVE]).count()
        reason = f"unhealthy since {node.unhealthy_since:%Y-%m-%d %H:%M} UTC: " + "; ".join(node.health_reasons[:3])
        if affected > config["DRAIN_APPROVAL_ABOVE_RESERVATIONS"]:
            _, created = NodeDrainRequest.objects.get_or_create(
                node=node, status=NodeDrainRequest.Status.PENDING,
                defaults={"reservations": affected, "reason": reason, "created_at": now})
            requested += created
            continue
        node_drain(node_id=node.pk, now=now)
        drained += 1
        logger.warning("Node %s drained automatically: %s", node.hostname, reason)
    return {"drained": drained, "approval_requested": requested}


def drain_request_approve(*, request_id: int, actor, now: datetime | None = None) -> dict:
    """Approve a pending drain of an unhealthy node: drain it now."""
    now = now or timezone.now()
    with transaction.atomic():
        request = NodeDrainRequest.objects.select_for_update().get(pk=request_id)
        if request.status != NodeDrainRequest.Status.PENDING:
            return {"planned": 0, "stayed": 0, "migrations": []}
        request.status, request.decided_by, request.decided_at = NodeDrainRequest.Status.APPROVED, actor, now
        request.save(update_fields=["status", "decided_by", "decided_at"])
        audit_record(action="node_drain_request.approve", obj=request, actor=actor,
                     organization=Node.objects.filter(pk=request.node_id).values_list("provider_id", flat=True).first(),
                     details={"before": {"status": NodeDrainRequest.Status.PENDING},
                              "after": {"status": request.status}, "node": request.node_id,
                              "reason": request.reason, "reservations": request.reservations})
        return node_drain(node_id=request.node_id, actor=actor, now=now)


def readings_rollup(*, now: datetime | None = None, hours: int = 3) -> int:
    """Recompute the hourly rollups of the last ``hours`` hours from the raw readings; return the rows written."""
    now = now or timezone.now()
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    rows = (GpuReading.objects.filter(at__gte=start).annotate(hour=TruncHour("at")).values("gpu_id", "hour")
            .annotate(samples=Count("id"), temperature_max_c=Max("temperature_c"),
                      utilization_mean_pct=Avg("utilization_pct"), power_mean_w=Avg("power_w"),
                      ecc_uncorrected_max=Max("ecc_uncorrected")))
    hours_rows = [GpuReadingHour(gpu_id=row["gpu_id"], hour=row["hour"], samples=row["samples"],
                                 temperature_max_c=row["temperature_max_c"],
                                 utilization_mean_pct=row["utilization_mean_pct"], power_mean_w=row["power_mean_w"],
                                 ecc_uncorrected_max=row["ecc_uncorrected_max"] or 0) for row in rows]
    xids = {}
    for gpu_id, at, events in GpuReading.objects.filter(at__gte=start).exclude(xid_events=[]).values_list(
            "gpu_id", "at", "xid_events"):
        key = (gpu_id, at.replace(minute=0, second=0, microsecond=0))
        xids[key] = xids.get(key, 0) + len(events)
    for row in hours_rows:
        row.xid_count = xids.get((row.gpu_id, row.hour), 0)
    with transaction.atomic():
        GpuReadingHour.objects.filter(hour__gte=start).delete()
        GpuReadingHour.objects.bulk_create(hours_rows, batch_size=2000)
    return len(hours_rows)


def readings_purge(*, now: datetime | None = None) -> int:
    """Delete raw readings past the retention period (their hours stay rolled up); return how many."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.MARKETPLACE["READING_RETENTION_HOURS"])
    deleted, _ = GpuReading.objects.filter(at__lt=cutoff).delete()
    if deleted:
        logger.info("Purged %d GPU readings older than %s", deleted, cutoff.isoformat())
    return deleted
