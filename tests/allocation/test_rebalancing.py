"""Rebalancing plans: proposals from live placements, the admin's decision, and moves that apply or are skipped."""

from decimal import Decimal

import time

import pytest
import time_machine
from django.db import transaction

from allocation.models import (
    Allocation, GpuShare, RebalanceMove, RebalancePlan, Reservation, ReservationEvent, ReservationStatus, SolverRun,
)
from allocation.rebalancing import RebalancePlanWaiting, rebalance_decide, rebalance_propose
from allocation.services import quota_set, reservation_cancel, reservation_create
from allocation.tasks import propose_rebalance_task
from marketplace.exceptions import InvalidRequest, NotFound
from marketplace.models import Gpu, Node

from .test_database_guarantees import full_spec, run_concurrently

from ..conftest import NOW, hours
from ..factories import NodeFactory, UserFactory, gpu_model
from .test_reservation_create import reserve

pytestmark = pytest.mark.django_db

LATER = NOW + hours(2)


@pytest.fixture
def admin_user():
    return UserFactory(username="ops", is_staff=True, is_superuser=True)


@pytest.fixture
def two_nodes(region):
    return (NodeFactory(hostname="t4-a", gpu_model=gpu_model("T4"), region=region),
            NodeFactory(hostname="t4-b", gpu_model=gpu_model("T4"), region=region))


def scheduled(customer, **overrides):
    values = dict(start_at=LATER, end_at=LATER + hours(10))
    values.update(overrides)
    reservation = reserve(customer, **values)
    assert reservation.status == ReservationStatus.SCHEDULED
    return reservation


def degrade_gpus_of(reservation):
    Gpu.objects.filter(id__in=GpuShare.objects.filter(allocation__reservation=reservation).values("gpu_id")).update(
        health=Gpu.Health.DEGRADED)


def test_reservation_on_degraded_gpu_is_moved_after_approval(customer, two_nodes, admin_user):
    reservation = scheduled(customer)
    source = reservation.allocation.node
    degrade_gpus_of(reservation)

    plan = rebalance_propose(now=NOW)

    move = plan.moves.get()
    assert (move.reservation_id, move.from_node_id) == (reservation.pk, source.pk)
    assert "degraded" in move.explanation
    assert Allocation.objects.get(reservation=reservation).node == source  # Nothing moves before approval.

    rebalance_decide(plan_id=plan.pk, approve=True, actor=admin_user, now=NOW)

    allocation = Allocation.objects.get(reservation=reservation)
    assert allocation.node_id == move.to_node_id != source.pk
    assert set(allocation.shares.values_list("gpu__node_id", flat=True)) == {move.to_node_id}
    assert RebalanceMove.objects.get(pk=move.pk).outcome == RebalanceMove.Outcome.APPLIED
    assert RebalancePlan.objects.get(pk=plan.pk).status == RebalancePlan.Status.APPLIED
    assert ReservationEvent.objects.filter(reservation=reservation, note__contains="rebalancing plan").exists()


def test_cheaper_node_that_became_free_is_proposed(customer, region):
    cheap = NodeFactory(hostname="cheap", gpu_count=1, price_per_gpu_hour=Decimal("1.00"), region=region)
    NodeFactory(hostname="dear", gpu_count=1, price_per_gpu_hour=Decimal("2.00"), region=region)
    blocker = scheduled(customer)
    reservation = scheduled(customer)
    assert reservation.allocation.node.hostname == "dear"
    reservation_cancel(reservation_id=blocker.pk, now=NOW)

    plan = rebalance_propose(now=NOW)

    move = plan.moves.get()
    assert (move.reservation_id, move.to_node_id) == (reservation.pk, cheap.pk)
    assert "saves the customer 10.00" in move.explanation


def test_do_not_migrate_reservation_is_left_alone(customer, two_nodes):
    reservation = scheduled(customer, do_not_migrate=True)
    degrade_gpus_of(reservation)

    assert rebalance_propose(now=NOW) is None
    assert SolverRun.objects.get().status == "nothing_scheduled"


def test_every_proposal_records_a_solver_run(customer, two_nodes):
    scheduled(customer)

    assert rebalance_propose(now=NOW) is None

    run = SolverRun.objects.get()
    assert (run.kind, run.requests, run.status) == (SolverRun.Kind.REBALANCE, 1, "no_gain")


def test_move_that_no_longer_fits_is_skipped(customer, other_customer, two_nodes, admin_user):
    reservation = scheduled(customer)
    degrade_gpus_of(reservation)
    plan = rebalance_propose(now=NOW)
    target_id = plan.moves.get().to_node_id
    scheduled(other_customer, gpu_count=2)  # Takes the whole target node for the window.
    assert Allocation.objects.filter(node_id=target_id).count() == 1

    rebalance_decide(plan_id=plan.pk, approve=True, actor=admin_user, now=NOW)

    move = plan.moves.get()
    assert move.outcome == RebalanceMove.Outcome.SKIPPED
    assert "can no longer hold" in move.outcome_detail
    assert Allocation.objects.get(reservation=reservation).node_id != target_id
    assert RebalancePlan.objects.get(pk=plan.pk).decision_note == "Applied 0 of 1 move."


