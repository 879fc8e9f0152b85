"""The express reservation path on PostgreSQL writes what the full path writes, and falls back to it."""

import logging
from decimal import Decimal

import pytest
from django.db import connection, transaction

from allocation import express, placement, services
from allocation.models import Allocation, ApprovalPolicy, Budget, Reservation, ReservationStatus
from allocation.services import ReservationSpec, quota_set, reservation_create
from marketplace.models import Gpu, Node
from scheduler.models import Decision, Workload

from ..conftest import NOW, hours
from ..factories import NodeFactory, gpu_model

pytestmark = pytest.mark.usefixtures("require_postgres")


def spec(**overrides) -> ReservationSpec:
    values = dict(gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=8000, memory_mib=16384,
                  start_at=NOW, end_at=NOW + hours(2))
    values.update(overrides)
    return ReservationSpec(**values)


def written_rows(reservation_id: int) -> dict:
    """Return what the database contains for a reservation, without ids and wall-clock times."""
    reservation = Reservation.objects.get(pk=reservation_id)
    allocation = Allocation.objects.filter(reservation=reservation).select_related("node").first()
    workload = Workload.objects.get(reservation=reservation)
    return {
        "reservation": {field: getattr(reservation, field) for field in (
            "customer_id", "created_by_id", "external_ref", "gpu_count", "gpu_milli_per_gpu", "region_id",
            "cpu_millicores", "memory_mib", "start_at", "end_at", "max_price_per_gpu_hour", "currency", "status",
            "reason_code", "reason_detail", "hold_expires_at", "do_not_migrate")},
        "gpu_models": sorted(reservation.gpu_models.values_list("name", flat=True)),
        "events": list(reservation.events.order_by("id").values_list(
            "from_status", "to_status", "reason_code", "note", "actor_id", "at")),
        "workload": {field: getattr(workload, field) for field in (
            "priority_class_id", "queue_id", "interruptible", "latest_start_at", "duration_seconds", "queued_at",
            "position", "waiting_reason_code", "waiting_reason", "estimated_start_at", "start_attempts",
            "failed_node_ids")},
        "allocation": allocation and {
            "node": allocation.node.hostname,
            **{field: getattr(allocation, field) for field in (
                "customer_id", "gpu_model_id", "start_at", "end_at", "cpu_millicores", "memory_mib",
                "gpu_milli_total", "borrowed_gpu_milli", "billed_gpu_milli", "price_per_gpu_hour", "currency",
                "released_at")},
            "shares": list(allocation.shares.order_by("gpu__index").values_list(
                "gpu__index", "gpu_milli", "start_at", "end_at")),
        },
        "decisions": [
            (kind, code, reason, at, {**detail, "node_id": Node.objects.get(pk=detail["node_id"]).hostname})
            for kind, code, reason, at, detail in Decision.objects.filter(reservation=reservation).values_list(
                "kind", "reason_code", "reason", "at", "detail")
        ],
    }


def rows_from_both_paths(customer, request: ReservationSpec, monkeypatch) -> tuple[dict, dict]:
    """Create ``request`` on the express path, roll it back, create it on the full path; return both rows."""
    with transaction.atomic():
        fast = reservation_create(customer=customer, spec=request, now=NOW)
        assert getattr(fast, "response_ready", False), "the express path did not take the request"
        fast_rows = written_rows(fast.pk)
        transaction.set_rollback(True)

    monkeypatch.setattr(services, "express_available", lambda spec: False)
    full = reservation_create(customer=customer, spec=request, now=NOW)
    assert not getattr(full, "response_ready", False)
    return fast_rows, written_rows(full.pk)


@pytest.mark.parametrize("overrides", [
    {},
    {"start_at": NOW + hours(24), "end_at": NOW + hours(30), "external_ref": "job-7"},
    {"gpu_milli_per_gpu": 460, "gpu_models": ("T4",), "max_price_per_gpu_hour": Decimal("3.5")},
    {"gpu_count": 2, "cpu_millicores": 60000, "interruptible": True, "do_not_migrate": True},
    {"gpu_count": 0, "gpu_milli_per_gpu": 0, "cpu_millicores": 4000},
    {"gpu_count": 4},
    {"gpu_models": ("V100M32",)},
    {"max_price_per_gpu_hour": Decimal("0.5")},
], ids=["now", "future", "share", "interruptible", "cpu-only", "too-big", "no-such-node", "price-cap"])
def test_same_rows_as_full_path(customer, t4_node, monkeypatch, overrides):
    fast, full = rows_from_both_paths(customer, spec(**overrides), monkeypatch)

    assert fast == full


