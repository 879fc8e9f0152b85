"""Health rules: states, scores and reasons from one reading, probation, and a node's state."""

from datetime import datetime, timedelta, timezone

import pytest

from providers.health_rules import DEGRADED, FAILED, HEALTHY, evaluate_reading, next_gpu_state, node_state

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


@pytest.mark.parametrize("reading, state", [
    (dict(temperature_c=60, ecc_uncorrected=0, xid_events=[]), HEALTHY),
    (dict(temperature_c=60, ecc_uncorrected=0, xid_events=[13, 43]), HEALTHY),
    (dict(temperature_c=88, ecc_uncorrected=0, xid_events=[]), DEGRADED),
    (dict(temperature_c=60, ecc_uncorrected=2, xid_events=[]), DEGRADED),
    (dict(temperature_c=60, ecc_uncorrected=0, xid_events=[79]), FAILED),
    (dict(temperature_c=97, ecc_uncorrected=0, xid_events=[]), FAILED),
    (dict(temperature_c=None, ecc_uncorrected=0, xid_events=[]), HEALTHY),
])
def test_reading_state(reading, state):
    assert evaluate_reading(**reading).state == state


def test_failed_reading_names_its_reason():
    health = evaluate_reading(temperature_c=50, ecc_uncorrected=0, xid_events=[48])

    assert health.score == 0
    assert health.reasons == ["XID 48: double-bit ECC error"]


def test_recovered_gpu_waits_out_its_probation():
    healthy = evaluate_reading(temperature_c=50, ecc_uncorrected=0, xid_events=[])

    state, until, reasons = next_gpu_state(current=FAILED, observed=healthy, probation_until=None, now=NOW,
                                           probation=HOUR)
    assert (state, until) == (DEGRADED, NOW + HOUR)
    assert "probation" in reasons[0]

    state, until, _ = next_gpu_state(current=DEGRADED, observed=healthy, probation_until=NOW + HOUR,
                                     now=NOW + HOUR / 2, probation=HOUR)
    assert state == DEGRADED

    state, until, reasons = next_gpu_state(current=DEGRADED, observed=healthy, probation_until=NOW + HOUR,
                                           now=NOW + HOUR, probation=HOUR)
    assert (state, until, reasons) == (HEALTHY, None, [])


def test_worse_reading_during_probation_applies_at_once():
    hot = evaluate_reading(temperature_c=99, ecc_uncorrected=0, xid_events=[])

    state, until, _ = next_gpu_state(current=DEGRADED, observed=hot, probation_until=NOW + HOUR, now=NOW,
                                     probation=HOUR)

    assert (state, until) == (FAILED, None)


@pytest.mark.parametrize("states, expected", [
    ([], "unknown"), ([HEALTHY] * 4, "healthy"), ([HEALTHY, DEGRADED], "degraded"),
    ([FAILED, HEALTHY, HEALTHY], "degraded"), ([FAILED, FAILED, HEALTHY, HEALTHY], "unhealthy"),
])
def test_node_state(states, expected):
    assert node_state(states) == expected
