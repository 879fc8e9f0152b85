"""The pull interface of provider agents: keys scoped to one node, assignments, and status reports.

An agent polls ``GET /api/v1/agent/assignments/`` with its node's key. The response lists
what to start (active reservations placed on the node) and what to stop (reservations that
ended, were cancelled or are being preempted). The agent reports ``started``, ``exited`` with its
exit code, or ``failed`` (the work could not start). Exit 0 completes the reservation and frees
the rest of its window; another exit fails it. A failed start moves the reservation to another
node, up to ``MAX_START_ATTEMPTS`` starts in all.
"""

import logging
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from allocation.models import Reservation, ReservationStatus
from allocation.services import reservation_finish_early, reservation_move_after_failed_start
from marketplace.audit import audit_record
from marketplace.exceptions import FieldProblem, InvalidRequest, InvalidTransition, NotFound
from marketplace.models import Node
from providers.metering import usage_record

from .models import Assignment, Decision, Migration, NodeCredential, Preemption, PreemptionVictim, Workload

logger = logging.getLogger(__name__)

KEY_PREFIX = "mpn"
"""Node keys look like ``mpn_<prefix>_<secret>``."""


def node_credential_issue(*, node: Node, actor=None) -> str:
    """Create or replace ``node``'s agent key and return it; only its hash is stored, so show it once.

    The audit trail records ``node_key.issue`` or, when a key existed, ``node_key.rotate`` with the
    key prefixes (never the secret); ``actor`` None records the system.
    """
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    with transaction.atomic():
        previous = NodeCredential.objects.select_for_update().filter(node=node).values_list("prefix", flat=True).first()
        NodeCredential.objects.update_or_create(
            node=node,
            defaults={"prefix": prefix, "secret_hash": NodeCredential.hash_secret(secret), "last_seen_at": None},
        )
        audit_record(action="node_key.rotate" if previous else "node_key.issue", obj=node, actor=actor,
                     organization=node.provider_id,
                     details={"before": {"prefix": previous}, "after": {"prefix": prefix}})
    logger.info("Issued an agent key %s for node %s", prefix, node.hostname)
    return f"{KEY_PREFIX}_{prefix}_{secret}"


def node_credential_check(key: str) -> NodeCredential | None:
    """Return the credential that ``key`` proves, or None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    credential = NodeCredential.objects.select_related("node").filter(prefix=parts[1]).first()
    if credential is None or not secrets.compare_digest(credential.secret_hash, NodeCredential.hash_secret(parts[2])):
        return None
    return credential


def agent_assignments(*, node: Node, now: datetime | None = None) -> list[Assignment]:
    """Return what ``node``'s agent should start or stop now, creating assignments for newly active work."""
    now = now or timezone.now()
    active = list(Reservation.objects.filter(status=ReservationStatus.ACTIVE, allocation__node=node,
                                             allocation__start_at__lte=now, allocation__end_at__gt=now)
                  .exclude(assignments__node=node).values_list("id", flat=True))
    Assignment.objects.bulk_create([Assignment(reservation_id=reservation_id, node=node) for reservation_id in active],
                                   ignore_conflicts=True)
    _stop_new_assignments_of_leaving_work(node, active, now)

    # Work that ended before its agent started it needs no stop: close it.
    (Assignment.objects.filter(node=node, status=Assignment.Status.ASSIGNED)
     .filter(~Q(reservation__status=ReservationStatus.ACTIVE) | Q(reservation__end_at__lte=now))
     .update(status=Assignment.Status.STOPPED, finished_at=now))
    pending = (Assignment.objects.filter(node=node, status__in=[Assignment.Status.ASSIGNED, Assignment.Status.STARTED])
               .select_related("reservation").order_by("id"))
    NodeCredential.objects.filter(node=node).update(last_seen_at=now)
    return list(pending)


def _stop_new_assignments_of_leaving_work(node: Node, reservation_ids: list[int], now: datetime) -> None:
    """Ask the agent to stop new work that a preemption in its grace period, or a migration, is taking away."""
    if not reservation_ids:
        return
    preempted = (PreemptionVictim.objects.filter(reservation_id__in=reservation_ids,
                                                 preemption__status=Preemption.Status.GRACE)
                 .values_list("reservation_id", "preemption__grace_ends_at"))
    for reservation_id, grace_ends_at in preempted:
        Assignment.objects.filter(reservation_id=reservation_id, node=node, stop_requested_at__isnull=True).update(
            stop_requested_at=now, stop_by=grace_ends_at)
    moving = Migration.objects.filter(reservation_id__in=reservation_ids, from_node=node,
                                      status=Migration.Status.MOVING).values_list("reservation_id", flat=True)
    grace = timedelta(seconds=settings.MARKETPLACE["MIGRATION_STOP_SECONDS"])
    Assignment.objects.filter(reservation_id__in=list(moving), node=node, stop_requested_at__isnull=True).update(
        stop_requested_at=now, stop_by=now + grace)


def assignment_action(assignment: Assignment, now: datetime) -> str:
    """Return "start", "stop" or "run" (keep running) for the agent."""
    reservation = assignment.reservation
    ended = reservation.status != ReservationStatus.ACTIVE or reservation.end_at <= now
    if assignment.stop_requested_at is not None or ended:
        return "stop"
    return "start" if assignment.status == Assignment.Status.ASSIGNED else "run"


REPORT_STATES = ("started", "exited", "failed")


