"""Resolve a request's scheduling terms: its priority class, its queue and how long it may wait."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings

from marketplace.catalogue_cache import cached
from marketplace.exceptions import FieldProblem, InvalidRequest, MarketplaceError

from .models import PriorityClass, Queue

DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class WorkloadTerms:
    priority_class: PriorityClass
    queue: Queue
    latest_start_at: datetime | None


def workload_terms(spec, now: datetime) -> WorkloadTerms:
    """Return the terms of ``spec`` (an ``allocation.services.ReservationSpec``); raise ``InvalidRequest`` naming each bad field."""
    problems = []
    if spec.priority_class:
        priority_class = cached(f"priority_class:{spec.priority_class}",
                                lambda: PriorityClass.objects.filter(name=spec.priority_class).first())
        if priority_class is None:
            names = ", ".join(PriorityClass.objects.values_list("name", flat=True))
            problems.append(FieldProblem("priority_class", f"Unknown priority class {spec.priority_class[:64]!r}. "
                                                           f"Use one of: {names}.", "unknown"))
    else:
        priority_class = default_priority_class()

    queue_name = spec.queue or DEFAULT_QUEUE
    queue = cached(f"queue:{queue_name}", lambda: Queue.objects.filter(name=queue_name).first())
    if queue is None:
        names = ", ".join(Queue.objects.values_list("name", flat=True))
        problems.append(FieldProblem("queue", f"Unknown queue {queue_name[:64]!r}. Use one of: {names}.", "unknown"))

    latest = spec.latest_start_at
    max_wait = timedelta(seconds=settings.MARKETPLACE["QUEUE_MAX_WAIT_SECONDS"])
    if latest is not None:
        if not spec.queue_if_unavailable:
            problems.append(FieldProblem("latest_start_at", "latest_start_at applies to queued requests; also "
                                                            "send \"queue_if_unavailable\": true, or leave it out.",
                                         "unused"))
        elif latest < spec.start_at:
            problems.append(FieldProblem("latest_start_at", "latest_start_at must be at or after start_at.",
                                         "before_start"))
        elif latest > spec.start_at + max_wait:
            problems.append(FieldProblem(
                "latest_start_at", f"A request waits at most {max_wait} after its start_at; use "
                                   f"{(spec.start_at + max_wait).isoformat()} or earlier.", "too_late"))
    elif spec.queue_if_unavailable:
        latest = spec.start_at + max_wait

    if problems:
        summary = "; ".join(f"{problem.field}: {problem.message}" for problem in problems)
        raise InvalidRequest(f"The scheduling terms are invalid. {summary}", errors=problems)
    return WorkloadTerms(priority_class=priority_class, queue=queue, latest_start_at=latest)


def default_priority_class() -> PriorityClass:
    """Return the class marked default, or the lowest one when no class is marked (cached for up to 5 seconds)."""
    chosen = cached("priority_class:default", lambda: (
        PriorityClass.objects.filter(is_default=True).first() or PriorityClass.objects.order_by("value").first()
    ))
    if chosen is None:
        raise MarketplaceError(detail="No priority class exists; an admin has to create one in the admin.",
                               code="no_priority_class", status=503, title="Scheduler not configured")
    return chosen
