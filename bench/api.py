"""`make bench-api`: HTTP load against gunicorn on PostgreSQL, then an independent invariant check.

It creates a fresh PostgreSQL database with the trace fleet and one API user per customer, and
starts gunicorn with several sync workers. A warm-up of spread requests books capacity first.
For each mix (the authenticated no-op floor, spread, contended) the planner statistics are
refreshed and a separate client process (``bench.api_client``) sends requests for a fixed time.
Then two more gunicorns, whose workers leave parts of the decision out (``bench/ceilings.py``),
serve spread requests: *record_only* shortlists no node and records each request as rejected, the
ceiling of any decision made per request in a web worker; *validate_only* runs no statement after
authentication, the ceiling of the web tier alone. Finally plain SQL, written apart from the
product's own queries, checks that no GPU, node or quota was overrun, that every 201 or 202 has an
allocation and that no 409 has one. The validate-only mix writes nothing, so it is not checked.

    python -m bench.api --output docs/benchmarks.md
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from bench.ceilings import CEILINGS
from bench.invariants import check_invariants
from bench.report import machine_description, write_section

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DATABASE = "marketplace_bench_api"
PORT = 8211
WORKERS = max(2, os.cpu_count() or 2)
"""One gunicorn worker per core, as docs/deploy.md runs the web tier. With every core busy, more
workers only add switching: on 2 cores, 4 workers gave 8 % fewer decisions per second than 2, and
6 workers 20 % fewer."""
CLIENTS = 16
SECONDS = 20
WARMUP_SECONDS = 10
"""Spread requests sent before measuring, so the mixes run on a marketplace that already has bookings."""



def manage(env: dict, *args: str) -> str:
    """Run ``manage.py`` with ``args`` in ``env``; return its standard output."""
    completed = subprocess.run([sys.executable, "manage.py", *args], cwd=REPO_ROOT, env=env, check=True,
                               capture_output=True, text=True)
    return completed.stdout


def prepare_database(admin_url: str, database: str = DATABASE) -> str:
    """Create ``database`` afresh on the server of ``admin_url`` (dropping connections to an old one); return its URL."""
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {database}")
    return admin_url.rsplit("/", 1)[0] + f"/{database}"


def create_tokens(env: dict) -> list[str]:
    script = (
        "import json\n"
        "from django.contrib.auth import get_user_model\n"
        "from rest_framework.authtoken.models import Token\n"
        "from marketplace.models import Membership, Organization\n"
        "tokens = []\n"
        "for org in Organization.objects.filter(kind='customer').order_by('slug'):\n"
        "    user, _ = get_user_model().objects.get_or_create(username='bench-' + org.slug)\n"
        "    Membership.objects.get_or_create(user=user, defaults={'organization': org})\n"
        "    tokens.append(Token.objects.get_or_create(user=user)[0].key)\n"
        "print(json.dumps(tokens))\n"
    )
    return json.loads(manage(env, "shell", "-c", script).strip().splitlines()[-1])


def wait_until_ready(url: str, token: str) -> None:
    request = urllib.request.Request(f"{url}/api/v1/ping/", headers={"Authorization": f"Token {token}"})
    for _ in range(100):
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not respond on {url} within 20 s; check its output above")


@contextmanager
def gunicorn(env: dict, url: str, token: str, *options: str) -> Iterator[None]:
    """Run gunicorn with ``WORKERS`` sync workers on ``PORT`` (and ``options``) until the block ends."""
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "marketplace.wsgi", "--workers", str(WORKERS), "--bind",
         f"127.0.0.1:{PORT}", "--log-level", "warning", *options],
        cwd=REPO_ROOT, env=env,
    )
    try:
        wait_until_ready(url, token)
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)


def refresh_statistics(database_url: str) -> None:
    """Run ANALYZE, as autovacuum does on a running marketplace once a tenth of a table has changed.

    The mixes change more rows in 20 s than autovacuum's one-minute cycle catches. Without it,
    PostgreSQL plans the usage queries with the statistics of empty booking tables (sequential
    scans), and they stay slow while the tables grow: measured, PostgreSQL spent 6.3 ms of CPU
    per contended request instead of 3.1 ms.
    """
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("ANALYZE")


def run_mix(url: str, tokens_file: Path, mix: str, workdir: Path, seconds: float = SECONDS) -> dict:
    output = workdir / f"{mix}.json"
    subprocess.run([sys.executable, "-m", "bench.api_client", "--url", url, "--tokens", str(tokens_file),
                    "--mix", mix, "--seconds", str(seconds), "--clients", str(CLIENTS), "--output", str(output)],
                   cwd=REPO_ROOT, check=True)
    data = json.loads(output.read_text())
    records = data["records"]
    latencies = sorted(record["ms"] for record in records)
    statuses: dict[str, int] = {}
    for record in records:
        statuses[str(record["status"])] = statuses.get(str(record["status"]), 0) + 1
    decisions = sum(statuses.get(code, 0) for code in ("201", "202", "409"))
    answered = decisions if mix != "floor" else statuses.get("200", 0)
    summary = {
        "mix": mix, "requests": len(records), "statuses": statuses,
        "per_second": round(answered / data["seconds"], 1),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 1) if latencies else None,
        "placed_ids": [r["id"] for r in records if r["status"] in (201, 202) and r.get("id")],
        "rejected_ids": [r["id"] for r in records if r["status"] == 409 and r.get("id")],
    }
    print(f"{mix}: {summary['requests']} requests, {summary['per_second']}/s, p50 {summary['p50_ms']} ms, "
          f"p99 {summary['p99_ms']} ms, statuses {statuses}", file=sys.stderr)
    return summary


def render(results: dict) -> str:
    rows = "\n".join(
        f"| {m['mix']} | {m['requests']} | {m['per_second']} | {m['p50_ms']} | {m['p99_ms']} | "
        f"`{json.dumps(m['statuses'])}` |"
        for m in (*results["mixes"], *results["ceilings"])
    )
    violations = "\n".join(f"| {name} | {count} |" for name, count in results["violations"].items())
    return f"""## Reservation API under load

