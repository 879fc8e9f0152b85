"""Prometheus metrics: the /metrics access rules, django-prometheus's request metrics, the domain
metrics after real API calls, a failing reader, and multiprocess mode across processes."""

import os
import runpy
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.db import OperationalError
from prometheus_client.parser import text_string_to_metric_families

from capacity.models import DemandForecast, DemandSeries
from marketplace import metric_collectors
from marketplace.metrics import solver_run_observe

pytestmark = pytest.mark.django_db

REPO_ROOT = Path(__file__).resolve().parents[2]
PROBLEM_KEYS = {"type", "title", "status", "detail", "code"}


def scrape(client, **headers) -> dict[tuple[str, frozenset], float]:
    """GET /metrics and return every sample as {(name, labels): value}."""
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def decision(samples: dict, outcome: str, reason: str = "", source: str = "request") -> float:
    return value(samples, "marketplace_reservation_decisions_total", outcome=outcome, reason=reason,
                 source=source) or 0.0


def soon(hours: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(hours=hours)).isoformat()


def assert_problem(response, status: int, code: str) -> dict:
    data = response.json()
    assert response.status_code == status, data
    assert response["Content-Type"].startswith("application/problem+json")
    assert PROBLEM_KEYS <= set(data)
    assert data["code"] == code
    return data


# Access rules


def test_loopback_client_may_scrape(client, settings):
    settings.METRICS_TOKEN = ""

    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert client.get("/metrics", REMOTE_ADDR=address).status_code == 200, address


def test_remote_client_gets_403(client, settings):
    settings.METRICS_TOKEN = ""

    response = client.get("/metrics", REMOTE_ADDR="10.1.2.3")

    data = assert_problem(response, 403, "permission_denied")
    assert "METRICS_TOKEN" in data["detail"]


def test_proxied_loopback_client_gets_403(client, settings):
    settings.METRICS_TOKEN = ""

    forwarded = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9")
    standard = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_FORWARDED="for=203.0.113.9")

    assert_problem(forwarded, 403, "permission_denied")
    assert_problem(standard, 403, "permission_denied")


def test_token_is_required_when_set(client, settings):
    settings.METRICS_TOKEN = "scrape-secret"

    missing = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    wrong = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION="Bearer guessed")
    other_scheme = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION="Token scrape-secret")

    for response in (missing, wrong, other_scheme):
        assert_problem(response, 401, "not_authenticated")
        assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'


def test_token_admits_remote_client(client, settings):
    settings.METRICS_TOKEN = "scrape-secret"

    response = client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer scrape-secret")

    assert response.status_code == 200
    assert b"django_http_requests_total_by_method_total" in response.content


def test_post_is_405(client, settings):
    settings.METRICS_TOKEN = ""

    response = client.post("/metrics", REMOTE_ADDR="127.0.0.1")

    assert_problem(response, 405, "method_not_allowed")
    assert response["Allow"] == "GET, HEAD"


# What a scrape shows


def test_scrape_shows_request_metrics(client, settings):
    settings.METRICS_TOKEN = ""
    client.get("/health/live/")

    samples = scrape(client)

    assert value(samples, "django_http_requests_total_by_view_transport_method_total",
                 view="health-live", transport="http", method="GET") >= 1
    assert value(samples, "django_http_responses_total_by_status_total", status="200") >= 1
    assert any(name == "django_http_requests_latency_seconds_by_view_method_count" for name, _ in samples)
    assert any(name == "django_db_execute_total" for name, _ in samples)


