"""The capacity page over HTTP: staff only, what-if previews, proposals and decisions, errors as 4xx."""

import pytest

from capacity.models import CapacityPlan

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw")
    client.force_login(user)
    return client


def test_page_needs_staff(client, planned_fleet):
    response = client.get("/ops/capacity/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_page_shows_the_default_plan_with_a_chart(staff, planned_fleet):
    response = staff.get("/ops/capacity/")

    body = response.content.decode()
    assert response.status_code == 200
    assert 'id="line-market-t4-eu-central"' in body
    assert "<svg" in body
    assert 'class="forecast"' in body
    assert 'class="capacity"' in body


def test_preview_recomputes_and_rejects_bad_input(staff, planned_fleet):
    good = staff.get("/ops/capacity/preview/", {"service_level": "0.99", "horizon_hours": "24"})
    assert good.status_code == 200
    assert 'data-delta="9"' in good.content.decode()

    bad = staff.get("/ops/capacity/preview/", {"service_level": "0.42", "growth_pct_per_month": "NaN"})
    assert bad.status_code == 400
    assert "service_level:" in bad.content.decode()
    assert "growth_pct_per_month:" in bad.content.decode()


def test_propose_then_approve(staff, planned_fleet):
    proposed = staff.post("/ops/capacity/plans/", {"service_level": "0.9", "horizon_hours": "48"})
    plan = CapacityPlan.objects.get()
    assert proposed.status_code == 200
    assert f"Plan {plan.pk} proposed." in proposed.content.decode()

    decided = staff.post(f"/ops/capacity/plans/{plan.pk}/decide/", {"decision": "approve"})
    assert decided.status_code == 200
    assert f"Plan {plan.pk} approved." in decided.content.decode()

    again = staff.post(f"/ops/capacity/plans/{plan.pk}/decide/", {"decision": "reject", "reason": "late"})
    assert again.status_code == 409
    assert "already approved" in again.content.decode()

    detail = staff.get(f"/ops/capacity/plans/{plan.pk}/")
    assert detail.status_code == 200
    assert "T4 in eu-central" in detail.content.decode()


def test_reject_needs_a_reason_and_a_decision(staff, planned_fleet):
    staff.post("/ops/capacity/plans/", {})
    plan = CapacityPlan.objects.get()

    assert staff.post(f"/ops/capacity/plans/{plan.pk}/decide/", {"decision": "reject"}).status_code == 400
    assert staff.post(f"/ops/capacity/plans/{plan.pk}/decide/", {"decision": "maybe"}).status_code == 400
    assert staff.post(f"/ops/capacity/plans/{plan.pk + 9}/decide/", {"decision": "approve"}).status_code == 404
    plan.refresh_from_db()
    assert plan.status == CapacityPlan.Status.PROPOSED


def test_staff_without_permission_cannot_decide(client, django_user_model, planned_fleet):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    client.force_login(viewer)
    assert client.get("/ops/capacity/").status_code == 403

    viewer.user_permissions.add(Permission.objects.get(codename="view_capacityplan"))
    assert client.get("/ops/capacity/").status_code == 200
    assert client.post("/ops/capacity/plans/", {}).status_code == 403
    assert CapacityPlan.objects.count() == 0


def test_propose_without_forecasts_says_what_to_do(staff):
    response = staff.post("/ops/capacity/plans/", {})
    assert response.status_code == 400
    assert "import_demand" in response.content.decode()


def test_proposing_the_same_plan_twice_is_a_409(staff, planned_fleet):
    assert staff.post("/ops/capacity/plans/", {}).status_code == 200
    again = staff.post("/ops/capacity/plans/", {})
    assert again.status_code == 409
    assert "already waiting" in again.content.decode()


def test_bad_proposal_names_each_field(staff, planned_fleet):
    response = staff.post("/ops/capacity/plans/", {"service_level": "0.42", "horizon_hours": "0"})
    body = response.content.decode()
    assert response.status_code == 400
    assert "service_level:" in body
    assert "horizon_hours:" in body
