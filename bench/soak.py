"""`make bench-soak`: mixed load against `make up` while a worker is killed and Redis and PostgreSQL restart.

It creates a fresh PostgreSQL database with the trace fleet, customers with API tokens and agent
keys, starts a private Redis server, and runs `make up` against both. Client threads
(``bench.mixed_load``) then reserve, cancel, send heartbeats and read for the whole run, while beat
runs scheduling cycles. Midway the soak

- kills one Celery worker with SIGKILL (its main process and pool; bin/respawn starts it again),
- restarts Redis, which loses everything it held (queued tasks, heartbeats, throttle counters),
- restarts the PostgreSQL server (only with --restart-postgres, because it restarts the machine's
  server for every database on it).

Afterwards the independent invariant checker (``bench.invariants``) runs on the database, and every
response a client received is compared with it. The last line is JSON with ``requests``, ``errors_5xx``
(5xx responses outside the PostgreSQL restart window), ``violations`` and ``lost_reservations``.

    python -m bench.soak --seconds 600 --output docs/benchmarks.md
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from bench.api import manage, prepare_database
from bench.invariants import check_invariants
from bench.mixed_load import Agent, LoadResult, MixedLoad
from bench.redis_server import PrivateRedis
from bench.report import machine_description, write_section

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DATABASE = "marketplace_soak"
PORT = 8230
REDIS_PORT = 6391
CUSTOMERS = 8
AGENT_NODES = 40
# When each fault happens, as a share of the run.
WORKER_KILL_AT = 0.3
REDIS_RESTART_AT = 0.5
POSTGRES_RESTART_AT = 0.7
REDIS_DOWN_SECONDS = 5
# Time the stack gets after the load to finish queued work before the check.
SETTLE_SECONDS = 20


def log(message: str) -> None:
    print(f"[soak {datetime.now(timezone.utc):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def create_clients(env: dict) -> tuple[list[str], list[Agent]]:
    """Create an API user per trace customer (the first CUSTOMERS) and agent keys for AGENT_NODES nodes."""
    script = (
        "import json\n"
        "from django.contrib.auth import get_user_model\n"
        "from rest_framework.authtoken.models import Token\n"
        "from marketplace.models import Membership, Node, Organization\n"
        "from scheduler.agents import node_credential_issue\n"
        "tokens = []\n"
        f"for org in Organization.objects.filter(kind='customer').order_by('slug')[:{CUSTOMERS}]:\n"
        "    user, _ = get_user_model().objects.get_or_create(username='soak-' + org.slug)\n"
        "    Membership.objects.get_or_create(user=user, defaults={'organization': org})\n"
        "    tokens.append(Token.objects.get_or_create(user=user)[0].key)\n"
        "agents = []\n"
        f"for node in Node.objects.order_by('id')[:{AGENT_NODES}]:\n"
        "    agents.append({'key': node_credential_issue(node=node),\n"
        "                   'gpus': [str(gpu.uuid) for gpu in node.gpus.filter(retired_at__isnull=True)]})\n"
        "print(json.dumps({'tokens': tokens, 'agents': agents}))\n"
    )
    data = json.loads(manage(env, "shell", "-c", script).strip().splitlines()[-1])
    return data["tokens"], [Agent(key=agent["key"], gpu_uuids=agent["gpus"]) for agent in data["agents"]]


def kill_worker(hostname: str) -> str:
    """SIGKILL a Celery worker's main process and pool with bin/kill-worker; return its report."""
    completed = subprocess.run([str(REPO_ROOT / "bin" / "kill-worker"), hostname], capture_output=True, text=True)
    return (completed.stdout or completed.stderr).strip()