Measured by `make bench-api`, which runs

    python -m bench.api --output docs/benchmarks.md

on {results['measured_at']}, on {results['machine']}. gunicorn runs {WORKERS} sync workers, with
PostgreSQL on the same machine and the trace fleet (1,213 nodes). {CLIENTS} concurrent clients
send requests from a second process for {SECONDS} s per mix. The sync workers close each
connection after its response, so every request opens one. First, {WARMUP_SECONDS} s of spread
requests, not counted, book capacity ({results['warmup_placed']} reservations placed), so the mixes
run on a marketplace that already has bookings. Before each mix the bench runs `ANALYZE`, as
autovacuum does on a running system once a tenth of a table has changed. Within the bench's
minute autovacuum would not, so PostgreSQL would plan with the statistics of empty booking tables.
Each mix uses its own `external_ref` values. *floor* is an authenticated no-op
POST (`/api/v1/ping/`), the stack's own cost; *spread* asks for trace-like shapes over random
models and windows in the next week; *contended* sends 80 % of requests after the scarcest model
(A10, two GPUs in the fleet) in one window. Rates count decisions (201, 202 or 409 answers), or
200 answers for the floor.

| mix | requests | per second | p50 (ms) | p99 (ms) | statuses |
|---|---:|---:|---:|---:|---|
{rows}

Decisions per second over spread and contended: {results['decisions_per_second']}; floor ratio
(decisions per second / floor requests per second): {results['floor_ratio']}; p99 over both
mixes: {results['p99_ms']} ms. Targets on 2-core machines: at least 300 decisions per second, at
least half the floor's throughput, p99 under 150 ms, zero violations.

