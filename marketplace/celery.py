"""Celery application; the broker comes from ``REDIS_URL`` through Django settings."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")

# Every task runs once per message, however often Redis delivers it (see marketplace.task_ledger).
app = Celery("marketplace", task_cls="marketplace.task_ledger:OnceTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
