"""An admin works the approval queue in a real browser."""

import pytest
from django.utils import timezone

from allocation.models import ApprovalPolicy, ReservationStatus
from allocation.services import ReservationSpec, reservation_create

from ..conftest import hours
from ..factories import NodeFactory

from .conftest import ADMIN_PASSWORD, ADMIN_USERNAME, admin_log_in

pytestmark = pytest.mark.django_db(transaction=True)

@pytest.fixture
def queue(customer, region, django_user_model):
    """Two reservations of a flagged customer pending approval, and a superuser to decide."""
    NodeFactory(hostname="t4-browser", gpu_count=2, region=region)
    ApprovalPolicy.objects.create(organization=customer, flagged=True)
    django_user_model.objects.create_superuser(ADMIN_USERNAME, "boss@example.com", ADMIN_PASSWORD)
    now = timezone.now()
    return [
        reservation_create(customer=customer, spec=ReservationSpec(
            gpu_count=1, gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024,
            start_at=now + hours(1 + index), end_at=now + hours(2 + index), external_ref=f"job-{index}",
        ))
        for index in range(2)
    ]


def log_in(page, live_server):
    admin_log_in(page, live_server, "/ops/approvals/")


def test_admin_approves_one_and_rejects_other(page, live_server, queue):
    first, second = queue
    log_in(page, live_server)
    assert page.locator(f"#reservation-{first.pk}").is_visible()
    assert page.locator(f"#reservation-{second.pk}").is_visible()

    page.check(f"#reservation-{first.pk} input[name=ids]")
    page.click("button[value=approve]")
    page.wait_for_selector(f"text=Reservation {first.pk} approved.")

    page.check(f"#reservation-{second.pk} input[name=ids]")
    page.fill("input[name=reason]", "Quarterly budget exhausted")
    page.click("button[value=reject]")
    page.wait_for_selector(f"text=Reservation {second.pk} rejected.")

    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == ReservationStatus.SCHEDULED
    assert second.status == ReservationStatus.REJECTED
    assert second.reason_detail == "Quarterly budget exhausted"
    assert page.locator(f"#reservation-{first.pk}").count() == 0


def test_reject_without_reason_shows_message(page, live_server, queue):
    first, _ = queue
    log_in(page, live_server)

    page.check(f"#reservation-{first.pk} input[name=ids]")
    page.click("button[value=reject]")

    alert = page.locator("[role=alert]")
    alert.wait_for()
    assert "needs a reason" in alert.inner_text()
    first.refresh_from_db()
    assert first.status == ReservationStatus.PENDING_APPROVAL


def test_filter_and_live_refresh(page, live_server, queue, customer):
    first, second = queue
    log_in(page, live_server)

    page.fill("input[name=min_gpus]", "2")
    page.locator("input[name=min_gpus]").dispatch_event("change")
    page.wait_for_selector(f"#reservation-{first.pk}", state="detached")

    page.fill("input[name=min_gpus]", "")
    page.locator("input[name=min_gpus]").dispatch_event("change")
    page.wait_for_selector(f"#reservation-{first.pk}")
    now = timezone.now()
    third = reservation_create(customer=customer, spec=ReservationSpec(
        gpu_count=1, gpu_milli_per_gpu=500, cpu_millicores=1000, memory_mib=1024,
        start_at=now + hours(5), end_at=now + hours(6),
    ))
    page.wait_for_selector(f"#reservation-{third.pk}", timeout=12_000)
