"""Each admin decision needs its own permission, in the Django admin and on the staff pages; every POST needs CSRF."""

from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.test import Client
from django.urls import get_resolver, reverse
from django.utils import timezone

from allocation.models import ApprovalPolicy, RebalancePlan, Reservation, ReservationStatus
from allocation.rebalancing import rebalance_propose
from allocation.services import ReservationSpec, reservation_create
from capacity.models import CapacityPlan
from marketplace.models import AuditEvent, MaintenanceWindow, Membership, Node, Organization
from providers.models import NodeDrainRequest, ProviderProfile
from scheduler.cycle import scheduling_cycle
from scheduler.models import Preemption, SchedulingCycle

from ..allocation.test_rebalancing import degrade_gpus_of, scheduled
from ..conftest import NOW, hours
from ..factories import NodeFactory, UserFactory, gpu_model
from .test_audit import MINUTE, preemption_spec, queue_request

pytestmark = pytest.mark.django_db

DECISION_PERMISSIONS = [
    "allocation.approve_reservation", "allocation.cancel_reservation", "allocation.approve_rebalanceplan",
    "scheduler.decide_preemption", "scheduler.request_schedulingcycle", "capacity.approve_capacityplan",
    "providers.approve_nodedrainrequest", "marketplace.drain_node",
]


def staff_with(*permissions: str):
    """Return a fresh staff user holding exactly ``permissions`` ("app_label.codename")."""
    user = UserFactory(username=f"staff-{len(permissions)}-{'-'.join(p.split('.')[1] for p in permissions)}"[:150],
                       is_staff=True)
    for permission in permissions:
        app_label, codename = permission.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return type(user).objects.get(pk=user.pk)  # a fresh instance, without the permission cache


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def pending_reservation(customer) -> Reservation:
    ApprovalPolicy.objects.get_or_create(organization=customer, defaults={"flagged": True})
    now = timezone.now()
    return reservation_create(customer=customer, spec=ReservationSpec(
        gpu_count=1, gpu_milli_per_gpu=500, cpu_millicores=1000, memory_mib=1024, start_at=now + hours(1),
        end_at=now + hours(2)))


def scheduled_reservation(customer) -> Reservation:
    now = timezone.now()
    return reservation_create(customer=customer, spec=ReservationSpec(
        gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024, start_at=now + hours(1),
        end_at=now + hours(2)))


def action_names(client: Client, changelist: str) -> set[str]:
    response = client.get(changelist)
    assert response.status_code == 200
    form = response.context["action_form"]  # None when the user may run no action at all
    return {name for name, _ in form.fields["action"].choices if name} if form is not None else set()


# Admin actions: (changelist, action, permission needed, permission to see the list, make the object, read its state)
ADMIN_ACTIONS = {
    "cancel_reservations": (
        "/admin/allocation/reservation/", "allocation.cancel_reservation", "allocation.view_reservation",
        lambda fleet: scheduled_reservation(fleet["customer"]),
        lambda obj: Reservation.objects.get(pk=obj.pk).status,
    ),
    "drain_nodes": (
        "/admin/marketplace/node/", "marketplace.drain_node", "marketplace.view_node",
        lambda fleet: fleet["node"],
        lambda obj: Node.objects.get(pk=obj.pk).status,
    ),
    "approve_drain": (
        "/admin/providers/nodedrainrequest/", "providers.approve_nodedrainrequest", "providers.view_nodedrainrequest",
        lambda fleet: NodeDrainRequest.objects.create(node=fleet["node"], reservations=5, reason="unhealthy",
                                                      created_at=timezone.now()),
        lambda obj: NodeDrainRequest.objects.get(pk=obj.pk).status,
    ),
}


@pytest.fixture
def fleet(customer, t4_node):
    return {"customer": customer, "node": t4_node}


