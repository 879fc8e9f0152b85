"""Health rules for GPU readings, with no Django imports: a state, a score and the reasons in words.

Sources for the thresholds: NVIDIA's XID catalogue (docs.nvidia.com, "XID Errors") names the
codes that mean a hardware or driver fault rather than an application error; the temperature
limits are conservative for data-centre GPUs, whose slowdown temperatures are about 85 to 90 C.
"""

from dataclasses import dataclass, field

HEALTHY, DEGRADED, FAILED = "healthy", "degraded", "failed"
RANK = {HEALTHY: 0, DEGRADED: 1, FAILED: 2}

FAILING_XIDS = {
    48: "double-bit ECC error",
    63: "ECC page retirement or row remapping event",
    64: "ECC page retirement or row remapping failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}
"""XID codes that take a GPU out of service."""
APPLICATION_XIDS = frozenset({13, 31, 43, 45})
"""XID codes that an application's own fault usually causes; they do not change the GPU's health."""
TEMPERATURE_DEGRADED_C = 85.0
TEMPERATURE_FAILED_C = 95.0


@dataclass(frozen=True)
class GpuHealth:
    state: str
    score: float
    """0 (failed) to 100 (healthy)."""
    reasons: list[str] = field(default_factory=list)


def evaluate_reading(*, temperature_c: float | None, ecc_uncorrected: int, xid_events: list[int]) -> GpuHealth:
    """Return the health that one reading shows."""
    state, score, reasons = HEALTHY, 100.0, []
    for xid in sorted(set(xid_events)):
        if xid in FAILING_XIDS:
            state, score = FAILED, 0.0
            reasons.append(f"XID {xid}: {FAILING_XIDS[xid]}")
        elif xid not in APPLICATION_XIDS:
            state = _worse(state, DEGRADED)
            score = min(score, 60.0)
            reasons.append(f"XID {xid}: unexpected driver event")
    if ecc_uncorrected > 0:
        state = _worse(state, DEGRADED)
        score = min(score, 50.0)
        reasons.append(f"{ecc_uncorrected} uncorrected ECC errors since the driver loaded")
    if temperature_c is not None and temperature_c >= TEMPERATURE_FAILED_C:
        state, score = FAILED, min(score, 10.0)
        reasons.append(f"temperature {temperature_c:.0f} C, at or above {TEMPERATURE_FAILED_C:.0f} C")
    elif temperature_c is not None and temperature_c >= TEMPERATURE_DEGRADED_C:
        state = _worse(state, DEGRADED)
        score = min(score, 70.0)
        reasons.append(f"temperature {temperature_c:.0f} C, at or above {TEMPERATURE_DEGRADED_C:.0f} C")
    return GpuHealth(state=state, score=score, reasons=reasons)


def next_gpu_state(*, current: str, observed: GpuHealth, probation_until, now, probation) -> tuple[str, object, list[str]]:
    """Return the GPU's new state, probation end and reasons after a reading.

    A worse reading applies at once. A healthy reading after a degraded or failed one starts a
    probation period (``probation``, a timedelta); the GPU stays degraded until it ends with only
    healthy readings. ``now`` and ``probation_until`` are datetimes.
    """
    if RANK[observed.state] > 0:
        return observed.state, None, observed.reasons
    if current == HEALTHY:
        return HEALTHY, None, []
    if probation_until is None:
        until = now + probation
        return DEGRADED, until, [f"recovered; on probation until {until:%Y-%m-%d %H:%M} UTC"]
    if now >= probation_until:
        return HEALTHY, None, []
    return DEGRADED, probation_until, [f"recovered; on probation until {probation_until:%Y-%m-%d %H:%M} UTC"]


def node_state(gpu_states: list[str]) -> str:
    """Return a node's health from its GPUs' states: unhealthy when half or more failed, degraded when any is not healthy."""
    if not gpu_states:
        return "unknown"
    failed = sum(1 for state in gpu_states if state == FAILED)
    if failed * 2 >= len(gpu_states):
        return "unhealthy"
    if any(state != HEALTHY for state in gpu_states):
        return "degraded"
    return "healthy"


def _worse(first: str, second: str) -> str:
    return first if RANK[first] >= RANK[second] else second