def test_same_rows_for_approval_hold(customer, t4_node, monkeypatch):
    ApprovalPolicy.objects.create(organization=customer, max_gpus_without_approval=0)

    fast, full = rows_from_both_paths(customer, spec(), monkeypatch)

    assert fast["reservation"]["status"] == ReservationStatus.PENDING_APPROVAL
    assert fast == full


def test_same_rows_for_quota_rejection(customer, t4_node, monkeypatch):
    quota_set(organization=customer, gpu_model=None, max_gpu_milli=500)

    fast, full = rows_from_both_paths(customer, spec(), monkeypatch)

    assert fast["reservation"]["reason_code"] == "quota_exceeded"
    assert fast == full


def test_budget_takes_full_path(customer, t4_node, caplog):
    Budget.objects.create(organization=customer, max_gpu_hours=Decimal("100"))

    with caplog.at_level(logging.INFO, logger="allocation.express"):
        reservation = reservation_create(customer=customer, spec=spec(), now=NOW)

    assert reservation.status == ReservationStatus.ACTIVE
    assert not getattr(reservation, "response_ready", False)
    assert "the organization has a budget" in caplog.text


def wrap_shortlists(monkeypatch, wrap) -> None:
    """Replace both shortlist readers of the express path, the database's and the capacity ledger's.

    ``wrap(shortlist)`` returns the replacement of ``shortlist``, a function of keyword arguments.
    """
    from_database, from_ledger = express.placement_shortlist, express.ledger_shortlist
    monkeypatch.setattr(express, "placement_shortlist", wrap(from_database))
    monkeypatch.setattr(express, "ledger_shortlist",
                        lambda ledger, **kwargs: wrap(lambda **inner: from_ledger(ledger, **inner))(**kwargs))


def test_lost_race_falls_back_to_full_path(customer, t4_node, monkeypatch, caplog):
    reservation_create(customer=customer, spec=spec(), now=NOW)
    held_gpu = Gpu.objects.get(node=t4_node, shares__isnull=False)

    def stale(shortlist):
        def stale_shortlist(**kwargs):
            ranked, states = shortlist(**kwargs)
            # The GPU the first reservation holds, as a shortlist read before it committed would offer it.
            return [ranked[0].__class__(node_id=t4_node.pk, gpu_shares=((held_gpu.pk, 1000),), score=0.0)], states
        return stale_shortlist

    wrap_shortlists(monkeypatch, stale)
    with caplog.at_level(logging.INFO, logger="allocation.express"):
        second = reservation_create(customer=customer, spec=spec(external_ref="second"), now=NOW)

    assert second.status == ReservationStatus.ACTIVE
    assert "lost a race" in caplog.text
    assert "takes the full path" in caplog.text
    assert Reservation.objects.filter(external_ref="second").count() == 1
    assert list(Allocation.objects.get(reservation=second).shares.values_list("gpu__index", flat=True)) == [
        1 - held_gpu.index]


def change_first_choice_after_shortlist(monkeypatch, **changes) -> None:
    """Make the express path's shortlist update its first choice's node with ``changes``, as a concurrent writer."""
    def change(shortlist):
        def changed(**kwargs):
            ranked, states = shortlist(**kwargs)
            Node.objects.filter(pk=ranked[0].node_id).update(**changes)
            return ranked, states
        return changed

    wrap_shortlists(monkeypatch, change)


@pytest.mark.parametrize("changes", [
    {"status": Node.Status.DRAINING},
    {"gpu_model_id": "A10"},
], ids=["drained", "model-changed"])
def test_node_changed_after_shortlist_is_skipped(customer, t4_node, region, monkeypatch, changes):
    other = NodeFactory(hostname="t4-b", gpu_model=gpu_model("T4"), gpu_count=2, region=region,
                        price_per_gpu_hour=Decimal("2.00"))
    if "gpu_model_id" in changes:
        changes = {"gpu_model_id": gpu_model(changes["gpu_model_id"]).pk}
    change_first_choice_after_shortlist(monkeypatch, **changes)

    reservation = reservation_create(customer=customer, spec=spec(gpu_models=("T4",)), now=NOW)

    assert reservation.status == ReservationStatus.ACTIVE
    assert Allocation.objects.get(reservation=reservation).node == other
    assert reservation.allocation.node.hostname == other.hostname
    assert reservation.allocation.gpu_model.name == "T4"