@pytest.mark.parametrize("action", list(ADMIN_ACTIONS))
def test_admin_action_hidden_and_inert_without_permission(fleet, action):
    changelist, _, view_permission, make, state = ADMIN_ACTIONS[action]
    obj = make(fleet)
    before = state(obj)
    client = logged_in(staff_with(view_permission))

    assert action not in action_names(client, changelist)
    response = client.post(changelist, {"action": action, "_selected_action": [obj.pk]})

    assert response.status_code in (200, 302)
    assert state(obj) == before
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize("action", list(ADMIN_ACTIONS))
def test_admin_action_works_with_permission(fleet, action):
    changelist, permission, view_permission, make, state = ADMIN_ACTIONS[action]
    obj = make(fleet)
    before = state(obj)
    client = logged_in(staff_with(view_permission, permission))

    assert action in action_names(client, changelist)
    response = client.post(changelist, {"action": action, "_selected_action": [obj.pk]})

    assert response.status_code == 302
    assert state(obj) != before
    assert AuditEvent.objects.exists()


def test_generic_change_permission_no_longer_decides(fleet):
    reservation = scheduled_reservation(fleet["customer"])
    client = logged_in(staff_with("allocation.view_reservation", "allocation.change_reservation"))

    assert "cancel_reservations" not in action_names(client, "/admin/allocation/reservation/")
    assert Reservation.objects.get(pk=reservation.pk).status == ReservationStatus.SCHEDULED


def test_superuser_has_every_decision_permission():
    root = UserFactory(username="root", is_staff=True, is_superuser=True)

    for permission in DECISION_PERMISSIONS:
        assert root.has_perm(permission), permission


def test_demo_admin_sees_every_action(t4_node, django_user_model):
    Organization.objects.create(slug="orbit-vision", name="Orbit Vision", kind=Organization.Kind.CUSTOMER)
    call_command("demo_users", "--token-only")
    client = logged_in(django_user_model.objects.get(username="admin"))

    assert "cancel_reservations" in action_names(client, "/admin/allocation/reservation/")
    assert "drain_nodes" in action_names(client, "/admin/marketplace/node/")
    assert "approve_drain" in action_names(client, "/admin/providers/nodedrainrequest/")
    assert client.get("/admin/marketplace/auditevent/").status_code == 200


# Staff page POSTs: permission needed, a function that prepares the object and returns (url, data, read state).
def approvals_case(fleet):
    reservation = pending_reservation(fleet["customer"])
    return ("/ops/approvals/decide/", {"decision": "approve", "ids": [reservation.pk]},
            lambda: Reservation.objects.get(pk=reservation.pk).status)


def preemption_case(fleet):
    for _ in range(2):  # low-priority work of another customer fills both nodes
        reservation_create(customer=fleet["other_customer"], now=NOW,
                           spec=preemption_spec(priority_class="low", interruptible=True))
    queue_request(fleet["customer"], "high")
    scheduling_cycle(now=NOW + MINUTE)
    preemption = Preemption.objects.get()
    return (f"/ops/preemptions/{preemption.pk}/decide/", {"decision": "reject", "reason": "Not now."},
            lambda: Preemption.objects.get(pk=preemption.pk).status)


def cycle_case(fleet):
    return "/ops/preemptions/cycle/", {}, lambda: SchedulingCycle.objects.count()


def rebalance_case(fleet):
    reservation = scheduled(fleet["customer"])
    degrade_gpus_of(reservation)
    plan = rebalance_propose(now=NOW)
    return (f"/ops/rebalancing/{plan.pk}/decide/", {"decision": "reject", "reason": "Not this week."},
            lambda: RebalancePlan.objects.get(pk=plan.pk).status)


def capacity_case(fleet):
    plan = CapacityPlan.objects.create(horizon_hours=48, service_level=Decimal("0.900"))
    return (f"/ops/capacity/plans/{plan.pk}/decide/", {"decision": "approve"},
            lambda: CapacityPlan.objects.get(pk=plan.pk).status)


PAGE_POSTS = {
    "approvals": ("allocation.approve_reservation", approvals_case),
    "preemptions": ("scheduler.decide_preemption", preemption_case),
    "cycle": ("scheduler.request_schedulingcycle", cycle_case),
    "rebalancing": ("allocation.approve_rebalanceplan", rebalance_case),
    "capacity": ("capacity.approve_capacityplan", capacity_case),
}


