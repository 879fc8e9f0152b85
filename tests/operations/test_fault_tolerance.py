"""Fault-tolerance drills against real processes: gunicorn, Celery workers, a private Redis, the test database.

Each drill breaks one component under load and then checks the database with the independent
invariant checker (``bench.invariants``) and against the responses the clients received. docs/operations.md
describes the same drills against ``make up``.
"""

import threading
import time
from pathlib import Path

import psycopg
import pytest
from celery import Celery
from django.db import connection

from allocation.models import Allocation, Reservation
from allocation.trace import NODES_CSV
from allocation.trace.importer import trace_import
from bench.invariants import check_invariants
from bench.mixed_load import Agent, LoadResult, MixedLoad
from marketplace.celery import app as celery_app
from marketplace.models import TaskDelivery
from scheduler.agents import node_credential_issue

from ..factories import CustomerFactory, NodeFactory, member_with_token
from ..stack import database_url_of_tests, drill_stack, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("require_postgres")]

PRODUCT_APPS = {"allocation", "scheduler", "providers", "capacity", "marketplace", "task_runs"}
REPLAY_KWARGS = {"limit": 400, "trace_start_at": "2026-01-01T00:00:00+00:00"}


def small_fleet() -> tuple[list[str], list[Agent]]:
    """Create 8 nodes of 4 GPUs, two customers with API tokens, and agent keys for 4 nodes."""
    nodes = [NodeFactory(hostname=f"drill-{index}", gpu_count=4) for index in range(8)]
    tokens = [member_with_token(CustomerFactory(slug=f"drill-{index}"), f"drill-user-{index}")[1]
              for index in range(2)]
    agents = [Agent(key=node_credential_issue(node=node), gpu_uuids=[str(gpu.uuid) for gpu in node.gpus.all()])
              for node in nodes[:4]]
    return tokens, agents


def run_load_in_background(load: MixedLoad, seconds: float, threads: int = 4):
    holder: dict[str, LoadResult] = {}
    thread = threading.Thread(target=lambda: holder.setdefault("result", load.run(seconds, threads)))
    thread.start()
    return thread, holder


def assert_nothing_lost_or_half_written(result: LoadResult) -> None:
    violations = check_invariants(database_url_of_tests(), result.placed, result.rejected)
    assert not any(violations.values()), violations
    answered = set(result.placed) | set(result.queued)
    assert Reservation.objects.filter(pk__in=answered).count() == len(answered), "a reservation is missing"
    cancelled = set(result.cancelled)
    assert set(Reservation.objects.filter(pk__in=cancelled).values_list("status", flat=True)) <= {"cancelled"}
    booked_refs = [ref for ref, status in result.answered_refs.items() if status in (201, 202)]
    assert Reservation.objects.filter(external_ref__in=booked_refs).count() == len(booked_refs)


def stack_celery(stack) -> Celery:
    """A Celery client of the drill's private Redis, to send tasks and read their results."""
    # Not the current app: the product's tasks in later tests must keep sending to the suite's own Redis.
    return Celery("drill", broker=stack.redis.url, backend=stack.redis.url, set_as_current=False)


def test_redis_restart_loses_no_reservation(tmp_path: Path):
    tokens, agents = small_fleet()
    with drill_stack(tmp_path) as stack:
        stack.start_web()
        # Supervised as in production: Celery's Redis transport can fail for good right after it
        # reconnects ("Unrecoverable error"), and then bin/respawn starts the worker again.
        stack.start_worker("worker1", "celery", supervised=True)
        load = MixedLoad(stack.url, tokens, agents, seed=1)
        thread, holder = run_load_in_background(load, seconds=14)

        time.sleep(4)
        stack.redis.stop()
        # Down for 4 s, longer (up to 9 s) until a heartbeat has met the outage: on a busy machine the
        # load's few heartbeats can all fall outside a fixed window.
        down_since = time.monotonic()
        while time.monotonic() - down_since < 9 and (
                time.monotonic() - down_since < 4 or "Heartbeat queue unavailable" not in stack.log("web")):
            time.sleep(0.2)
        stack.redis.start()
        thread.join(timeout=120)

        # The worker reconnects by itself, or comes back under bin/respawn, and takes new tasks.
        result = stack_celery(stack).send_task("scheduler.run_cycle", kwargs={"trigger": "drill"})
        result.get(timeout=90)

    outcome = holder["result"]
    assert outcome.statuses[201] > 10, outcome.statuses
    assert outcome.statuses[200] > 10, outcome.statuses
    assert not [status for status in outcome.statuses if status >= 500], (outcome.statuses, outcome.error_times)
    assert outcome.connection_errors == 0
    assert "Heartbeat queue unavailable" in stack.log("web"), "no heartbeat arrived while Redis was down"
    assert_nothing_lost_or_half_written(outcome)