def test_scrape_after_reservations(client, api, settings, t4_node, django_capture_on_commit_callbacks):
    settings.METRICS_TOKEN = ""
    before = scrape(client)

    with django_capture_on_commit_callbacks(execute=True):
        placed = api.post("/api/v1/reservations/", {"gpu_count": 1, "gpu_milli_per_gpu": 500, "end_at": soon(2)},
                          format="json")
        queued = api.post("/api/v1/reservations/", {"gpu_count": 2, "end_at": soon(2),
                                                    "queue_if_unavailable": True}, format="json")
        rejected = api.post("/api/v1/reservations/", {"gpu_count": 3, "end_at": soon(2)}, format="json")
    after = scrape(client)

    assert placed.status_code == 201, placed.json()
    assert placed.json()["status"] == "active"
    assert queued.json()["status"] == "queued", queued.json()
    reason = rejected.json()["reason_code"]
    assert decision(after, "placed") - decision(before, "placed") == 1
    assert decision(after, "queued", "no_capacity") - decision(before, "queued", "no_capacity") == 1
    assert decision(after, "rejected", reason) - decision(before, "rejected", reason) == 1
    assert value(after, "marketplace_reservations", status="active") == 1
    assert value(after, "marketplace_reservations", status="queued") == 1
    assert value(after, "marketplace_reservations", status="scheduled") == 0
    assert value(after, "marketplace_queue_waiting_reservations", queue="default", priority_class="standard") == 1
    assert value(after, "marketplace_queue_waiting_reservations", queue="fifo", priority_class="standard") == 0
    assert value(after, "marketplace_gpu_bookable_milli", gpu_model="T4") == 2000
    assert value(after, "marketplace_gpu_allocated_milli", gpu_model="T4") == 500
    assert value(after, "marketplace_gpu_allocation_ratio", gpu_model="T4") == 0.25
    assert value(after, "marketplace_gpu_bookable_milli", gpu_model="A10") == 0
    assert value(after, "marketplace_gpu_allocation_ratio", gpu_model="A10") is None


def test_rolled_back_decision_is_not_counted(client, api, settings, t4_node):
    settings.METRICS_TOKEN = ""
    before = scrape(client)

    # The test's transaction never commits, so the on-commit count never runs.
    api.post("/api/v1/reservations/", {"gpu_count": 1, "end_at": soon(2)}, format="json")

    assert decision(scrape(client), "placed") == decision(before, "placed")


def test_scrape_shows_solver_time(client, settings):
    settings.METRICS_TOKEN = ""
    labels = {"kind": "batch", "policy": "cp_sat/scheduler_cycle"}
    before = value(scrape(client), "marketplace_solver_run_seconds_count", **labels) or 0.0

    solver_run_observe(kind="batch", policy="cp_sat/scheduler_cycle", wall_seconds=0.3)

    after = scrape(client)
    assert value(after, "marketplace_solver_run_seconds_count", **labels) == before + 1
    assert value(after, "marketplace_solver_run_seconds_bucket", le="+Inf", **labels) == before + 1


def test_scrape_shows_newest_forecast_error(client, settings):
    settings.METRICS_TOKEN = ""
    series = DemandSeries.objects.create(key="market-model1-region1", label="T4 in region 1",
                                         source=DemandSeries.Source.MARKETPLACE)
    common = {"series": series, "first_hour": datetime(2026, 6, 1, tzinfo=timezone.utc), "horizon_hours": 24,
              "status": "ok", "quantiles": {}, "history_hours": 500}
    DemandForecast.objects.create(model_name="ets", backtest_mase={"ets": 1.4}, **common)
    newest = DemandForecast.objects.create(model_name="sarimax", backtest_mase={"sarimax": 0.7, "ets": 0.9}, **common)
    DemandForecast.objects.create(series=DemandSeries.objects.create(key="flat", label="flat", source="imported"),
                                  first_hour=common["first_hour"], horizon_hours=24, status="constant",
                                  model_name="constant", backtest_mase={}, quantiles={}, history_hours=10)

    samples = scrape(client)

    assert value(samples, "marketplace_forecast_backtest_mase", series=series.key, model="sarimax") == 0.7
    assert value(samples, "marketplace_forecast_backtest_mase", series=series.key, model="ets") is None
    assert value(samples, "marketplace_forecast_backtest_mase", series="flat", model="constant") is None
    assert value(samples, "marketplace_forecast_created_timestamp_seconds", series=series.key) == pytest.approx(
        newest.created_at.timestamp())


