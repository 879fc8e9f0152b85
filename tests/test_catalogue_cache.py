"""The per-process cache of GPU models, priority classes and queues."""

import pytest

from marketplace import catalogue_cache
from scheduler.models import PriorityClass
from scheduler.terms import default_priority_class

pytestmark = pytest.mark.django_db


def test_value_is_reused_until_it_expires(monkeypatch):
    loads = []
    clock = iter([100.0, 101.0, 100.0 + catalogue_cache.TTL_SECONDS + 1])
    monkeypatch.setattr(catalogue_cache.time, "monotonic", lambda: next(clock))

    def load():
        loads.append(1)
        return len(loads)

    assert catalogue_cache.cached("key", load) == 1
    assert catalogue_cache.cached("key", load) == 1
    assert catalogue_cache.cached("key", load) == 2


def test_missing_row_is_not_cached():
    loads = []

    def load():
        loads.append(1)

    catalogue_cache.cached("absent", load)
    catalogue_cache.cached("absent", load)

    assert len(loads) == 2


def test_saving_a_priority_class_empties_the_cache():
    first = default_priority_class()
    PriorityClass.objects.filter(pk=first.pk).update(is_default=False)
    newer = PriorityClass.objects.create(name="urgent-default", value=first.value + 1, is_default=True)

    assert default_priority_class() == newer


def test_new_gpu_model_found_after_cache_miss(customer, t4_node):
    from allocation.services import resolve_spec
    from marketplace.models import GpuModel

    from .allocation.test_database_guarantees import full_spec
    from .conftest import NOW

    resolve_spec(full_spec(), NOW)  # Caches the catalogue.
    GpuModel.objects.bulk_create([GpuModel(name="Z9", vendor="nvidia", memory_gib=80)])  # No signal.

    resolved = resolve_spec(full_spec(gpu_models=["Z9"]), NOW)

    assert [model.name for model in resolved.models] == ["Z9"]