@pytest.fixture
def page_fleet(customer, other_customer, region):
    """Two T4 nodes: room to rebalance, or two nodes for low-priority work to fill."""
    first = NodeFactory(hostname="t4-a", gpu_model=gpu_model("T4"), region=region)
    NodeFactory(hostname="t4-b", gpu_model=gpu_model("T4"), region=region)
    return {"customer": customer, "other_customer": other_customer, "node": first}


@pytest.mark.parametrize("page", list(PAGE_POSTS))
def test_page_post_is_403_without_permission(page_fleet, page):
    permission, case = PAGE_POSTS[page]
    url, data, state = case(page_fleet)
    before, events = state(), AuditEvent.objects.count()
    client = logged_in(staff_with())

    response = client.post(url, data)

    assert response.status_code == 403
    assert state() == before
    assert AuditEvent.objects.count() == events


@pytest.mark.parametrize("page", [name for name in PAGE_POSTS if name != "cycle"])
def test_page_post_decides_with_permission(page_fleet, page):
    permission, case = PAGE_POSTS[page]
    url, data, state = case(page_fleet)
    before = state()
    client = logged_in(staff_with(permission))

    response = client.post(url, data)

    assert response.status_code == 200, response.content.decode()[:500]
    assert state() != before
    assert AuditEvent.objects.filter(actor_user__username__startswith="staff-1").exists()


def test_cycle_request_works_with_permission(page_fleet):
    client = logged_in(staff_with("scheduler.request_schedulingcycle"))

    response = client.post("/ops/preemptions/cycle/")

    assert response.status_code == 200
    assert "scheduling cycle was requested" in response.content.decode()


# CSRF: every state-changing POST route of the staff pages and the provider portal, and what it needs.
POST_ROUTES = {
    "allocation:approvals-decide": {}, "allocation:rebalancing-propose": {},
    "allocation:rebalancing-decide": {"plan_id": 1},
    "scheduler:preemptions-decide": {"preemption_id": 1}, "scheduler:cycle-now": {},
    "capacity:propose": {}, "capacity:decide": {"plan_id": 1}, "capacity:refresh": {},
    "providers:login": {}, "providers:logout": {}, "providers:node-price": {"node_id": 1},
    "providers:model-price": {}, "providers:minimum": {}, "providers:maintenance-add": {},
    "providers:maintenance-delete": {"window_id": 1},
}
READ_ROUTES = {
    "allocation:approvals", "allocation:approvals-table", "allocation:rebalancing", "scheduler:preemptions",
    "scheduler:preemptions-list", "capacity:page", "capacity:preview", "capacity:plan", "providers:portal",
    "providers:nodes", "providers:payouts",
}


def route_names() -> set[str]:
    names = set()
    for namespace in ("allocation", "scheduler", "capacity", "providers"):
        _, resolver = get_resolver().namespace_dict[namespace]
        names |= {f"{namespace}:{pattern.name}" for pattern in resolver.url_patterns}
    return names


def test_every_page_route_is_classified():
    assert route_names() == set(POST_ROUTES) | READ_ROUTES


def snapshot() -> tuple:
    """Return the state that any of the POST routes could change."""
    return (
        AuditEvent.objects.count(),
        sorted(Reservation.objects.values_list("id", "status")),
        sorted(Node.objects.values_list("id", "status", "price_per_gpu_hour")),
        MaintenanceWindow.objects.count(),
        sorted(CapacityPlan.objects.values_list("id", "status")),
        sorted(RebalancePlan.objects.values_list("id", "status")),
        sorted(ProviderProfile.objects.values_list("organization_id", "min_price_per_gpu_hour")),
        SchedulingCycle.objects.count(),
    )


