"""Celery application; the broker comes from ``REDIS_URL`` through Django settings."""

import os

from celery import Celery
from celery.signals import worker_process_shutdown
from prometheus_client import multiprocess

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")

# Every task runs once per message, however often Redis delivers it (see marketplace.task_ledger).
app = Celery("marketplace", task_cls="marketplace.task_ledger:OnceTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_shutdown.connect
def _mark_metrics_process_dead(pid=None, **kwargs):
    """Remove an exiting pool process's live-gauge files in prometheus_client's multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid or os.getpid())