def restart_postgres() -> tuple[float, float]:
    """Restart the local PostgreSQL cluster; return when it stopped accepting and when it was back (monotonic)."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    began = time.monotonic()
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"],
                   check=True, capture_output=True)
    return began, time.monotonic()


def wait_until_ready(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health/live/", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the stack did not respond on {url} within {seconds} s; see var/soak/stack.log")


def lost_reservations(database_url: str, result: LoadResult) -> dict[str, int]:
    """Count the responses clients received that the database contradicts (a missing or uncancelled reservation)."""
    answered = sorted(set(result.placed) | set(result.queued))
    booked_refs = [ref for ref, status in result.answered_refs.items() if status in (201, 202)]
    with psycopg.connect(database_url) as connection:
        missing = connection.execute(
            "SELECT COUNT(*) FROM unnest(%s::bigint[]) AS r(id) "
            "WHERE NOT EXISTS (SELECT 1 FROM allocation_reservation x WHERE x.id = r.id)", [answered]).fetchone()[0]
        not_cancelled = connection.execute(
            "SELECT COUNT(*) FROM allocation_reservation WHERE id = ANY(%s::bigint[]) AND status <> 'cancelled'",
            [sorted(set(result.cancelled))]).fetchone()[0]
        refs_found = connection.execute(
            "SELECT COUNT(*) FROM allocation_reservation WHERE external_ref = ANY(%s)", [booked_refs]).fetchone()[0]
    return {"missing": missing, "cancel_not_applied": not_cancelled,
            "booked_ref_mismatch": abs(len(booked_refs) - refs_found)}


def render(summary: dict) -> str:
    faults = "\n".join(f"| {name} | {when} |" for name, when in summary["faults"].items())
    statuses = ", ".join(f"{status}: {count}" for status, count in sorted(summary["statuses"].items()))
    return f"""## Soak (`make bench-soak`)

Measured {summary['measured_at']} on {summary['machine']}, `python -m bench.soak --seconds {summary['seconds']}{' --restart-postgres' if summary['restart_postgres'] else ''}`
(`make bench-soak`): `make up` (gunicorn with 2 workers, 2 Celery workers of concurrency 2 under
bin/respawn, beat) on local PostgreSQL and a private Redis, the trace fleet, {summary['threads']} client
threads of mixed load (reservations, some queued or interruptible, cancellations, heartbeats from
{AGENT_NODES} agents, reads) for {summary['seconds']} s. Clients retry a 503 or 429 after Retry-After with the
same Idempotency-Key.

| fault | seconds into the run |
|---|---|
{faults}

| figure | value |
|---|---|
| requests (retries included) | {summary['requests']} |
| requests per second | {summary['requests_per_second']} |
| reservations booked / queued / rejected / cancelled | {summary['booked']} / {summary['queued']} / {summary['rejected']} / {summary['cancelled']} |
| 5xx outside the PostgreSQL restart window | {summary['errors_5xx']} |
| 5xx inside it (each retried by its client) | {summary['errors_5xx_in_postgres_window']} |
| invariant violations | {summary['violations']} |
| lost reservations | {summary['lost_reservations']} |
| p50 / p99 latency (ms) | {summary['p50_ms']} / {summary['p99_ms']} |

