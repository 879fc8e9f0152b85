"""The marketplace's own Prometheus metrics that code updates as events happen.

Gauges read from the database or Redis at scrape time live in ``metric_collectors.py``; the
endpoint that serves both is ``metrics_endpoint.py``.

Under ``make up`` every process writes these metrics to files in ``PROMETHEUS_MULTIPROC_DIR``
(prometheus_client's multiprocess mode), so a scrape of any web worker sums the counters and
histograms of all web and Celery processes. No metric has an organization label: labels come
from small fixed sets (outcomes, reason codes, solver names, queue and model names).
"""

from django.db import transaction
from prometheus_client import Counter, Histogram

from allocation.models import RejectionReason, ReservationStatus

OUTCOME_PLACED = "placed"
OUTCOME_PENDING_APPROVAL = "pending_approval"
OUTCOME_QUEUED = "queued"
OUTCOME_REJECTED = "rejected"

SOURCE_REQUEST = "request"
"""A new request through ``reservation_create`` (API, admin, trace replay)."""
SOURCE_SCHEDULER = "scheduler"
"""A queued reservation that the scheduling cycle placed."""

RESERVATION_DECISIONS = Counter(
    "marketplace_reservation_decisions",
    "Admission decisions on reservations, counted when their transaction commits. outcome is placed "
    "(scheduled or active), pending_approval, queued or rejected; reason is the reason code of a "
    "queued or rejected request, empty otherwise; source is request or scheduler.",
    ["outcome", "reason", "source"],
)

SOLVER_RUN_SECONDS = Histogram(
    "marketplace_solver_run_seconds",
    "Wall time of each recorded solver run (allocation.SolverRun), in seconds, by kind (batch or "
    "rebalance) and policy (solver/placement policy).",
    ["kind", "policy"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)

SCHEDULING_CYCLE_SECONDS = Histogram(
    "marketplace_scheduling_cycle_seconds",
    "Wall time of each scheduling cycle that had waiting work, database work included, in seconds.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0),
)


def _preinitialise_decisions() -> None:
    """Create the expected label sets at 0, so ``rate()`` finds a series before its first event."""
    for source in (SOURCE_REQUEST, SOURCE_SCHEDULER):
        RESERVATION_DECISIONS.labels(OUTCOME_PLACED, "", source)
        RESERVATION_DECISIONS.labels(OUTCOME_PENDING_APPROVAL, "", source)
    for reason in (RejectionReason.NO_CAPACITY, RejectionReason.QUOTA_EXCEEDED):
        RESERVATION_DECISIONS.labels(OUTCOME_QUEUED, reason.value, SOURCE_REQUEST)
    for reason in RejectionReason:
        if reason != RejectionReason.REJECTED_BY_ADMIN:
            RESERVATION_DECISIONS.labels(OUTCOME_REJECTED, reason.value, SOURCE_REQUEST)


_preinitialise_decisions()


def reservation_decision_record(*, status: str, reason: str, source: str) -> None:
    """Count one admission decision once the surrounding transaction commits.

    ``status`` is the reservation's status after the decision. A rolled-back transaction or
    savepoint (a crashed scheduling cycle, a refused queued placement) counts nothing. Outside a
    transaction the count happens at once.
    """
    if status in (ReservationStatus.SCHEDULED, ReservationStatus.ACTIVE):
        outcome, reason = OUTCOME_PLACED, ""
    elif status == ReservationStatus.PENDING_APPROVAL:
        outcome, reason = OUTCOME_PENDING_APPROVAL, ""
    elif status == ReservationStatus.QUEUED:
        outcome = OUTCOME_QUEUED
    elif status == ReservationStatus.REJECTED:
        outcome = OUTCOME_REJECTED
    else:
        raise ValueError(f"Status {status!r} is not an admission outcome. Expected scheduled, active, "
                         f"pending_approval, queued or rejected.")
    counter = RESERVATION_DECISIONS.labels(outcome, reason, source)
    transaction.on_commit(counter.inc)


def solver_run_observe(*, kind: str, policy: str, wall_seconds: float) -> None:
    """Observe one solver run's wall time in seconds, whether or not its record commits."""
    SOLVER_RUN_SECONDS.labels(str(kind), policy).observe(wall_seconds)
