"""`make bench-writes`: PostgreSQL's CPU per recorded reservation, one per transaction or in batches.

Every reservation the API places is written by ``allocation_reservation_write`` in a transaction
of its own. An allocator that decides requests together could write them in one transaction.
This measures what that saves, on the writes alone:

1. A database of its own gets the trace fleet, then ``WARMUP`` spread requests through
   ``reservation_create`` in this process, so the marketplace has bookings.
2. Two copies of it are made. On the original, ``CAPTURED`` more spread requests run, and the
   payload of each writer call is recorded.
3. The copies replay those payloads in the same order, so each write finds the state it was
   planned on: one copy one payload per transaction, the other ``BATCH`` per transaction in
   one statement. The figure is the PostgreSQL backend's CPU time from ``/proc`` per
   reservation, so PostgreSQL must run on this machine.

    python -m bench.batched_writes --output docs/benchmarks.md
"""

import json
import os
import random
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg

from bench.api import postgres_bench_arguments
from bench.api_client import reservation_body
from bench.report import machine_description, write_section

DATABASE = "marketplace_bench_writes"
WARMUP = 1500
CAPTURED = 400
BATCH = 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU seconds of process ``pid`` (a PostgreSQL backend on this machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def recreate(admin_url: str, name: str, template: str | None = None) -> str:
    """Drop database ``name`` if it exists, create it (from ``template`` if given) and return its URL."""
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def place_spread_requests(count: int, mix: str, rng: random.Random) -> None:
    """Send ``count`` spread requests, as ``bench.api_client`` draws them, through ``reservation_create``."""
    from allocation.api.serializers import ReservationCreateSerializer
    from allocation.services import reservation_create
    from marketplace.models import Organization

    customers = list(Organization.objects.filter(kind=Organization.Kind.CUSTOMER).order_by("id"))
    base = (datetime.now(timezone.utc) + timedelta(days=1)).replace(second=0, microsecond=0)
    for serial in range(count):
        body = {**reservation_body(rng, "spread", base, serial), "external_ref": f"bench-writes-{mix}-{serial}"}
        serializer = ReservationCreateSerializer(data=body)
        serializer.is_valid(raise_exception=True)
        reservation_create(customer=rng.choice(customers), spec=serializer.to_spec())


def captured_payloads(count: int, rng: random.Random) -> list[dict]:
    """Run ``count`` spread requests and return the payload of every writer call, in order."""
    import allocation.express as express

    payloads: list[dict] = []
    write = express._write

    def recorded(payload: dict) -> dict:
        payloads.append(json.loads(json.dumps(payload)))
        return write(payload)

    express._write = recorded
    try:
        place_spread_requests(count, "captured", rng)
    finally:
        express._write = write
    return payloads


def replay(database_url: str, payloads: list[dict], batch: int) -> dict:
    """Write ``payloads`` in order, ``batch`` per transaction; return CPU ms per reservation and how many were placed."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        pid = connection.execute("SELECT pg_backend_pid()").fetchone()[0]
        started = backend_cpu_seconds(pid)
        placed = 0
        for first in range(0, len(payloads), batch):
            chunk = payloads[first:first + batch]
            rows = connection.execute(
                "SELECT allocation_reservation_write(payload) FROM jsonb_array_elements(%s::jsonb) AS payload",
                [json.dumps(chunk)],
            ).fetchall()
            placed += sum(1 for (written,) in rows if written.get("placed") is not None)
        cpu_seconds = backend_cpu_seconds(pid) - started
    return {"batch": batch, "cpu_ms_per_reservation": round(cpu_seconds / len(payloads) * 1000, 3), "placed": placed}


def render(results: dict) -> str:
    rows = "\n".join(f"| {r['batch']} | {r['cpu_ms_per_reservation']} | {r['placed']} |" for r in results["replays"])
    return f"""## Writing reservations one by one or in batches

Measured by `make bench-writes`, which runs

    python -m bench.batched_writes --output docs/benchmarks.md

on {results['measured_at']}, on {results['machine']}. The trace fleet first took {WARMUP} spread
requests through the reservation service. Then the writer payloads of {CAPTURED} more ({results['captured']}
writes; {results['captured_placed']} placements, the rest rejections) were recorded. Two copies of the database, taken
before those requests, replayed them in the same order: one per transaction, as each API request
writes today, and {BATCH} per transaction in one statement, as an allocator that decides requests
together could. CPU is the PostgreSQL backend's, from `/proc`, per reservation written:

| reservations per transaction | PostgreSQL CPU per reservation (ms) | placed |
|---:|---:|---:|
{rows}

Writing in batches saves {results['saved_ms']} ms of PostgreSQL CPU per reservation. A batch leaves
out a commit, a round trip and a statement start per reservation; the rows, triggers and index
entries of each reservation remain.
"""


def main() -> None:
    args = postgres_bench_arguments(__doc__.splitlines()[0])

    database_url = recreate(args.admin_database_url, DATABASE)
    os.environ.update(DATABASE_URL=database_url, REDIS_URL="", SECRET_KEY=os.environ.get("SECRET_KEY", "bench"),
                      APP_LOG_LEVEL="WARNING", LOG_LEVEL="WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", "--noinput", verbosity=0)
    call_command("import_trace", verbosity=0)
    rng = random.Random("bench-writes")
    place_spread_requests(WARMUP, "warmup", rng)
    with psycopg.connect(database_url, autocommit=True) as analyze:
        analyze.execute("ANALYZE")

    copies = [f"{DATABASE}_one", f"{DATABASE}_batched"]
    connection.close()  # PostgreSQL copies a template database only while nothing is connected to it.
    copy_urls = [recreate(args.admin_database_url, name, template=DATABASE) for name in copies]
    try:
        payloads = captured_payloads(CAPTURED, rng)
        connection.close()
        replays = [replay(url, payloads, batch) for url, batch in zip(copy_urls, (1, BATCH))]
    finally:
        for name in copies:
            drop(args.admin_database_url, name)

    captured_placed = sum(1 for payload in payloads if "placements" in payload)
    if any(result["placed"] != captured_placed for result in replays):
        print(f"The replays placed {[r['placed'] for r in replays]} reservations, not the {captured_placed} "
              "captured: a copy did not start from the captured state. Run the bench alone.", file=sys.stderr)
        sys.exit(1)
    results = {
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
        "captured": len(payloads),
        "captured_placed": captured_placed,
        "replays": replays,
        "saved_ms": round(replays[0]["cpu_ms_per_reservation"] - replays[1]["cpu_ms_per_reservation"], 3),
    }
    if args.output:
        write_section(args.output, "writes", render(results))
    print(json.dumps({"one_per_transaction_ms": replays[0]["cpu_ms_per_reservation"],
                      "batched_ms": replays[1]["cpu_ms_per_reservation"], "batch": BATCH}))


if __name__ == "__main__":
    main()
