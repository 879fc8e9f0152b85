"""Create the marketplace from the trace's node list and the deterministic overlay."""

import logging
from dataclasses import dataclass
from pathlib import Path

from django.db import connection, transaction

from marketplace.models import GPU_MILLI_PER_GPU, Gpu, GpuModel, Node, Organization, Region

from ..models import Allocation, GpuShare, Quota
from ..services import quota_set
from . import overlay
from .csv_reader import read_nodes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportSummary:
    nodes_created: int
    gpus_created: int
    nodes_total: int
    gpus_total: int
    customers: int
    providers: int


def trace_import(*, nodes_path: Path, replicas: int = 1) -> ImportSummary:
    """Create regions, providers, nodes, GPUs, customers and quotas; existing rows stay as they are.

    ``replicas`` > 1 adds copies of every node (hostname suffix ``-rN``) for scaling benchmarks.
    The file is read and checked in full before anything is written, and everything is written in
    one transaction, so a malformed file imports nothing. Running it again creates nothing new.
    """
    if replicas < 1:
        raise ValueError(f"replicas is {replicas}; use 1 or more.")
    trace_nodes = read_nodes(nodes_path)
    logger.info("Importing %d trace nodes x %d replicas from %s", len(trace_nodes), replicas, nodes_path)

    with transaction.atomic():
        models = {model.name: model for model in GpuModel.objects.all()}
        missing = sorted({node.gpu_model for node in trace_nodes} - set(models))
        if missing:
            raise ValueError(f"GPU models {missing} are not in the catalogue; run `python manage.py migrate` first.")

        regions = {
            code: Region.objects.get_or_create(code=code, defaults={"name": name})[0] for code, name in overlay.REGIONS
        }
        providers = {
            profile.slug: Organization.objects.get_or_create(
                slug=profile.slug, defaults={"name": profile.name, "kind": Organization.Kind.PROVIDER},
            )[0]
            for profile in overlay.PROVIDERS
        }
        nodes_created, gpus_created = _create_nodes(trace_nodes, replicas, models, regions, providers)
        _create_customers_and_quotas()
    refresh_planner_statistics()

    summary = ImportSummary(
        nodes_created=nodes_created,
        gpus_created=gpus_created,
        nodes_total=Node.objects.count(),
        gpus_total=Gpu.objects.count(),
        customers=Organization.objects.filter(kind=Organization.Kind.CUSTOMER).count(),
        providers=Organization.objects.filter(kind=Organization.Kind.PROVIDER).count(),
    )
    logger.info("Trace import finished: %s", summary)
    return summary


def refresh_planner_statistics() -> None:
    """Run ANALYZE on the fleet and allocation tables, so the query planner uses their real sizes.

    Autovacuum does this eventually; a bulk load should not wait for it, because the candidate
    queries pick join orders from these statistics.
    """
    tables = [model._meta.db_table for model in (Node, Gpu, Allocation, GpuShare)]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ANALYZE " + ", ".join(connection.ops.quote_name(table) for table in tables))
        else:
            for table in tables:
                cursor.execute("ANALYZE " + connection.ops.quote_name(table))


def _create_nodes(trace_nodes, replicas, models, regions, providers) -> tuple[int, int]:
    hostnames = [overlay.replica_hostname(node.hostname, replica) for replica in range(replicas) for node in trace_nodes]
    expanded = [node for _replica in range(replicas) for node in trace_nodes]
    placements = overlay.place_nodes(hostnames, [node.gpu_model for node in expanded])
    existing = set(Node.objects.filter(hostname__in=hostnames).values_list("hostname", flat=True))

    new_nodes = [
        Node(
            provider=providers[placement.provider], region=regions[placement.region], hostname=hostname,
            gpu_model=models[trace_node.gpu_model], gpu_count=trace_node.gpu_count,
            cpu_millicores=trace_node.cpu_millicores, memory_mib=trace_node.memory_mib,
            price_per_gpu_hour=placement.price_per_gpu_hour, currency="USD",
        )
        for hostname, trace_node, placement in zip(hostnames, expanded, placements, strict=True)
        if hostname not in existing
    ]
    Node.objects.bulk_create(new_nodes, batch_size=1000)

    created_ids = dict(Node.objects.filter(hostname__in=[node.hostname for node in new_nodes]).values_list("hostname", "id"))
    new_gpus = [
        Gpu(node_id=created_ids[node.hostname], index=index, uuid=overlay.gpu_uuid(node.hostname, index))
        for node in new_nodes
        for index in range(node.gpu_count)
    ]
    Gpu.objects.bulk_create(new_gpus, batch_size=2000)
    return len(new_nodes), len(new_gpus)


def _create_customers_and_quotas() -> None:
    fleet_gpu_milli = Gpu.objects.count() * GPU_MILLI_PER_GPU
    for profile in overlay.CUSTOMERS:
        customer, _ = Organization.objects.get_or_create(
            slug=profile.slug, defaults={"name": profile.name, "kind": Organization.Kind.CUSTOMER},
        )
        if not Quota.objects.filter(organization=customer, gpu_model__isnull=True).exists():
            quota_set(organization=customer, gpu_model=None,
                      max_gpu_milli=int(fleet_gpu_milli * profile.quota_fraction_of_fleet))
