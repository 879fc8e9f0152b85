"""Celery tasks of the core app."""

from datetime import timedelta

from celery import shared_task
from django.conf import settings

from .task_ledger import task_deliveries_purge


@shared_task(name="marketplace.purge_task_deliveries", acks_late=True)
def purge_task_deliveries_task() -> int:
    """Forget task deliveries older than the retention; a message is never delivered again that late."""
    return task_deliveries_purge(older_than=timedelta(hours=settings.MARKETPLACE["TASK_DELIVERY_RETENTION_HOURS"]))
