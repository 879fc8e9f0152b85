"""`make bench-writes`: PostgreSQL's CPU per recorded reservation, one per transaction or in batches.

Every reservation the API places is written by ``allocation_reservation_write`` in a transaction
of its own. An allocator that decides requests together could write them in one transaction.
This measures what that saves, on the writes alone:

1. A database of its own gets the trace fleet, then ``WARMUP`` spread requests through
   ``reservation_create`` in this process, so the marketplace has bookings.
2. A copy of it is kept. On the original, ``CAPTURED`` more spread requests run, and the
   payload of each writer call is recorded.
3. Fresh copies of the kept one replay those payloads in the same order, so each write finds
   the state it was planned on: one copy one payload per transaction, the other ``BATCH`` per
   transaction in one statement. The figure is the PostgreSQL backend's CPU time from ``/proc`` per
   reservation, so PostgreSQL must run on this machine.
4. Two more copies replay them with ``FEWEST_ROWS_WRITER`` instead of the product's writer, one
   per transaction and ``BATCH`` per transaction. It writes only the rows the product's
   guarantees cannot do without, with every trigger that checks them: the reservation, created
   in its decided state, one event, the allocation and its shares. That is a lower bound on what
   any design that records each decision in PostgreSQL pays, whatever decides it.

Each configuration runs ``ROUNDS`` times, alternating, and the median is reported: this shared
machine's speed varies by a tenth or more between runs.

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
CAPTURED = 800
BATCH = 20
ROUNDS = 3
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

FEWEST_ROWS_WRITER = """
CREATE FUNCTION bench_fewest_rows_write(p jsonb) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    r jsonb := p->'reservation';
    written_at timestamptz := (p->>'written_at')::timestamptz;
    chosen jsonb := p->'placements'->0;
    decided_status text := COALESCE(chosen->>'status', 'rejected');
    reason text := CASE WHEN chosen IS NULL THEN p->'rejection'->>'reason_code' ELSE '' END;
    new_reservation_id bigint;
    new_allocation_id bigint;
BEGIN
    INSERT INTO allocation_reservation (
        customer_id, created_by_id, external_ref, gpu_count, gpu_milli_per_gpu, region_id, cpu_millicores,
        memory_mib, start_at, end_at, max_price_per_gpu_hour, currency, status, reason_code, reason_detail,
        hold_expires_at, do_not_migrate, created_at, updated_at)
    VALUES (
        (r->>'customer_id')::bigint, (p->>'actor_id')::integer, r->>'external_ref', (r->>'gpu_count')::smallint,
        (r->>'gpu_milli_per_gpu')::smallint, (r->>'region_id')::bigint, (r->>'cpu_millicores')::integer,
        (r->>'memory_mib')::bigint, (r->>'start_at')::timestamptz, (r->>'end_at')::timestamptz,
        (r->>'max_price_per_gpu_hour')::numeric, r->>'currency', decided_status, reason, '',
        (chosen->>'hold_expires_at')::timestamptz, (r->>'do_not_migrate')::boolean, written_at, written_at)
    RETURNING id INTO new_reservation_id;
    INSERT INTO allocation_reservationevent (reservation_id, actor_id, at, from_status, to_status, reason_code, note)
    VALUES (new_reservation_id, (p->>'actor_id')::integer, written_at, '', decided_status, reason, '');
    IF chosen IS NULL THEN
        RETURN jsonb_build_object('placed', NULL);
    END IF;

    INSERT INTO allocation_allocation (
        reservation_id, customer_id, node_id, gpu_model_id, start_at, end_at, cpu_millicores, memory_mib,
        gpu_milli_total, borrowed_gpu_milli, billed_gpu_milli, price_per_gpu_hour, currency, created_at,
        released_at)
    SELECT new_reservation_id, (r->>'customer_id')::bigint, n.id, n.gpu_model_id, (r->>'start_at')::timestamptz,
           (r->>'end_at')::timestamptz, (r->>'cpu_millicores')::integer, (r->>'memory_mib')::bigint,
           (p->>'gpu_milli_total')::integer, (p->>'borrowed_gpu_milli')::integer,
           (chosen->>'billed_gpu_milli')::integer, (chosen->>'price_per_gpu_hour')::numeric, n.currency,
           written_at, NULL
    FROM marketplace_node n WHERE n.id = (chosen->>'node_id')::bigint
    RETURNING id INTO new_allocation_id;
    INSERT INTO allocation_gpushare (allocation_id, gpu_id, gpu_milli, start_at, end_at)
    SELECT new_allocation_id, (share->>0)::bigint, (share->>1)::smallint, (r->>'start_at')::timestamptz,
           (r->>'end_at')::timestamptz
    FROM jsonb_array_elements(chosen->'gpu_shares') AS share;
    RETURN jsonb_build_object('placed', 0);
END;
$$;
DROP TRIGGER allocation_reservation_status_guard ON allocation_reservation;
"""
"""The lower-bound writer, installed on its copies only. It takes the first ranked placement, which
the replay's state always admits. It creates the reservation in its decided state, not pending, so
the status guard is dropped on those copies. The guard costs about 0.02 ms per reservation
(``pg_stat_user_functions`` on a replay)."""


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


def replay(database_url: str, payloads: list[dict], batch: int, writer: str = "allocation_reservation_write") -> dict:
    """Write ``payloads`` in order with ``writer``, ``batch`` per transaction; return CPU ms per reservation and placements."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        if writer != "allocation_reservation_write":
            connection.execute(FEWEST_ROWS_WRITER)
        pid = connection.execute("SELECT pg_backend_pid()").fetchone()[0]
        started = backend_cpu_seconds(pid)
        placed = 0
        for first in range(0, len(payloads), batch):
            chunk = payloads[first:first + batch]
            rows = connection.execute(
                f"SELECT {writer}(payload) FROM jsonb_array_elements(%s::jsonb) AS payload",
                [json.dumps(chunk)],
            ).fetchall()
            placed += sum(1 for (written,) in rows if written.get("placed") is not None)
        cpu_seconds = backend_cpu_seconds(pid) - started
    return {"writer": writer, "batch": batch, "cpu_ms_per_reservation": round(cpu_seconds / len(payloads) * 1000, 3),
            "placed": placed}


