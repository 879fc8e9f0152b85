"""Node registration and heartbeat ingestion: what each node's agent discovers and reads.

Registration reconciles the node's GPUs with discovery. A GPU is matched by UUID, and a listed
GPU that never reported is adopted by the discovered GPU at its index. Every GPU that discovery
no longer finds is retired, and the reservations on it move to other nodes (or fail when no
node has room). Heartbeats
store the readings and update each GPU's health and its node's (``providers.health``).
"""

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from allocation.models import Allocation, Reservation, ReservationStatus
from allocation.services import reservation_finish_early
from marketplace.exceptions import FieldProblem, InvalidRequest
from marketplace.models import Gpu, GpuReading, Node
from scheduler.migrating import migration_plan_off_node
from scheduler.models import Migration

from .health import apply_readings

logger = logging.getLogger(__name__)


@dataclass
class IngestSummary:
    heartbeats: int = 0
    readings: int = 0
    unknown_gpus: int = 0
    health_changes: int = 0


def node_register(*, node: Node, inventory: dict, agent_version: str, now: datetime | None = None) -> dict:
    """Reconcile ``node``'s GPUs with ``inventory`` (validated by the API) and return counts.

    The inventory is the truth for the GPUs in service. A reported UUID keeps its GPU row, and a
    listed GPU that never reported is adopted by a new UUID reported at its index. Every GPU
    in service ends at the index its agent reported, because the driver numbers GPUs again when
    one is removed. A GPU no longer reported is retired before the new ones are added, so a
    replacement takes the slot it was reported in. A retired GPU of this node that is reported
    again returns to service, still failed until its heartbeats pass the health rules' probation.
    """
    now = now or timezone.now()
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node.pk)
        _reject_foreign_uuids(node, inventory["gpus"])
        existing = list(Gpu.objects.filter(node=node, retired_at__isnull=True).order_by("index"))
        by_uuid = {str(gpu.uuid).lower(): gpu for gpu in existing}
        by_index = {gpu.index: gpu for gpu in existing}
        reported = [(item, _uuid(item["uuid"])) for item in inventory["gpus"]]
        returning = {str(gpu.uuid).lower(): gpu for gpu in Gpu.objects.filter(
            node=node, retired_at__isnull=False, uuid__in=[uuid for _item, uuid in reported if uuid not in by_uuid])}

        matched = {uuid: by_uuid[uuid] for _item, uuid in reported if uuid in by_uuid}
        claimed = {gpu.pk for gpu in matched.values()}
        adopted = 0
        for item, uuid in reported:
            placeholder = by_index.get(item["index"])
            if (uuid not in matched and uuid not in returning and placeholder is not None
                    and placeholder.first_reading_at is None and placeholder.pk not in claimed):
                matched[uuid] = placeholder
                claimed.add(placeholder.pk)
                adopted += 1

        retired = [gpu for gpu in existing if gpu.pk not in claimed]
        for gpu in retired:
            gpu.retired_at, gpu.health, gpu.probation_until = now, Gpu.Health.FAILED, None
            gpu.health_reasons = ["no longer found by the node's GPU discovery; retired"]
            gpu.save(update_fields=["retired_at", "health", "probation_until", "health_reasons"])
        _return_to_service(list(returning.values()), above=[gpu.index for gpu in existing])
        matched.update(returning)
        reindexed = _move_to_reported_indexes(
            [(matched[uuid], item["index"]) for item, uuid in reported if uuid in matched])

        created = 0
        for item, uuid in reported:
            gpu = matched.get(uuid)
            if gpu is None:
                Gpu.objects.create(node=node, index=item["index"], uuid=uuid, model_name=item["model"][:128],
                                   memory_mib=item["memory_mib"])
                created += 1
                continue
            gpu.uuid, gpu.model_name, gpu.memory_mib = uuid, item["model"][:128], item["memory_mib"]
            gpu.save(update_fields=["uuid", "model_name", "memory_mib"])

        node.gpu_count = Gpu.objects.filter(node=node, retired_at__isnull=True).count()
        node.agent_version = agent_version[:32]
        node.driver_version = inventory.get("driver_version", "")[:64]
        node.cuda_version = inventory.get("cuda_version", "")[:32]
        node.save(update_fields=["gpu_count", "agent_version", "driver_version", "cuda_version", "updated_at"])
        moved = _move_work_off(node, retired, now) if retired else 0
    logger.info("Node %s registered %d GPUs: %d adopted, %d new, %d returned, %d renumbered, %d retired, "
                "%d reservations moving", node.hostname, len(inventory["gpus"]), adopted, created, len(returning),
                reindexed, len(retired), moved)
    return {"gpus": len(inventory["gpus"]), "adopted": adopted, "created": created, "returned": len(returning),
            "reindexed": reindexed, "retired": len(retired), "reservations_moving": moved}