Statuses: {statuses}. Violations by check: `{json.dumps(summary['violation_details'])}`.
Targets: zero 5xx apart from the PostgreSQL restart window, zero violations, zero lost reservations.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=600, help="length of the load (default 600)")
    parser.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--restart-postgres", action="store_true",
                        help="also restart the local PostgreSQL server midway (needs root and pg_ctlcluster)")
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_DATABASE_URL", DEFAULT_ADMIN_URL))
    parser.add_argument("--output", type=Path, help="Markdown file whose soak section is replaced")
    args = parser.parse_args()

    pid_file = REPO_ROOT / "var" / "up.pid"
    if pid_file.exists() and pid_file.read_text().strip() and Path(f"/proc/{pid_file.read_text().strip()}").exists():
        sys.exit("A stack started by `make up` is running; stop it with `make down` first (the soak starts its own).")
    workdir = REPO_ROOT / "var" / "soak"
    workdir.mkdir(parents=True, exist_ok=True)

    log(f"Preparing database {DATABASE} and Redis on port {REDIS_PORT}")
    database_url = prepare_database(args.admin_url, DATABASE)
    redis = PrivateRedis(workdir / "redis.log", port=REDIS_PORT)
    redis.start()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
           "SECRET_KEY": os.environ.get("SECRET_KEY", "soak-secret-key-" + "x" * 40), "LOG_FORMAT": "text"}
    manage(env, "migrate", "--noinput")
    manage(env, "import_trace")
    tokens, agents = create_clients(env)

    url = f"http://127.0.0.1:{PORT}"
    log(f"Starting `make up` on {url}; its output goes to {workdir / 'stack.log'}")
    stack = subprocess.Popen(["make", "up", f"PORT={PORT}", "HOST=127.0.0.1"], cwd=REPO_ROOT, env=env,
                             stdout=(workdir / "stack.log").open("w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
    faults: dict[str, str] = {}
    postgres_window = (float("inf"), float("-inf"))
    try:
        wait_until_ready(url)
        load = MixedLoad(url, tokens, agents, seed=7)
        holder: dict[str, LoadResult] = {}
        runner = threading.Thread(target=lambda: holder.setdefault("result", load.run(args.seconds, args.threads)))
        runner.start()

        time.sleep(args.seconds * WORKER_KILL_AT)
        report = kill_worker("worker1")
        faults["worker1 killed with SIGKILL"] = f"{time.monotonic() - load.started:.0f}"
        log(report)

        time.sleep(max(0.0, args.seconds * REDIS_RESTART_AT - (time.monotonic() - load.started)))
        redis.stop()
        down_at = time.monotonic() - load.started
        time.sleep(REDIS_DOWN_SECONDS)
        redis.start()
        faults["Redis killed, then started empty"] = f"{down_at:.0f} to {time.monotonic() - load.started:.0f}"
        log("Restarted Redis")

        if args.restart_postgres:
            time.sleep(max(0.0, args.seconds * POSTGRES_RESTART_AT - (time.monotonic() - load.started)))
            began, ended = restart_postgres()
            # A request may fail up to its own length before the restart and shortly after it.
            postgres_window = (began - load.started - 2, ended - load.started + 5)
            faults["PostgreSQL restarted (fast)"] = f"{began - load.started:.0f} to {ended - load.started:.0f}"
            log("Restarted PostgreSQL")

        runner.join()
        result = holder["result"]
        log(f"Load finished; giving the stack {SETTLE_SECONDS} s to settle")
        time.sleep(SETTLE_SECONDS)
        respawned = (workdir / "stack.log").read_text(errors="replace").count("respawn: '")
    finally:
        subprocess.run(["make", "down"], cwd=REPO_ROOT, capture_output=True)
        try:
            stack.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
        redis.stop()

    inside = [entry for entry in result.error_times if postgres_window[0] <= entry[0] <= postgres_window[1]]
    violations = check_invariants(database_url, result.placed, result.rejected)
    lost = lost_reservations(database_url, result)
    latencies = sorted(result.latencies_ms)
    summary = {
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "seconds": args.seconds, "threads": args.threads, "restart_postgres": args.restart_postgres, "faults": faults,
        "requests": result.requests, "requests_per_second": round(result.requests / args.seconds, 1),
        "statuses": {str(status): count for status, count in result.statuses.items()},
        "booked": len(result.placed), "queued": len(result.queued), "rejected": len(result.rejected),
        "cancelled": len(result.cancelled),
        "errors_5xx": len(result.error_times) - len(inside), "errors_5xx_in_postgres_window": len(inside),
        "unanswered_after_retries": result.errors_5xx, "connection_errors": result.connection_errors,
        "violations": sum(violations.values()), "violation_details": violations,
        "lost_reservations": sum(lost.values()), "lost_details": lost, "worker_respawns": respawned,
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 1) if latencies else None,
    }
    if args.output:
        write_section(args.output, "soak", render(summary))
        log(f"Wrote the soak section of {args.output}")
    outside = [entry for entry in result.error_times if entry not in inside]
    if outside:
        log(f"5xx outside the PostgreSQL window (seconds, status, path): {outside[:20]}")
    print(json.dumps({key: value for key, value in summary.items() if key not in ("measured_at",)}))


if __name__ == "__main__":
    main()