def test_started_reservation_is_not_moved(customer, two_nodes, admin_user):
    reservation = scheduled(customer)
    degrade_gpus_of(reservation)
    plan = rebalance_propose(now=NOW)

    rebalance_decide(plan_id=plan.pk, approve=True, actor=admin_user, now=LATER + hours(1))

    assert plan.moves.get().outcome == RebalanceMove.Outcome.SKIPPED


def test_reject_needs_reason_decide_once(customer, two_nodes, admin_user):
    reservation = scheduled(customer)
    degrade_gpus_of(reservation)
    plan = rebalance_propose(now=NOW)

    with pytest.raises(InvalidRequest, match="Give a reason"):
        rebalance_decide(plan_id=plan.pk, approve=False, actor=admin_user)
    rebalance_decide(plan_id=plan.pk, approve=False, actor=admin_user, note="Maintenance tonight.")
    with pytest.raises(InvalidRequest, match="already rejected"):
        rebalance_decide(plan_id=plan.pk, approve=True, actor=admin_user)
    with pytest.raises(NotFound):
        rebalance_decide(plan_id=plan.pk + 1, approve=True, actor=admin_user)


def test_one_waiting_plan_at_a_time(customer, two_nodes):
    reservation = scheduled(customer)
    degrade_gpus_of(reservation)
    plan = rebalance_propose(now=NOW)

    with pytest.raises(RebalancePlanWaiting) as raised:
        rebalance_propose(now=NOW)
    assert raised.value.status == 409
    assert propose_rebalance_task.apply().get() is None
    assert RebalancePlan.objects.get().pk == plan.pk


def test_max_moves_outside_the_range_is_refused():
    with pytest.raises(InvalidRequest, match="max_moves is 0"):
        rebalance_propose(max_moves=0)


@pytest.fixture
def at_now():
    """Run the page's own clock at ``NOW``, where the fixtures' reservations are still scheduled."""
    with time_machine.travel(NOW, tick=True):
        yield


@pytest.fixture
def staff(client, admin_user, at_now):
    client.force_login(admin_user)
    return client


def test_page_needs_staff(client):
    response = client.get("/ops/rebalancing/")

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_page_proposes_and_applies_a_plan(staff, customer, two_nodes):
    reservation = scheduled(customer)
    degrade_gpus_of(reservation)

    proposed = staff.post("/ops/rebalancing/propose/")
    plan = RebalancePlan.objects.get()
    applied = staff.post(f"/ops/rebalancing/{plan.pk}/decide/", {"decision": "approve"})

    assert proposed.status_code == 200
    assert f"Plan {plan.pk} proposed with 1 move." in proposed.content.decode()
    assert applied.status_code == 200
    assert f"Plan {plan.pk} applied: Applied 1 of 1 move." in applied.content.decode()
    assert staff.get("/ops/rebalancing/").status_code == 200


def test_page_answers_errors_with_4xx_and_the_message(staff, customer, two_nodes):
    reservation = scheduled(customer)
    degrade_gpus_of(reservation)
    staff.post("/ops/rebalancing/propose/")
    plan = RebalancePlan.objects.get()

    again = staff.post("/ops/rebalancing/propose/")
    no_reason = staff.post(f"/ops/rebalancing/{plan.pk}/decide/", {"decision": "reject"})
    no_choice = staff.post(f"/ops/rebalancing/{plan.pk}/decide/", {"decision": "maybe"})

    assert again.status_code == 409
    assert "still waiting for a decision" in again.content.decode()
    assert no_reason.status_code == 400
    assert "Give a reason" in no_reason.content.decode()
    assert no_choice.status_code == 400


def test_decisions_need_the_change_permission(client, customer, two_nodes, django_user_model):
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    client.force_login(viewer)

    assert client.post("/ops/rebalancing/propose/").status_code == 403


@pytest.mark.parametrize("change, reason", [
    ({"price_per_gpu_hour": Decimal("5.00")}, "price changed from 1.0000 to 5.0000"),
    ({"price_per_gpu_hour": Decimal("0.50")}, "price changed from 1.0000 to 0.5000"),
    ({"currency": "JPY"}, "now prices in JPY, not USD"),
    ({"status": Node.Status.DRAINING}, "no longer active"),
])
def test_target_that_changed_after_the_proposal_is_skipped(customer, two_nodes, admin_user, change, reason):
    reservation = scheduled(customer)
    degrade_gpus_of(reservation)
    plan = rebalance_propose(now=NOW)
    Node.objects.filter(pk=plan.moves.get().to_node_id).update(**change)

    rebalance_decide(plan_id=plan.pk, approve=True, actor=admin_user, now=NOW)

    move = plan.moves.get()
    assert move.outcome == RebalanceMove.Outcome.SKIPPED
    assert reason in move.outcome_detail