def _return_to_service(gpus: list[Gpu], above: list[int]) -> None:
    """Put retired ``gpus`` back in service at free indexes above ``above``; registration then moves them.

    Each stays failed, so placement leaves it out until its readings pass the recovery probation.
    """
    first_free = 1 + max(above + [gpu.index for gpu in gpus], default=-1)
    for position, gpu in enumerate(gpus):
        gpu.retired_at, gpu.index = None, first_free + position
        gpu.health, gpu.probation_until = Gpu.Health.FAILED, None  # Its next healthy reading starts a probation.
        gpu.health_reasons = ["found again by the node's GPU discovery; out of placement until it reports healthy"]
        gpu.save(update_fields=["retired_at", "index", "health", "probation_until", "health_reasons"])


def _move_to_reported_indexes(gpus_and_indexes: list[tuple[Gpu, int]]) -> int:
    """Give each GPU in service the index its agent reported; return how many changed.

    ``gpus_and_indexes`` contains every GPU of the node in service. Two of them may swap indexes, and
    an index is unique per node among GPUs in service, so the GPUs that move first step to free
    indexes above all of these, then to their own.
    """
    moving = [(gpu, index) for gpu, index in gpus_and_indexes if gpu.index != index]
    if not moving:
        return 0
    above_all = 1 + max(max(gpu.index, index) for gpu, index in gpus_and_indexes)
    for position, (gpu, _index) in enumerate(moving):
        gpu.index = above_all + position
        gpu.save(update_fields=["index"])
    for gpu, index in moving:
        gpu.index = index
        gpu.save(update_fields=["index"])
    return len(moving)


def _reject_foreign_uuids(node: Node, gpus: list[dict]) -> None:
    """Raise ``InvalidRequest`` naming each discovered GPU whose UUID another node registered."""
    positions = {_uuid(item["uuid"]): position for position, item in enumerate(gpus)}
    elsewhere = Gpu.objects.filter(uuid__in=list(positions)).exclude(node=node).values_list("uuid", "node__hostname")
    problems = [FieldProblem(f"gpus.{positions[str(uuid)]}.uuid",
                             f"GPU {uuid} is registered on node {hostname}; a GPU belongs to one node. Run the agent "
                             f"with this node's own GPUs, or ask an admin to remove it from {hostname}.", "taken")
                for uuid, hostname in elsewhere]
    if problems:
        raise InvalidRequest("Some discovered GPUs belong to other nodes. " + " ".join(p.message for p in problems),
                             errors=problems)


def _move_work_off(node: Node, retired: list[Gpu], now: datetime) -> int:
    """Plan moves for the reservations holding shares on retired GPUs; return how many."""
    affected = (Allocation.objects.filter(node=node, released_at__isnull=True, end_at__gt=now,
                                          shares__gpu__in=retired, shares__end_at__gt=now,
                                          reservation__status__in=[ReservationStatus.SCHEDULED,
                                                                   ReservationStatus.ACTIVE])
                .values_list("reservation_id", flat=True).distinct())
    moving = 0
    for reservation_id in list(affected):
        if migration_plan_off_node(reservation_id=reservation_id, reason="A GPU it used was retired.", now=now,
                                   kind=Migration.Kind.GPU_RETIRED):
            moving += 1
            continue
        # Nowhere to go and its GPU is gone: the reservation cannot run, so it fails and frees its quota.
        reservation = Reservation.objects.select_for_update().get(pk=reservation_id)
        reservation_finish_early(reservation=reservation, succeeded=False, now=now,
                                 note="A GPU it used was retired and no other node has room for it.")
    return moving