def test_postgres_outage_fails_cleanly_then_recovers(tmp_path: Path):
    """Every connection to the database is cut and new ones refused for 4 s, as in a PostgreSQL restart."""
    tokens, agents = small_fleet()
    database = connection.settings_dict["NAME"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        own_pid = cursor.fetchone()[0]
    admin_url = database_url_of_tests().rsplit("/", 1)[0] + "/postgres"

    with drill_stack(tmp_path) as stack, psycopg.connect(admin_url, autocommit=True) as admin:
        stack.start_web()
        stack.start_worker("worker1", "celery")
        load = MixedLoad(stack.url, tokens, agents, seed=2)
        thread, holder = run_load_in_background(load, seconds=16)

        time.sleep(4)
        outage_began = time.monotonic() - load.started
        try:
            admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
                          [database, own_pid])
            time.sleep(4)
        finally:
            admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        outage_ended = time.monotonic() - load.started
        thread.join(timeout=120)

        # The same processes serve again without a restart.
        after = MixedLoad(stack.url, tokens, agents, seed=3).run(seconds=3, threads=2)
        worker_result = stack_celery(stack).send_task("scheduler.run_cycle", kwargs={"trigger": "drill"})
        worker_result.get(timeout=90)

    outcome = holder["result"]
    failures = [status for status in outcome.statuses if status >= 500]
    assert set(failures) <= {503}, outcome.statuses
    assert outcome.statuses[503] > 0, "the outage was not seen by any request"
    for seconds, status, path in outcome.error_times:
        assert outage_began - 1 <= seconds <= outage_ended + 2, (seconds, status, path, outage_began, outage_ended)
    # Clients retried each 503 after Retry-After, so every request ended with a final response.
    assert outcome.errors_5xx == 0
    assert not [status for status in after.statuses if status >= 500], after.statuses
    assert after.statuses[201] > 0
    assert_nothing_lost_or_half_written(outcome)


def reservation_placements() -> dict[str, tuple]:
    """Map each replayed trace task to the node and GPU indexes it got, to compare two replays."""
    placements = {}
    for allocation in Allocation.objects.select_related("reservation", "node").prefetch_related("shares__gpu"):
        placements[allocation.reservation.external_ref] = (
            allocation.node.hostname, tuple(sorted(share.gpu.index for share in allocation.shares.all())))
    return placements


def test_killed_worker_task_reruns_once_elsewhere(tmp_path: Path):
    trace_import(nodes_path=NODES_CSV)
    with drill_stack(tmp_path, CELERY_VISIBILITY_TIMEOUT="6", CELERY_UNACKED_RESTORE_INTERVAL="1") as stack:
        app = stack_celery(stack)
        stack.start_worker("reference", "celery")
        app.send_task("allocation.replay_trace", kwargs=REPLAY_KWARGS).get(timeout=300)
        expected = reservation_placements()
        expected_count = Reservation.objects.count()
        stack.kill("reference")

        with connection.cursor() as cursor:
            # Forget the reference run and everything that hangs off its reservations; the fleet stays.
            cursor.execute("TRUNCATE allocation_reservation, marketplace_taskdelivery CASCADE")
        stack.start_worker("worker1", "celery")
        stack.start_worker("worker2", "celery")
        message = app.send_task("allocation.replay_trace", kwargs=REPLAY_KWARGS)
        wait_for(lambda: Reservation.objects.count() >= 40, timeout=120, message="replay under way")
        first = next(name for name in ("worker1", "worker2") if "Replay task started" in stack.log(name))
        other = "worker2" if first == "worker1" else "worker1"
        stack.kill(first)
        killed_at = Reservation.objects.count()
        assert killed_at < REPLAY_KWARGS["limit"], "the replay finished before the kill; raise its limit"

        summary = message.get(timeout=300)

    assert stack.log(other).count("Replay task started") == 1
    assert summary["skipped_already_replayed"] >= 40
    assert reservation_placements() == expected
    assert Reservation.objects.count() == expected_count
    delivery = TaskDelivery.objects.get(task_id=message.id)
    assert (delivery.status, delivery.attempts) == ("succeeded", 2)
    assert not any(check_invariants(database_url_of_tests(), [], []).values())


def test_every_task_delivered_twice_runs_once(tmp_path: Path):
    """Deliver one message of each task twice, as Redis does after a worker loss; the copy changes nothing."""
    trace_import(nodes_path=NODES_CSV)
    with drill_stack(tmp_path) as stack:
        stack.start_worker("worker1", "celery")
        app = stack_celery(stack)
        names = product_task_names()
        arguments = {"scheduler.advance_migration": {"args": [0]}, "allocation.replay_trace": {"kwargs": {"limit": 5}}}
        assert "scheduler.run_cycle" in names
        assert "allocation.replay_trace" in names
        for name in names:
            options = arguments.get(name, {})
            first = app.send_task(name, task_id=f"drill-{name}", **options)
            first.get(timeout=120, propagate=False)
            before = snapshot()
            app.send_task(name, task_id=f"drill-{name}", **options)
            wait_for(lambda: f"Skipped a duplicate delivery of task {name} drill-{name}" in stack.log("worker1"),
                     timeout=60, message=f"the second delivery of {name} skipped")
            assert snapshot() == before, f"the second delivery of {name} changed the database"
    assert TaskDelivery.objects.filter(attempts=1).count() == len(names)


def product_task_names() -> list[str]:
    """The names of the tasks the product's apps register."""
    celery_app.loader.import_default_modules()
    return sorted(name for name in celery_app.tasks if name.split(".")[0] in PRODUCT_APPS)


def snapshot() -> dict[str, int]:
    """Row counts and states of the tables tasks change, apart from the ledger and run logs."""
    from django.apps import apps

    counts = {}
    for model in apps.get_models():
        if model._meta.app_label in PRODUCT_APPS \
                and model is not TaskDelivery and model._meta.model_name not in {"schedulingcycle", "solverrun"}:
            counts[model._meta.label] = model.objects.count()
    counts["reservation states"] = sorted(Reservation.objects.values_list("id", "status"))
    return counts