def agent_report(*, node: Node, assignment_id: int, state: str, exit_code: int | None = None, message: str = "",
                 now: datetime | None = None) -> Assignment:
    """Record an agent's report about one of its node's assignments; see the module docstring for the effects."""
    now = now or timezone.now()
    if state not in REPORT_STATES:
        raise InvalidRequest(f"state is {state[:32]!r}; use one of: {', '.join(REPORT_STATES)}.",
                             errors=[FieldProblem("state", f"Use one of: {', '.join(REPORT_STATES)}.", "invalid")])
    if state == "exited" and exit_code is None:
        raise InvalidRequest("An exited report needs its exit_code.",
                             errors=[FieldProblem("exit_code", "Send the process's exit code.", "required")])
    with transaction.atomic():
        try:
            assignment = Assignment.objects.select_for_update().get(pk=assignment_id, node=node)
        except Assignment.DoesNotExist:
            raise NotFound(f"Assignment {assignment_id} does not exist on this node.") from None
        reservation = Reservation.objects.select_for_update().get(pk=assignment.reservation_id)
        if assignment.status in (Assignment.Status.EXITED, Assignment.Status.FAILED, Assignment.Status.STOPPED):
            same = assignment.status == {"exited": Assignment.Status.EXITED, "failed": Assignment.Status.FAILED}.get(state)
            if same and (state != "exited" or exit_code == assignment.exit_code):
                return assignment  # a retried report changes nothing
            raise InvalidTransition(
                f"Assignment {assignment_id} is already {assignment.status}"
                f"{f' with exit code {assignment.exit_code}' if assignment.exit_code is not None else ''}; "
                f"a finished assignment takes no other report.", current=assignment.status, requested=state)
        if state == "failed" and assignment.status == Assignment.Status.STARTED:
            raise InvalidTransition(
                f"Assignment {assignment_id} already started; when its work stops, report exited with the exit code.",
                current=assignment.status, requested=state)
        assignment.message = message[:500]
        if state == "started":
            _started(assignment, reservation, now)
        elif state == "exited":
            _exited(assignment, reservation, exit_code, now)
        else:
            _failed(assignment, reservation, now)
        assignment.save()
    logger.info("Agent of %s reported %s for assignment %s (reservation %s)", node.hostname, state, assignment_id,
                reservation.pk)
    return assignment


def _started(assignment: Assignment, reservation: Reservation, now: datetime) -> None:
    if assignment.status == Assignment.Status.STARTED:
        return
    assignment.status, assignment.started_at = Assignment.Status.STARTED, now
    Decision.objects.create(reservation=reservation, kind=Decision.Kind.STARTED, at=now,
                            reason=f"The agent on {assignment.node.hostname} started the work.")


def _exited(assignment: Assignment, reservation: Reservation, exit_code: int, now: datetime) -> None:
    assignment.status, assignment.finished_at, assignment.exit_code = Assignment.Status.EXITED, now, exit_code
    usage_record(assignment=assignment, stopped_at=now)
    if assignment.stop_requested_at is not None or reservation.status != ReservationStatus.ACTIVE:
        return  # stopped on the marketplace's request; the reservation's status already records why
    succeeded = exit_code == 0
    note = (f"The work exited with code {exit_code} on {assignment.node.hostname}; "
            f"{'the rest of the window is released' if succeeded else 'the reservation failed'}.")
    reservation_finish_early(reservation=reservation, succeeded=succeeded, now=now, note=note)
    Decision.objects.create(reservation=reservation, kind=Decision.Kind.COMPLETED if succeeded else Decision.Kind.FAILED,
                            reason=note, at=now, detail={"exit_code": exit_code})


def _failed(assignment: Assignment, reservation: Reservation, now: datetime) -> None:
    assignment.status, assignment.finished_at = Assignment.Status.FAILED, now
    if reservation.status != ReservationStatus.ACTIVE or assignment.stop_requested_at is not None:
        return
    workload = Workload.objects.select_for_update().filter(pk=reservation.pk).first()
    attempts = (workload.start_attempts if workload else 0) + 1
    limit = settings.MARKETPLACE["MAX_START_ATTEMPTS"]
    failed_nodes = (list(workload.failed_node_ids) if workload else []) + [assignment.node_id]
    if workload:
        workload.start_attempts, workload.failed_node_ids = attempts, failed_nodes
        workload.save(update_fields=["start_attempts", "failed_node_ids"])
    detail = assignment.message or "no message"
    if attempts < limit:
        moved_to = reservation_move_after_failed_start(reservation=reservation, exclude_node_ids=failed_nodes, now=now)
        if moved_to is not None:
            Decision.objects.create(
                reservation=reservation, kind=Decision.Kind.START_RETRIED, at=now,
                reason=(f"The start failed on {assignment.node.hostname} ({detail}); attempt {attempts + 1} of "
                        f"{limit} goes to node {moved_to.hostname}."),
                detail={"attempt": attempts + 1, "node_id": moved_to.pk},
            )
            return
        reason = f"The start failed on {assignment.node.hostname} ({detail}) and no other node has room now."
    else:
        reason = f"The start failed {attempts} times, the last on {assignment.node.hostname} ({detail})."
    reservation_finish_early(reservation=reservation, succeeded=False, now=now, note=reason)
    Decision.objects.create(reservation=reservation, kind=Decision.Kind.FAILED, reason_code="start_failed",
                            reason=reason, at=now, detail={"attempts": attempts})