CONFIGURATIONS = [
    ("allocation_reservation_write", 1), ("allocation_reservation_write", BATCH),
    ("bench_fewest_rows_write", 1), ("bench_fewest_rows_write", BATCH),
]
ROWS_WRITTEN = {
    "allocation_reservation_write": "the product's",
    "bench_fewest_rows_write": "fewest",
}


def render(results: dict) -> str:
    rows = "\n".join(
        f"| {ROWS_WRITTEN[r['writer']]} | {r['batch']} | {r['cpu_ms_per_reservation']} | "
        f"{r['lowest_ms']}-{r['highest_ms']} | {r['placed']} |"
        for r in results["replays"]
    )
    return f"""## Writing reservations one by one or in batches

Measured by `make bench-writes`, which runs

    python -m bench.batched_writes --output docs/benchmarks.md

on {results['measured_at']}, on {results['machine']}. The trace fleet first took {WARMUP} spread
requests through the reservation service. Then the writer payloads of {CAPTURED} more ({results['captured']}
writes; {results['captured_placed']} placements, the rest rejections) were recorded. Copies of the database, taken
before those requests, replayed them in the same order: one per transaction, as each API request
writes today, and {BATCH} per transaction in one statement, as an allocator that decides requests
together could. CPU is the PostgreSQL backend's, from `/proc`, per reservation written; the median
of {ROUNDS} rounds, each on fresh copies, with the range:

| rows | reservations per transaction | PostgreSQL CPU per reservation (ms) | range (ms) | placed |
|---|---:|---:|---:|---:|
{rows}

*The product's* rows are what `allocation_reservation_write` writes: the reservation created
pending and then updated, its models, two events, its workload, and for a placement the allocation,
its shares and a decision row. *Fewest* is a lower bound for any design that records each
decision in PostgreSQL: the reservation created in its decided state, one event, the allocation and
its shares. The triggers that check capacity and quota and fill the change feed run for both.

Writing in batches saves {results['saved_ms']} ms of PostgreSQL CPU per reservation. A batch leaves
out a commit, a round trip and a statement start per reservation; the rows, triggers and index
entries of each reservation remain. Even the fewest rows in batches cost
{results['fewest_batched_ms']} ms per reservation.
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

    before_capture, replayed = f"{DATABASE}_start", f"{DATABASE}_replay"
    connection.close()  # PostgreSQL copies a template database only while nothing is connected to it.
    recreate(args.admin_database_url, before_capture, template=DATABASE)
    measured: dict[tuple[str, int], list[dict]] = {configuration: [] for configuration in CONFIGURATIONS}
    try:
        payloads = captured_payloads(CAPTURED, rng)
        connection.close()
        for _round in range(ROUNDS):
            for writer, batch in CONFIGURATIONS:
                url = recreate(args.admin_database_url, replayed, template=before_capture)
                measured[(writer, batch)].append(replay(url, payloads, batch, writer))
                drop(args.admin_database_url, replayed)
    finally:
        for name in (before_capture, replayed):
            drop(args.admin_database_url, name)

    captured_placed = sum(1 for payload in payloads if "placements" in payload)
    placed_counts = {result["placed"] for runs in measured.values() for result in runs}
    if placed_counts != {captured_placed}:
        print(f"The replays placed {sorted(placed_counts)} reservations, not the {captured_placed} "
              "captured: a copy did not start from the captured state. Run the bench alone.", file=sys.stderr)
        sys.exit(1)
    replays = [_median_of(runs) for runs in measured.values()]
    by_configuration = {(r["writer"], r["batch"]): r["cpu_ms_per_reservation"] for r in replays}
    results = {
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
        "captured": len(payloads),
        "captured_placed": captured_placed,
        "replays": replays,
        "saved_ms": round(by_configuration[CONFIGURATIONS[0]] - by_configuration[CONFIGURATIONS[1]], 3),
        "fewest_batched_ms": by_configuration[CONFIGURATIONS[3]],
    }
    if args.output:
        write_section(args.output, "writes", render(results))
    print(json.dumps({"one_per_transaction_ms": by_configuration[CONFIGURATIONS[0]],
                      "batched_ms": by_configuration[CONFIGURATIONS[1]],
                      "fewest_rows_ms": by_configuration[CONFIGURATIONS[2]],
                      "fewest_rows_batched_ms": results["fewest_batched_ms"], "batch": BATCH}))


def _median_of(runs: list[dict]) -> dict:
    """Return the run with the median CPU of ``runs`` (one configuration's rounds), with the lowest and highest."""
    ordered = sorted(runs, key=lambda run: run["cpu_ms_per_reservation"])
    return {**ordered[len(ordered) // 2], "lowest_ms": ordered[0]["cpu_ms_per_reservation"],
            "highest_ms": ordered[-1]["cpu_ms_per_reservation"]}


if __name__ == "__main__":
    main()
