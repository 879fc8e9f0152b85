"""A provider logs in, reads its GPUs' live health, changes a price and books maintenance, in a real browser."""

from decimal import Decimal

import pytest
from django.utils import timezone

from marketplace.models import MaintenanceWindow, Membership
from providers.telemetry import heartbeats_ingest, node_register

from ..factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "browser-test-password"


def test_provider_portal_end_to_end(page, live_server, t4_node):
    user = UserFactory(username="provider-ann")
    user.set_password(PASSWORD)
    user.save()
    Membership.objects.create(user=user, organization=t4_node.provider)
    uuids = [str(uuid) for uuid in t4_node.gpus.order_by("index").values_list("uuid", flat=True)]
    node_register(node=t4_node, agent_version="test", inventory={"gpus": [
        {"index": index, "uuid": uuid, "model": "Tesla T4", "memory_mib": 15360} for index, uuid in enumerate(uuids)]})
    heartbeats_ingest(heartbeats=[(t4_node, [{"at": timezone.now(), "gpus": [
        {"uuid": uuids[0], "temperature_c": 50, "xid_events": [79]}, {"uuid": uuids[1], "temperature_c": 50}]}])])

    page.goto(f"{live_server.url}/provider/")
    page.fill("#id_username", "provider-ann")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/provider/")

    row = page.inner_text(f"#node-{t4_node.pk}")
    assert "unhealthy" in row
    assert "0:failed" in row
    assert "fallen off the bus" in row

    page.fill(f"#node-{t4_node.pk} input[name=price]", "abc")
    page.click(f"#node-{t4_node.pk} button")
    page.wait_for_selector("text=is not a price")
    page.fill(f"#node-{t4_node.pk} input[name=price]", "1.25")
    page.click(f"#node-{t4_node.pk} button")
    page.wait_for_selector("text=now costs 1.25 per GPU-hour")
    t4_node.refresh_from_db()
    assert t4_node.price_per_gpu_hour == Decimal("1.2500")

    page.fill("input[name=start_at]", "2030-01-01T10:00")
    page.fill("input[name=end_at]", "2030-01-01T14:00")
    page.fill("#maintenance input[name=reason]", "firmware update")
    page.click("text=Book maintenance")
    page.wait_for_selector("text=Maintenance of t4-a booked")
    assert MaintenanceWindow.objects.get().reason == "firmware update"
    assert "firmware update" in page.inner_text("#maintenance-table")
