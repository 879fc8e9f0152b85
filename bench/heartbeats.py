"""Heartbeat ingestion benchmark: the trace fleet's agents reporting, health evaluation included, on PostgreSQL.

In a database of its own (``bench_heartbeats``, dropped and created again) it imports the 1,213
trace nodes and registers every node's GPUs as its agent would. Then it sends heartbeats, each
one snapshot of all of a node's GPUs with realistic readings (a few hot GPUs, ECC errors and
XID events among them), three ways:

- ``api``: ``POST /api/v1/agent/heartbeats/`` through Django's test client in this process: node
  key authentication, validation, storage and health, without the network or a web server;
- ``service``: ``providers.telemetry.heartbeats_ingest`` for one node at a time, the work behind
  each request;
- ``batched``: the same service for 100 nodes per call;
- ``queued``: the API with ``HEARTBEAT_QUEUE`` on (validate, append to the Redis list, 202), then
  ``providers.heartbeat_queue.heartbeats_drain`` storing the list in batches of 500: the product's
  path at scale, and the ``heartbeats_per_second`` of the final JSON line.

Each runs for the whole fleet several times over. The fleet sends one heartbeat per node every
10 s, about 121 per second; ``headroom`` is the queued ingestion rate over that. Needs PostgreSQL and
Redis on 127.0.0.1 (or ``REDIS_URL``). Run with ``make bench-heartbeats``.
"""

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import psycopg

DATABASE = "bench_heartbeats"
DEFAULT_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
INTERVAL_SECONDS = 10
ROUNDS = 3
BATCH = 100
QUEUE_BATCH = 500


def prepare(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        connection.execute(f"CREATE DATABASE {DATABASE}")
    os.environ.update(DATABASE_URL=admin_url.rsplit("/", 1)[0] + f"/{DATABASE}",
                      REDIS_URL=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
                      SECRET_KEY=os.environ.get("SECRET_KEY", "bench"), APP_LOG_LEVEL="WARNING",
                      LOG_LEVEL="WARNING", ALLOWED_HOSTS="testserver")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)
    call_command("import_trace", verbosity=0)


def snapshot(uuids: list[str], generator: random.Random) -> dict:
    from django.utils import timezone

    gpus = []
    for uuid in uuids:
        roll = generator.random()
        gpus.append({
            "uuid": f"GPU-{uuid}", "temperature_c": 90.0 if roll < 0.01 else generator.uniform(35, 80),
            "utilization_pct": generator.uniform(0, 100), "memory_used_mib": generator.randint(0, 80000),
            "power_w": generator.uniform(60, 400), "ecc_uncorrected": 1 if roll > 0.998 else 0,
            "xid_events": [79] if 0.5 < roll < 0.5005 else [],
        })
    return {"at": timezone.now().isoformat(), "gpus": gpus}


def measure() -> dict:
    from django.utils.dateparse import parse_datetime
    from rest_framework.test import APIClient

    from marketplace.models import GpuReading, Node
    from providers.telemetry import heartbeats_ingest, node_register
    from scheduler.agents import node_credential_issue

    generator = random.Random(7)
    nodes = list(Node.objects.order_by("id"))
    uuids = {node.pk: [str(uuid) for uuid in node.gpus.order_by("index").values_list("uuid", flat=True)]
             for node in nodes}
    clients = {}
    for node in nodes:
        key = node_credential_issue(node=node)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Node {key}")
        clients[node.pk] = client
        node_register(node=node, agent_version="bench", inventory={"gpus": [
            {"index": index, "uuid": uuid, "model": "bench", "memory_mib": 81920}
            for index, uuid in enumerate(uuids[node.pk])]})

    def parsed(body: dict) -> dict:
        return {"at": parse_datetime(body["at"]), "gpus": body["gpus"]}

    from django.conf import settings

    results = {}
    settings.MARKETPLACE = {**settings.MARKETPLACE, "HEARTBEAT_QUEUE": False}
    started = time.perf_counter()
    count = 0
    for _ in range(ROUNDS):
        for node in nodes:
            response = clients[node.pk].post("/api/v1/agent/heartbeats/",
                                             {"snapshots": [snapshot(uuids[node.pk], generator)]}, format="json")
            if response.status_code != 200:
                raise SystemExit(f"heartbeat of {node.hostname} failed: {response.status_code} {response.content[:300]}")
            count += 1
    results["api"] = count / (time.perf_counter() - started)

    started, count = time.perf_counter(), 0
    for _ in range(ROUNDS):
        for node in nodes:
            heartbeats_ingest(heartbeats=[(node, [parsed(snapshot(uuids[node.pk], generator))])])
            count += 1
    results["service"] = count / (time.perf_counter() - started)

    from providers.heartbeat_queue import QUEUE_KEY, _redis, heartbeats_drain

    _redis().delete(QUEUE_KEY)
    settings.MARKETPLACE = {**settings.MARKETPLACE, "HEARTBEAT_QUEUE": True}
    started, count = time.perf_counter(), 0
    for _ in range(ROUNDS):
        for node in nodes:
            response = clients[node.pk].post("/api/v1/agent/heartbeats/",
                                             {"snapshots": [snapshot(uuids[node.pk], generator)]}, format="json")
            if response.status_code != 202:
                raise SystemExit(f"queued heartbeat failed: {response.status_code} {response.content[:300]}")
            count += 1
    results["api_queued"] = count / (time.perf_counter() - started)
    started = time.perf_counter()
    drained = heartbeats_drain().heartbeats
    results["queue_ingest"] = drained / (time.perf_counter() - started)
    settings.MARKETPLACE = {**settings.MARKETPLACE, "HEARTBEAT_QUEUE": False}

    started, count = time.perf_counter(), 0
    for _ in range(ROUNDS):
        for first in range(0, len(nodes), BATCH):
            group = nodes[first:first + BATCH]
            heartbeats_ingest(heartbeats=[(node, [parsed(snapshot(uuids[node.pk], generator))]) for node in group])
            count += len(group)
    results["batched"] = count / (time.perf_counter() - started)

    fleet_rate = len(nodes) / INTERVAL_SECONDS
    gpus = sum(len(values) for values in uuids.values())
    return {
        "nodes": len(nodes), "gpus": gpus, "fleet_heartbeats_per_second": round(fleet_rate, 1),
        "api_heartbeats_per_second": round(results["api"], 1),
        "service_heartbeats_per_second": round(results["service"], 1),
        "batched_heartbeats_per_second": round(results["batched"], 1),
        "api_queued_heartbeats_per_second": round(results["api_queued"], 1),
        "queue_ingest_heartbeats_per_second": round(results["queue_ingest"], 1),
        "readings_stored": GpuReading.objects.count(),
        "unhealthy_nodes": Node.objects.filter(health="unhealthy").count(),
        "degraded_nodes": Node.objects.filter(health="degraded").count(),
    }


