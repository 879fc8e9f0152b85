"""Every periodic task in beat's schedule names a task that the workers register."""

from django.conf import settings

from marketplace.celery import app


def test_beat_entries_name_registered_tasks():
    app.loader.import_default_modules()

    unknown = {name: entry["task"] for name, entry in settings.CELERY_BEAT_SCHEDULE.items()
               if entry["task"] not in app.tasks}

    assert unknown == {}

