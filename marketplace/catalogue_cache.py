"""A per-process cache of the small tables that every reservation reads: GPU models, priority classes, queues.

Each entry lives ``TTL_SECONDS``. A save or delete of one of these models in this process empties
the cache at once. Other processes see the change when their entry expires. A GPU model name it
does not know yet is looked up again before it is rejected.

NOTE: for up to ``TTL_SECONDS`` after an admin edit, another process may still apply the old
default priority class. A request naming a priority class or queue just deleted there gets 409
(retry) from the foreign key instead of 400 (unknown name).
"""

import time
from collections.abc import Callable
from typing import Any

TTL_SECONDS = 5.0

_entries: dict[str, tuple[float, Any]] = {}


def cached(key: str, load: Callable[[], Any]) -> Any:
    """Return the value cached under ``key``, calling ``load`` when it is missing or older than ``TTL_SECONDS``.

    A ``None`` from ``load`` is returned but not cached, so a missing row is looked up again next time.
    """
    now = time.monotonic()
    entry = _entries.get(key)
    if entry is not None and now - entry[0] < TTL_SECONDS:
        return entry[1]
    value = load()
    if value is not None:
        _entries[key] = (now, value)
    return value


def forget(*args, **kwargs) -> None:
    """Empty the cache. The save and delete signals of the cached models call it."""
    _entries.clear()


def connect_signals() -> None:
    """Empty the cache whenever this process saves or deletes a GPU model, priority class or queue."""
    from django.db.models.signals import post_delete, post_save

    from marketplace.models import GpuModel
    from scheduler.models import PriorityClass, Queue

    for model in (GpuModel, PriorityClass, Queue):
        post_save.connect(forget, sender=model, dispatch_uid=f"catalogue_cache_{model.__name__}_save")
        post_delete.connect(forget, sender=model, dispatch_uid=f"catalogue_cache_{model.__name__}_delete")
