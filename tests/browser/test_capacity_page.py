"""An admin tries what-if settings on the capacity page, proposes the plan and approves it, in a real browser."""

import pytest

from capacity.models import CapacityPlan

from ..capacity.conftest import planned_fleet  # noqa: F401 - a fixture shared with the capacity tests
from .conftest import admin_log_in

pytestmark = pytest.mark.django_db(transaction=True)


def log_in(page, live_server):
    admin_log_in(page, live_server, "/ops/capacity/")


def test_what_if_then_propose_and_approve(page, live_server, admin_user, planned_fleet):
    log_in(page, live_server)
    decision = page.locator("#line-market-t4-eu-central td[data-delta]")
    assert decision.get_attribute("data-delta") == "4"
    assert page.locator("#chart-market-t4-eu-central svg polyline.forecast").count() == 1

    page.select_option("select[name=service_level]", "0.99")
    page.wait_for_selector("#line-market-t4-eu-central td[data-delta='9']")

    page.fill("input[name=growth_pct_per_month]", "-100")
    page.click("#whatif button[type=submit]")
    page.wait_for_selector("text=growth_pct_per_month:")

    page.fill("input[name=growth_pct_per_month]", "0")
    page.click("#whatif button[type=submit]")
    page.wait_for_selector("#line-market-t4-eu-central td[data-delta='9']")

    page.click("text=Propose this plan")
    page.wait_for_selector("text=proposed.")
    plan = CapacityPlan.objects.get()
    assert float(plan.service_level) == 0.99
    assert plan.lines.get().delta == 9

    page.click(f"#plan-{plan.pk} button[value=approve]")
    page.wait_for_selector(f"text=Plan {plan.pk} approved.")
    plan.refresh_from_db()
    assert plan.status == CapacityPlan.Status.APPROVED


def test_reject_without_reason_shows_the_message(page, live_server, admin_user, planned_fleet):
    log_in(page, live_server)
    page.click("text=Propose this plan")
    page.wait_for_selector("text=proposed.")
    plan = CapacityPlan.objects.get()

    page.click(f"#plan-{plan.pk} button[value=reject]")
    page.wait_for_selector("text=Give a reason for rejecting the plan")

    page.fill(f"#plan-{plan.pk} input[name=reason]", "Providers in eu-central are full")
    page.click(f"#plan-{plan.pk} button[value=reject]")
    page.wait_for_selector(f"text=Plan {plan.pk} rejected.")
    plan.refresh_from_db()
    assert plan.decision_note == "Providers in eu-central are full"