def test_heartbeat_queue_length(client, settings):
    settings.METRICS_TOKEN = ""
    if not settings.REDIS_URL:
        settings.MARKETPLACE = {**settings.MARKETPLACE, "HEARTBEAT_QUEUE": True}
        samples = scrape(client)
        assert not any(name == "marketplace_heartbeat_queue_length" for name, _ in samples)
        return
    from providers import heartbeat_queue

    settings.MARKETPLACE = {**settings.MARKETPLACE, "HEARTBEAT_QUEUE": True}
    redis = heartbeat_queue._redis()
    redis.delete(heartbeat_queue.QUEUE_KEY)
    try:
        redis.rpush(heartbeat_queue.QUEUE_KEY, "{}", "{}", "{}")
        assert value(scrape(client), "marketplace_heartbeat_queue_length") == 3
    finally:
        redis.delete(heartbeat_queue.QUEUE_KEY)


def test_failing_reader_is_skipped(client, settings, monkeypatch, caplog):
    settings.METRICS_TOKEN = ""

    def database_down():
        raise OperationalError("connection refused")
        yield  # a generator, like the real readers

    monkeypatch.setitem(metric_collectors.READERS, "reservations", database_down)

    samples = scrape(client)

    assert value(samples, "marketplace_metrics_collector_up", collector="reservations") == 0
    assert value(samples, "marketplace_metrics_collector_up", collector="queue") == 1
    assert not any(name == "marketplace_reservations" for name, _ in samples)
    assert any(name == "marketplace_gpu_bookable_milli" for name, _ in samples)
    assert "Metrics reader reservations failed" in caplog.text


# Multiprocess mode


WRITER = """
import django
django.setup()
from marketplace import metrics
metrics.RESERVATION_DECISIONS.labels("placed", "", "scheduler").inc()
metrics.solver_run_observe(kind="rebalance", policy="greedy_moves/test", wall_seconds=0.2)
"""


def write_metrics_in_new_process(directory: Path) -> None:
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "SECRET_KEY": "x"}
    subprocess.run([sys.executable, "-c", WRITER], cwd=REPO_ROOT, env=environment, check=True, timeout=120)


def test_scrape_sums_other_processes(client, settings, monkeypatch, tmp_path):
    settings.METRICS_TOKEN = ""
    write_metrics_in_new_process(tmp_path)
    write_metrics_in_new_process(tmp_path)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    samples = scrape(client)

    assert decision(samples, "placed", source="scheduler") == 2
    assert value(samples, "marketplace_solver_run_seconds_count", kind="rebalance", policy="greedy_moves/test") == 2
    assert value(samples, "marketplace_solver_run_seconds_sum", kind="rebalance",
                 policy="greedy_moves/test") == pytest.approx(0.4)
    assert value(samples, "marketplace_metrics_collector_up", collector="reservations") == 1


def test_missing_multiprocess_directory_is_503(client, settings, monkeypatch, tmp_path):
    settings.METRICS_TOKEN = ""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))

    response = client.get("/metrics")

    data = assert_problem(response, 503, "service_unavailable")
    assert "PROMETHEUS_MULTIPROC_DIR" in data["detail"]


def test_gunicorn_child_exit_removes_live_gauges(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    live_gauge = tmp_path / "gauge_livesum_4242.db"
    counter = tmp_path / "counter_4242.db"
    live_gauge.write_bytes(b"")
    counter.write_bytes(b"")
    hooks = runpy.run_path(str(REPO_ROOT / "gunicorn.conf.py"))

    hooks["child_exit"](None, SimpleNamespace(pid=4242))

    assert not live_gauge.exists()
    assert counter.exists()