def test_target_in_another_region_than_asked_is_skipped(customer, two_nodes, admin_user, region):
    reservation = scheduled(customer, region=region.code)
    degrade_gpus_of(reservation)
    plan = rebalance_propose(now=NOW)
    other = type(region).objects.create(code="elsewhere", name="Elsewhere")
    Node.objects.filter(pk=plan.moves.get().to_node_id).update(region=other)

    rebalance_decide(plan_id=plan.pk, approve=True, actor=admin_user, now=NOW)

    assert "no longer in the region" in plan.moves.get().outcome_detail


def test_reason_with_a_nul_byte_is_refused(customer, two_nodes, admin_user):
    reservation = scheduled(customer)
    degrade_gpus_of(reservation)
    plan = rebalance_propose(now=NOW)

    with pytest.raises(InvalidRequest, match="without NUL bytes"):
        rebalance_decide(plan_id=plan.pk, approve=False, actor=admin_user, note="bad\x00byte")


@pytest.mark.django_db(transaction=True)
def test_approval_and_reservation_do_not_deadlock(require_postgres, region, admin_user):
    """Both lock the customer's row before any node, so the two transactions queue instead of deadlocking."""
    from ..factories import CustomerFactory

    customer = CustomerFactory(slug="racing-customer")
    quota_set(organization=customer, gpu_model=None, max_gpu_milli=16000)
    NodeFactory(hostname="source", gpu_count=2, region=region)
    reservation = scheduled(customer)
    degrade_gpus_of(reservation)
    NodeFactory(hostname="target", gpu_count=8, region=region)
    plan = rebalance_propose(now=NOW)

    results = run_concurrently([
        lambda: rebalance_decide(plan_id=plan.pk, approve=True, actor=admin_user, now=NOW),
        lambda: reservation_create(customer=customer, spec=full_spec(start_at=LATER, end_at=LATER + hours(10),
                                                                     gpu_count=4), now=NOW),
    ])

    assert not [result for result in results if isinstance(result, Exception)]
    assert RebalancePlan.objects.get(pk=plan.pk).status == RebalancePlan.Status.APPLIED


def test_page_needs_the_view_permission(client, django_user_model, at_now):
    viewer = django_user_model.objects.create_user("plain-staff", password="pw", is_staff=True)
    client.force_login(viewer)

    assert client.get("/ops/rebalancing/").status_code == 403


def test_page_answers_503_when_the_database_fails(staff, customer, two_nodes, monkeypatch):
    from django.db import OperationalError

    from allocation import rebalance_pages

    def fail(**kwargs):
        raise OperationalError("deadlock detected")

    monkeypatch.setattr(rebalance_pages, "rebalance_decide", fail)

    response = staff.post("/ops/rebalancing/1/decide/", {"decision": "approve"})

    assert response.status_code == 503
    assert "nothing changed. Try again." in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_approval_and_cancel_do_not_deadlock(require_postgres, region, admin_user):
    """Both lock the reservation before its allocation, so they queue instead of deadlocking."""
    from ..factories import CustomerFactory

    customer = CustomerFactory(slug="cancelling-customer")
    NodeFactory(hostname="source", gpu_count=2, region=region)
    reservation = scheduled(customer)
    degrade_gpus_of(reservation)
    NodeFactory(hostname="target", gpu_count=8, region=region)
    plan = rebalance_propose(now=NOW)

    def cancel_after_locking_first():
        # Holds the reservation's lock, as reservation_cancel does first, while the approval starts.
        with transaction.atomic():
            Reservation.objects.select_for_update().get(pk=reservation.pk)
            time.sleep(0.3)
            return reservation_cancel(reservation_id=reservation.pk, now=NOW)

    results = run_concurrently([
        lambda: rebalance_decide(plan_id=plan.pk, approve=True, actor=admin_user, now=NOW),
        cancel_after_locking_first,
    ])

    assert not [result for result in results if isinstance(result, Exception)]
    assert RebalancePlan.objects.get(pk=plan.pk).status == RebalancePlan.Status.APPLIED
    assert plan.moves.get().outcome == RebalanceMove.Outcome.SKIPPED


@pytest.mark.django_db(transaction=True)
def test_plan_with_two_customers_does_not_deadlock(require_postgres, region, admin_user):
    """Moves commit one by one, so the approval never holds one customer's node while locking another customer."""
    from marketplace.models import Organization

    from ..factories import CustomerFactory

    first, second = CustomerFactory(slug="first-customer"), CustomerFactory(slug="second-customer")
    for customer, hostname in ((first, "source-1"), (second, "source-2")):
        NodeFactory(hostname=hostname, gpu_count=1, region=region)
        degrade_gpus_of(scheduled(customer))
    NodeFactory(hostname="target", gpu_count=3, region=region)
    plan = rebalance_propose(now=NOW)
    assert plan.moves.count() == 2

    def reserve_after_locking_the_customer():
        with transaction.atomic():
            Organization.objects.select_for_update().get(pk=second.pk)
            time.sleep(0.3)
            return reservation_create(customer=second, spec=full_spec(start_at=LATER, end_at=LATER + hours(10)),
                                      now=NOW)

    results = run_concurrently([
        lambda: rebalance_decide(plan_id=plan.pk, approve=True, actor=admin_user, now=NOW),
        reserve_after_locking_the_customer,
    ])

    assert not [result for result in results if isinstance(result, Exception)]
