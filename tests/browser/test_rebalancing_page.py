"""An admin proposes a rebalancing plan, reads why each move is proposed, and applies it, in a real browser."""

import pytest
import time_machine

from allocation.models import Allocation, RebalancePlan

from ..allocation.test_rebalancing import degrade_gpus_of, scheduled
from ..conftest import NOW
from ..factories import NodeFactory, gpu_model

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "browser-test-password"


def test_propose_read_and_apply(page, live_server, django_user_model, customer, region):
    django_user_model.objects.create_superuser("boss", "boss@example.com", PASSWORD)
    for hostname in ("t4-a", "t4-b"):
        NodeFactory(hostname=hostname, gpu_model=gpu_model("T4"), region=region)
    reservation = scheduled(customer)
    degrade_gpus_of(reservation)
    page.goto(f"{live_server.url}/admin/login/?next=/ops/rebalancing/")
    page.fill("#id_username", "boss")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/ops/rebalancing/")

    # The server's clock moves to when the reservation is still scheduled; logging in first keeps the
    # browser's session cookie valid by the browser's own clock.
    with time_machine.travel(NOW, tick=True):
        propose_reject_and_apply(page)
    plan = RebalancePlan.objects.get()
    assert Allocation.objects.get(reservation=reservation).node.hostname != plan.moves.get().from_node.hostname


def propose_reject_and_apply(page):
    page.click("text=Propose a plan now")
    page.wait_for_selector("text=proposed with 1 move.")
    plan = RebalancePlan.objects.get()
    assert "degraded" in page.inner_text(f"#plan-{plan.pk} table.moves")

    page.fill(f"#plan-{plan.pk} input[name=reason]", "")
    page.click(f"#plan-{plan.pk} button[value=reject]")
    page.wait_for_selector("text=Give a reason")

    page.click(f"#plan-{plan.pk} button[value=approve]")
    page.wait_for_selector(f"text=Plan {plan.pk} applied")
