"""An admin reads a pending preemption, tries to reject it without a reason, then approves it, in a real browser."""

from datetime import timedelta

import pytest
from django.utils import timezone

from allocation.models import ReservationStatus
from allocation.services import ReservationSpec, reservation_create
from scheduler.cycle import scheduling_cycle
from scheduler.models import Preemption

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "browser-test-password"


def reserve(customer, **terms):
    now = timezone.now()
    return reservation_create(customer=customer, spec=ReservationSpec(
        gpu_count=2, gpu_milli_per_gpu=1000, cpu_millicores=1000, memory_mib=1024, start_at=now,
        end_at=now + timedelta(hours=2), **terms))


def test_pending_preemption_is_shown_then_approved(page, live_server, django_user_model, customer, other_customer,
                                                   t4_node):
    django_user_model.objects.create_superuser("boss", "boss@example.com", PASSWORD)
    victim = reserve(other_customer, priority_class="low", interruptible=True)
    beneficiary = reserve(customer, priority_class="high", queue_if_unavailable=True)
    assert beneficiary.status == ReservationStatus.QUEUED
    scheduling_cycle()
    preemption = Preemption.objects.get()

    page.goto(f"{live_server.url}/admin/login/?next=/ops/preemptions/")
    page.fill("#id_username", "boss")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/ops/preemptions/")

    section = f"#preemption-{preemption.pk}"
    assert f"For reservation {beneficiary.pk} of {customer.slug}" in page.inner_text(section)
    assert str(victim.pk) in page.inner_text(f"{section} table.victims")
    assert "cheapest set" in page.inner_text(f"{section} .why")

    page.click(f"{section} button[value=reject]")
    page.wait_for_selector("text=give a reason to reject it")

    page.click(f"{section} button[value=approve]")
    page.wait_for_selector(f"text=Preemption {preemption.pk} approved")
    assert page.inner_text("#no-pending") == "No preemption waits for approval."
    assert "grace" in page.inner_text("#history")
    preemption.refresh_from_db()
    assert preemption.status == Preemption.Status.GRACE