def heartbeats_ingest(*, heartbeats: list[tuple[Node, list[dict]]], now: datetime | None = None) -> IngestSummary:
    """Store the snapshots of many nodes at once and update their GPUs' and nodes' health.

    Each heartbeat is a node with its snapshots (validated by the API): ``{"at", "gpus": [{uuid,
    temperature_c, utilization_pct, memory_used_mib, power_w, ecc_uncorrected, xid_events}]}``.
    Readings of GPUs the node did not register are counted and skipped.
    """
    now = now or timezone.now()
    summary = IngestSummary(heartbeats=len(heartbeats))
    node_ids = [node.pk for node, _ in heartbeats]
    gpus = {(gpu.node_id, str(gpu.uuid).lower()): gpu
            for gpu in Gpu.objects.filter(node_id__in=node_ids, retired_at__isnull=True)}
    rows, latest = [], {}
    for node, snapshots in heartbeats:
        for snapshot in snapshots:
            at = snapshot["at"]
            for reading in snapshot["gpus"]:
                gpu = gpus.get((node.pk, _uuid(reading["uuid"])))
                if gpu is None:
                    summary.unknown_gpus += 1
                    continue
                rows.append(GpuReading(
                    gpu=gpu, at=at, temperature_c=reading.get("temperature_c"),
                    utilization_pct=reading.get("utilization_pct"), memory_used_mib=reading.get("memory_used_mib"),
                    power_w=reading.get("power_w"), ecc_uncorrected=reading.get("ecc_uncorrected") or 0,
                    xid_events=list(reading.get("xid_events") or []),
                ))
                # The newest reading of the batch counts, with the XID events of all of them: an
                # XID is an event, whatever the order the snapshots came in.
                previous = latest.get(gpu.pk)
                xids = list(reading.get("xid_events") or []) + (previous[2] if previous else [])
                if previous is None or previous[0] <= at:
                    latest[gpu.pk] = (at, reading, xids)
                else:
                    latest[gpu.pk] = (previous[0], previous[1], xids)
    with transaction.atomic():
        # Lock the nodes first, in id order, as a booking does (its node, then that node's GPUs through the share
        # guard trigger), so ingestion and bookings take these rows in one order and cannot deadlock on them.
        list(Node.objects.select_for_update().filter(pk__in=set(node_ids)).order_by("pk").values_list("pk", flat=True))
        _insert_readings(rows)
        summary.readings = len(rows)
        summary.health_changes = apply_readings(gpus=gpus, latest=latest, nodes=[node for node, _ in heartbeats],
                                                now=now)
    return summary


READING_COLUMNS = ("gpu_id", "at", "temperature_c", "utilization_pct", "memory_used_mib", "power_w",
                   "ecc_uncorrected", "xid_events")


def _insert_readings(rows: list[GpuReading]) -> None:
    """Insert readings with PostgreSQL's COPY (several times faster than INSERT), or bulk_create elsewhere."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        GpuReading.objects.bulk_create(rows, batch_size=2000)
        return
    table = GpuReading._meta.db_table
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY {table} ({', '.join(READING_COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((row.gpu_id, row.at, row.temperature_c, row.utilization_pct, row.memory_used_mib,
                                row.power_w, row.ecc_uncorrected, json.dumps(row.xid_events)))


def _uuid(value: str) -> str:
    """Return a GPU UUID in the form stored: without NVIDIA's ``GPU-`` prefix, lower case."""
    text = value.strip().lower()
    return text[4:] if text.startswith("gpu-") else text


def reading_retention() -> timedelta:
    return timedelta(hours=settings.MARKETPLACE["READING_RETENTION_HOURS"])