def test_model_renamed_elsewhere_keeps_express_path(customer, t4_node):
    from marketplace.models import GpuModel

    reservation_create(customer=customer, spec=spec(gpu_milli_per_gpu=100), now=NOW)
    # An update without signals, as another process's rename looks to this one's 5-second cache.
    GpuModel.objects.filter(name="T4").update(name="T4-16GB")

    second = reservation_create(customer=customer, spec=spec(gpu_milli_per_gpu=100), now=NOW)

    assert getattr(second, "response_ready", False)
    assert second.status == ReservationStatus.ACTIVE
    assert second.allocation.gpu_model.name == "T4-16GB"


def test_writer_lists_every_required_column():
    """Fail when the writer leaves out a NOT NULL column that has no database default.

    Such a column would send every request to the full path, or fail it with a 500.
    """
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_functiondef('allocation_reservation_write(jsonb)'::regprocedure)")
        source = cursor.fetchone()[0]
        for table in ("allocation_reservation", "allocation_reservation_gpu_models", "allocation_reservationevent",
                      "scheduler_workload", "allocation_allocation", "allocation_gpushare", "scheduler_decision"):
            cursor.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s AND is_nullable = 'NO' "
                "AND column_default IS NULL AND is_identity = 'NO'", [table])
            required = {row[0] for row in cursor.fetchall()} - {"id"}
            listed = source.split(f"INSERT INTO {table} (", 1)[1].split(")", 1)[0]
            columns = {column.strip() for column in listed.split(",")}

            assert required <= columns, (table, required - columns)


def current_plan_cache_mode() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW plan_cache_mode")
        return cursor.fetchone()[0]


def test_express_transaction_uses_generic_plans(customer, t4_node, monkeypatch):
    modes = []

    def record(shortlist):
        def recording_shortlist(**kwargs):
            modes.append(current_plan_cache_mode())
            return shortlist(**kwargs)
        return recording_shortlist

    wrap_shortlists(monkeypatch, record)

    reservation_create(customer=customer, spec=spec(), now=NOW)

    assert modes == ["force_generic_plan"]


@pytest.mark.django_db(transaction=True)
def test_generic_plans_end_with_the_transaction(customer, t4_node):
    before = current_plan_cache_mode()

    reservation = reservation_create(customer=customer, spec=spec(), now=NOW)

    assert reservation.status == ReservationStatus.ACTIVE
    assert current_plan_cache_mode() == before
    assert before == "auto"


def test_full_node_skips_idle_fit_query(customer, t4_node, monkeypatch):
    reservation_create(customer=customer, spec=spec(gpu_count=2, gpu_milli_per_gpu=1000), now=NOW)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the shortlist already read a node that could hold the request")

    monkeypatch.setattr(placement, "any_node_could_hold", must_not_run)
    rejected = reservation_create(customer=customer, spec=spec(gpu_count=1, gpu_milli_per_gpu=1000), now=NOW)

    assert rejected.status == ReservationStatus.REJECTED
    assert rejected.reason_code == "no_capacity"


def test_oversized_request_has_no_matching_node(customer, t4_node):
    rejected = reservation_create(customer=customer, spec=spec(gpu_count=8, gpu_milli_per_gpu=1000), now=NOW)

    assert rejected.reason_code == "no_matching_node"


@pytest.fixture
def savepoint_rollbacks(monkeypatch):
    """Record each savepoint rollback; the test's own transaction makes the express transaction a savepoint."""
    calls = []
    roll_back = connection.savepoint_rollback

    def recorded(savepoint_id):
        calls.append(savepoint_id)
        return roll_back(savepoint_id)

    monkeypatch.setattr(connection, "savepoint_rollback", recorded)
    return calls


def test_budget_fallback_does_not_roll_back(customer, t4_node, savepoint_rollbacks):
    Budget.objects.create(organization=customer, max_gpu_hours=Decimal("100"))

    reservation = reservation_create(customer=customer, spec=spec(), now=NOW)

    assert reservation.status == ReservationStatus.ACTIVE
    assert savepoint_rollbacks == []


def test_duplicate_ref_does_not_roll_back(customer, t4_node, savepoint_rollbacks):
    reservation_create(customer=customer, spec=spec(external_ref="job-7"), now=NOW)

    with pytest.raises(services.DuplicateExternalRef):
        reservation_create(customer=customer, spec=spec(external_ref="job-7"), now=NOW)

    assert savepoint_rollbacks == []
