"""Shared fixtures: a frozen clock, a small fleet, customers and API clients."""

import importlib
from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection
from rest_framework.test import APIClient

from allocation.models import Cohort, CohortMembership
from allocation.services import quota_set

from .factories import CustomerFactory, NodeFactory, RegionFactory, gpu_model, member_with_token

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


@pytest.fixture(autouse=True)
def gpu_catalogue(request):
    """Re-seed the GPU model catalogue and the scheduler's classes and queues, which the flush after a
    transactional test removes."""
    uses_database = request.node.get_closest_marker("django_db") is not None
    if not uses_database and "db" not in request.fixturenames:
        return
    if not uses_database:
        request.getfixturevalue("db")
    from marketplace.models import GpuModel

    seed = importlib.import_module("marketplace.migrations.0002_seed_gpu_models")
    for name, vendor, memory_gib, description in seed.CATALOGUE:
        GpuModel.objects.get_or_create(
            name=name, defaults={"vendor": vendor, "memory_gib": memory_gib, "description": description},
        )
    from django.apps import apps

    importlib.import_module("scheduler.migrations.0002_seed_classes_and_queue").seed(apps, None)


def cache_empty() -> None:
    """Delete the cache's keys. On Redis only those: clear() would empty the whole Redis database, which the
    Celery broker and the heartbeat queue of a running stack may share."""
    from django.core.cache import cache

    if hasattr(cache, "delete_pattern"):
        cache.delete_pattern("*")
    else:
        cache.clear()


@pytest.fixture(autouse=True, scope="session")
def capacity_ledger_covers_test_times():
    """Let the capacity ledger cover the tests' fixed times, which lie in the past."""
    from django.conf import settings

    settings.MARKETPLACE["CAPACITY_LEDGER_LOOKBACK_SECONDS"] = 20 * 365 * 86400


@pytest.fixture(autouse=True)
def empty_cache():
    """Start every test with empty caches: cached alternatives are keyed by ids that tests reuse, and the
    catalogue cache and the capacity ledger contain rows that an earlier test's rollback or flush removed."""
    from allocation.ledger_sync import ledger_reset
    from marketplace import catalogue_cache

    cache_empty()
    catalogue_cache.forget()
    ledger_reset()


@pytest.fixture
def now():
    return NOW


@pytest.fixture
def require_postgres(db):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL")


@pytest.fixture
def region(db):
    return RegionFactory()


@pytest.fixture
def customer(db):
    return CustomerFactory(slug="acme", name="Acme")


@pytest.fixture
def other_customer(db):
    return CustomerFactory(slug="globex", name="Globex")


@pytest.fixture
def cohort(customer, other_customer, region):
    """Acme (own quota 1000) and Globex (own quota 2000) share a cohort; one 8-GPU node."""
    NodeFactory(hostname="eight", gpu_count=8, region=region)
    quota_set(organization=customer, gpu_model=None, max_gpu_milli=1000)
    quota_set(organization=other_customer, gpu_model=None, max_gpu_milli=2000)
    cohort = Cohort.objects.create(slug="research", name="Research")
    CohortMembership.objects.create(cohort=cohort, organization=customer)
    CohortMembership.objects.create(cohort=cohort, organization=other_customer)
    return cohort


@pytest.fixture
def t4_node(region):
    """A node with two T4 GPUs, 64 cores and 256 GiB."""
    return NodeFactory(hostname="t4-a", gpu_model=gpu_model("T4"), gpu_count=2, region=region)


@pytest.fixture
def api(customer):
    """An API client authenticated as a member of ``customer``."""
    user, token = member_with_token(customer, "alice")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    client.user = user
    return client


@pytest.fixture
def other_api(other_customer):
    user, token = member_with_token(other_customer, "bob")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client