@pytest.fixture
def csrf_world(customer, t4_node):
    """A pending reservation, a maintenance window, proposed plans and the users that may post each route."""
    provider_user = UserFactory(username="prov")
    Membership.objects.create(user=provider_user, organization=t4_node.provider)
    window = MaintenanceWindow.objects.create(node=t4_node, start_at=timezone.now() + hours(5),
                                              end_at=timezone.now() + hours(6), reason="firmware")
    capacity_plan = CapacityPlan.objects.create(horizon_hours=48, service_level=Decimal("0.900"))
    reservation = pending_reservation(customer)
    return {
        "root": UserFactory(username="root", is_staff=True, is_superuser=True), "provider": provider_user,
        "data": {
            "allocation:approvals-decide": {"decision": "approve", "ids": [reservation.pk]},
            "allocation:rebalancing-decide": {"decision": "reject", "reason": "no"},
            "scheduler:preemptions-decide": {"decision": "reject", "reason": "no"},
            "capacity:decide": {"decision": "approve"},
            "providers:login": {"username": "prov", "password": "x"},
            "providers:node-price": {"price": "3.00"}, "providers:model-price": {"gpu_model": t4_node.gpu_model_id,
                                                                                  "price": "3.00"},
            "providers:minimum": {"minimum": "0.50"},
            "providers:maintenance-add": {"node": t4_node.pk, "start_at": "2030-01-01T00:00",
                                          "end_at": "2030-01-01T02:00", "reason": "x"},
        },
        "kwargs": {"providers:node-price": {"node_id": t4_node.pk}, "capacity:decide": {"plan_id": capacity_plan.pk},
                   "providers:maintenance-delete": {"window_id": window.pk}},
    }


def csrf_client(world, route: str) -> Client:
    client = Client(enforce_csrf_checks=True)
    if route == "providers:login":
        return client
    client.force_login(world["provider"] if route.startswith("providers:") else world["root"])
    return client


@pytest.mark.parametrize("route", list(POST_ROUTES))
def test_post_without_csrf_token_is_403(csrf_world, route):
    url = reverse(route, kwargs=csrf_world["kwargs"].get(route, POST_ROUTES[route]))
    client = csrf_client(csrf_world, route)
    before = snapshot()

    response = client.post(url, csrf_world["data"].get(route, {}))

    assert response.status_code == 403
    assert "CSRF" in response.content.decode()
    assert snapshot() == before


@pytest.mark.parametrize("route", ["allocation:approvals-decide", "providers:node-price"])
def test_post_with_csrf_header_passes(csrf_world, route):
    client = csrf_client(csrf_world, route)
    page = client.get("/provider/" if route.startswith("providers:") else "/ops/approvals/")
    token = page.context["csrf_token"]
    url = reverse(route, kwargs=csrf_world["kwargs"].get(route, POST_ROUTES[route]))

    response = client.post(url, csrf_world["data"][route], HTTP_X_CSRFTOKEN=str(token))

    assert response.status_code == 200
    assert AuditEvent.objects.count() == 1


@pytest.mark.parametrize("path", ["/ops/approvals/", "/ops/preemptions/", "/ops/rebalancing/", "/ops/capacity/",
                                  "/provider/"])
def test_pages_send_the_csrf_header_with_htmx(csrf_world, path):
    client = csrf_client(csrf_world, "providers:portal" if path == "/provider/" else "allocation:approvals")

    body = client.get(path).content.decode()

    assert "hx-post" in body
    assert "hx-headers='{\"X-CSRFToken\": \"" in body
    assert "X-CSRFToken\": \"\"" not in body


@pytest.mark.parametrize("action", ["cancel_reservations", "drain_nodes"])
def test_admin_action_without_csrf_token_is_403(csrf_world, t4_node, action):
    changelist = "/admin/allocation/reservation/" if action == "cancel_reservations" else "/admin/marketplace/node/"
    target = Reservation.objects.get().pk if action == "cancel_reservations" else t4_node.pk
    client = csrf_client(csrf_world, "admin")
    before = snapshot()

    response = client.post(changelist, {"action": action, "_selected_action": [target]})

    assert response.status_code == 403
    assert snapshot() == before
