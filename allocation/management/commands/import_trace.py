"""``python manage.py import_trace``: create the fleet, providers and customers from the trace."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from allocation.trace import NODES_CSV
from allocation.trace.csv_reader import TraceFormatError
from allocation.trace.importer import trace_import


class Command(BaseCommand):
    help = (
        "Create GPU nodes from the Alibaba trace's node list, with a deterministic overlay of providers, "
        "regions, prices and customer organizations with quotas. Running it again changes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("--nodes", type=Path, default=NODES_CSV, help="Node list CSV (default: the bundled trace).")
        parser.add_argument("--replicas", type=int, default=1,
                            help="Copies of every node to create, for scaling benchmarks (default: 1).")

    def handle(self, *args, nodes: Path, replicas: int, **options):
        if replicas < 1:
            raise CommandError(f"--replicas is {replicas}; use 1 or more.")
        try:
            summary = trace_import(nodes_path=nodes, replicas=replicas)
        except (TraceFormatError, ValueError) as error:
            raise CommandError(f"Nothing was imported. {error}") from error
        self.stdout.write(
            f"Fleet: {summary.nodes_total} nodes, {summary.gpus_total} GPUs "
            f"({summary.nodes_created} nodes and {summary.gpus_created} GPUs created now); "
            f"{summary.providers} providers, {summary.customers} customers."
        )