The two ceiling mixes ran afterwards, each on its own gunicorn whose workers leave part of the
decision out (`bench/ceilings.py`), and are not counted in the decisions per second. Both answer
spread requests with a 409 without alternatives. *record_only* shortlists no node. It runs the same
authentication, validation, admission context, capacity ledger update and quota check, then records
the rejected reservation with its event, workload and decision rows. That is the ceiling of any decision made
per request in a web worker: ratio {results['ceiling_ratios']['record_only']} to the floor.
*validate_only* runs no statement after authentication: it parses and validates the body and
returns the 409 body of an unsaved reservation. That is the ceiling of the web tier alone, which
a design that decides in another process would still pay: ratio
{results['ceiling_ratios']['validate_only']}.

Invariants checked afterwards with plain SQL over the tables:

| check | violations |
|---|---:|
{violations}
"""


def postgres_bench_arguments(description: str) -> argparse.Namespace:
    """Parse ``--output`` and ``--admin-database-url``, the options of a bench that creates its own databases."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--output", type=Path, help="Markdown file whose section to write.")
    parser.add_argument("--admin-database-url", default=os.environ.get("BENCH_ADMIN_DATABASE_URL", DEFAULT_ADMIN_URL),
                        help="PostgreSQL URL with the right to create databases.")
    return parser.parse_args()


def main() -> None:
    args = postgres_bench_arguments(__doc__.splitlines()[0])

    database_url = prepare_database(args.admin_database_url)
    # Plain HTTP on 127.0.0.1, so no redirect to HTTPS, as under make up.
    env = dict(os.environ, DATABASE_URL=database_url, REDIS_URL="", DEBUG="false", SECRET_KEY="bench-only-secret",
               SECURE_SSL_REDIRECT="false",
               ALLOWED_HOSTS="127.0.0.1", DB_CONN_MAX_AGE="600", APP_LOG_LEVEL="WARNING", LOG_LEVEL="WARNING")
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "import_trace")
    tokens = create_tokens(env)
    url = f"http://127.0.0.1:{PORT}"

    with tempfile.TemporaryDirectory(prefix="marketplace-bench-api-") as tmp:
        workdir = Path(tmp)
        tokens_file = workdir / "tokens.json"
        tokens_file.write_text(json.dumps(tokens))
        with gunicorn(env, url, tokens[0]):
            warmup = run_mix(url, tokens_file, "warmup", workdir, seconds=WARMUP_SECONDS)
            mixes = []
            for mix in ("floor", "spread", "contended"):
                refresh_statistics(database_url)
                mixes.append(run_mix(url, tokens_file, mix, workdir))
        ceilings = []
        for ceiling in CEILINGS:
            with gunicorn(dict(env, BENCH_CEILING=ceiling), url, tokens[0], "--config", "bench/ceilings.py"):
                refresh_statistics(database_url)
                ceilings.append(run_mix(url, tokens_file, ceiling, workdir))

    floor, decided = mixes[0], mixes[1:]
    record_only = next(m for m in ceilings if m["mix"] == "record_only")
    placed = [i for m in (warmup, *decided, record_only) for i in m["placed_ids"]]
    rejected = [i for m in (warmup, *decided, record_only) for i in m["rejected_ids"]]
    decisions_per_second = round(sum(m["per_second"] for m in decided) / len(decided), 1)
    results = {
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
        "mixes": mixes,
        "ceilings": ceilings,
        "ceiling_ratios": {m["mix"]: round(m["per_second"] / floor["per_second"], 3) if floor["per_second"] else None
                           for m in ceilings},
        "warmup_placed": len(warmup["placed_ids"]),
        "decisions_per_second": decisions_per_second,
        "floor_ratio": round(decisions_per_second / floor["per_second"], 3) if floor["per_second"] else None,
        "p99_ms": max(m["p99_ms"] or 0 for m in decided),
        "violations": check_invariants(database_url, placed, rejected),
    }
    if args.output:
        write_section(args.output, "api", render(results))
    print(json.dumps({
        "decisions_per_second": results["decisions_per_second"], "p99_ms": results["p99_ms"],
        "floor_ratio": results["floor_ratio"], "violations": sum(results["violations"].values()),
        "ceiling_ratios": results["ceiling_ratios"],
    }))


if __name__ == "__main__":
    main()