def render(result: dict) -> str:
    from bench.report import machine_description

    headroom = lambda key: result[key] / result["fleet_heartbeats_per_second"]  # noqa: E731
    return "\n".join([
        "## Heartbeat ingestion",
        "",
        f"Command: `make bench-heartbeats` (`python -m bench.heartbeats --output docs/benchmarks.md`). "
        f"Machine: {machine_description()}; PostgreSQL on the same machine.",
        "",
        f"The {result['nodes']:,} trace nodes ({result['gpus']:,} GPUs) each send one heartbeat every "
        f"{INTERVAL_SECONDS} s: {result['fleet_heartbeats_per_second']} per second. Each heartbeat is one "
        "snapshot of all of a node's GPUs; storing its readings and evaluating every GPU's and the node's "
        f"health is included. One process, {ROUNDS} rounds over the fleet per row.",
        "",
        "| path | heartbeats/s | headroom over the fleet's rate |",
        "|---|---:|---:|",
        f"| **queued ingestion**: `providers.ingest_heartbeats` storing from the Redis list, {QUEUE_BATCH} per batch "
        f"(`HEARTBEAT_QUEUE` on) | {result['queue_ingest_heartbeats_per_second']:.0f} | "
        f"{headroom('queue_ingest_heartbeats_per_second'):.1f}x |",
        f"| API request, queued: authentication, validation, Redis append, 202 | "
        f"{result['api_queued_heartbeats_per_second']:.0f} | {headroom('api_queued_heartbeats_per_second'):.1f}x |",
        f"| API request, stored at once (without Redis, as in the demo): authentication, validation, storage, health | "
        f"{result['api_heartbeats_per_second']:.0f} | {headroom('api_heartbeats_per_second'):.1f}x |",
        f"| service, one node per call | {result['service_heartbeats_per_second']:.0f} | "
        f"{headroom('service_heartbeats_per_second'):.1f}x |",
        f"| service, {BATCH} nodes per call | {result['batched_heartbeats_per_second']:.0f} | "
        f"{headroom('batched_heartbeats_per_second'):.1f}x |",
        "",
        f"Readings stored: {result['readings_stored']:,}; nodes left unhealthy by the injected faults: "
        f"{result['unhealthy_nodes']}, degraded: {result['degraded_nodes']}. The API rows run in one process "
        "through Django's test client; gunicorn runs one such process per core, and the queued ingestion runs "
        "in Celery workers beside them. A commit costs about a millisecond on this machine, so storing each "
        "heartbeat in its own transaction tops out near the fleet's rate; batching is what gives the headroom.",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="Markdown file whose heartbeat section is replaced")
    parser.add_argument("--admin-database-url", default=os.environ.get("BENCH_ADMIN_DATABASE_URL", DEFAULT_ADMIN_URL),
                        help="PostgreSQL URL with the right to create databases.")
    arguments = parser.parse_args(argv)
    prepare(arguments.admin_database_url)
    result = measure()
    if arguments.output:
        from bench.report import write_section

        write_section(arguments.output, "heartbeats", render(result))
    fleet = result["fleet_heartbeats_per_second"]
    ingest = result["queue_ingest_heartbeats_per_second"]
    print(json.dumps({**result, "heartbeats_per_second": ingest, "headroom": round(ingest / fleet, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
