"""Operations: liveness and readiness, throttling with Retry-After, and the production settings' deploy check."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from scheduler.agents import node_credential_issue

from ..factories import NodeFactory

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_liveness_needs_nothing(client):
    response = client.get("/health/live/")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readiness_checks_the_database(client, settings):
    settings.REDIS_URL = ""

    response = client.get("/health/ready/?format=json")

    assert response.status_code == 200
    assert list(response.json()) == ["Database(alias='default')"]


@pytest.mark.django_db
def test_readiness_fails_without_workers(client, settings):
    if not settings.REDIS_URL:
        pytest.skip("needs Redis: set REDIS_URL")

    response = client.get("/health/ready/?format=json")

    assert response.status_code == 503
    assert "OK" not in response.json()[next(name for name in response.json() if name.startswith("Ping"))]


@pytest.mark.django_db
def test_web_readiness_ignores_missing_workers(client, settings):
    if not settings.REDIS_URL:
        pytest.skip("needs Redis: set REDIS_URL")

    response = client.get("/health/ready/web/?format=json")

    assert response.status_code == 200
    assert list(response.json()) == ["Database(alias='default')"]


@pytest.mark.django_db
def test_customer_over_the_rate_gets_429_with_retry_after(api, monkeypatch):
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"agent": "3/minute", "user": "3/minute",
                                                                "anon": "3/minute"})

    statuses = [api.get("/api/v1/reservations/").status_code for _ in range(3)]
    response = api.get("/api/v1/reservations/")

    assert statuses == [200, 200, 200]
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    assert response.json()["code"] == "throttled"


@pytest.mark.django_db
def test_agents_are_throttled_per_node_key(t4_node, monkeypatch):
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"agent": "2/minute", "user": "100/minute",
                                                                "anon": "100/minute"})
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {node_credential_issue(node=t4_node)}")

    statuses = [client.get("/api/v1/agent/assignments/").status_code for _ in range(3)]

    assert statuses == [200, 200, 429]


@pytest.mark.django_db
def test_agents_share_no_address_budget(region, monkeypatch):
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"agent": "100/minute", "user": "100/minute",
                                                                "anon": "2/minute"})
    nodes = [NodeFactory(hostname=f"nat-{index}", region=region) for index in range(3)]
    statuses = []
    for node in nodes:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Node {node_credential_issue(node=node)}")
        statuses += [client.get("/api/v1/agent/assignments/").status_code for _ in range(2)]

    assert statuses == [200] * 6


@pytest.mark.django_db
def test_spoofed_forwarded_for_spends_no_other_budget(api, monkeypatch):
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"agent": "100/minute", "user": "100/minute",
                                                                "anon": "2/minute"})
    anonymous = APIClient()
    for _ in range(3):
        anonymous.get("/api/schema/", HTTP_X_FORWARDED_FOR="10.9.9.9")

    assert anonymous.get("/api/schema/", HTTP_X_FORWARDED_FOR="10.1.1.1").status_code == 429
    assert api.get("/api/v1/reservations/").status_code == 200


def test_production_settings_pass_the_deploy_check():
    environment = {**os.environ, "DEBUG": "false", "SECRET_KEY": secrets.token_urlsafe(50),
                   "ALLOWED_HOSTS": "marketplace.example.com"}
    # The browser tests set this for Playwright in the test process; a deployment never has it.
    environment.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    completed = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                               cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=120)

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "no issues" in completed.stdout


def test_unstorable_value_in_a_page_gets_400(rf):
    from django.db import DataError

    from marketplace.middleware import DatabaseUnavailableMiddleware

    middleware = DatabaseUnavailableMiddleware(lambda request: None)
    response = middleware.process_exception(rf.post("/ops/approvals/decide/"),
                                            DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"))

    assert response.status_code == 400
    assert b"NUL character" in response.content


@pytest.mark.django_db
def test_metrics_rejects_post_with_405_not_csrf_page():
    from django.test import Client

    response = Client(enforce_csrf_checks=True).post("/metrics")

    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
