"""The audit trail: record each privileged decision as an ``AuditEvent`` in a hash chain, and verify the chain.

Services call ``audit_record`` inside the transaction that makes the decision, so a decision that
rolls back leaves no event. Each event stores the SHA-256 of its content together with
the previous event's hash. Changing, inserting or deleting a row in the middle of the chain
therefore breaks every later link, and ``audit_chain_verify`` finds the first broken row.

NOTE: deleting the newest rows leaves a shorter chain that still verifies. Record the head that
``manage.py verify_audit`` prints somewhere the web tier cannot write, to detect that.
"""

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import timezone as dt_timezone

import structlog
from django.contrib.auth.models import AbstractBaseUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models, transaction
from django.utils import timezone

from .models import AuditEvent, Node, Organization

logger = logging.getLogger(__name__)

AUDIT_LOCK_KEY = 7_410_002
"""PostgreSQL advisory lock key that serialises audit inserts, so the hash chain stays linear."""
GENESIS_HASH = "0" * 64
"""The ``previous_hash`` of the first event."""


@dataclass(frozen=True)
class ChainBreak:
    """The first event whose link in the hash chain does not hold."""

    sequence: int
    event_id: int
    problem: str


def audit_record(
    *,
    action: str,
    obj: models.Model | None = None,
    actor: AbstractBaseUser | None = None,
    actor_node: Node | None = None,
    actor_key_prefix: str = "",
    organization: Organization | int | None = None,
    details: dict | None = None,
    object_type: str = "",
    object_id: str | int = "",
) -> AuditEvent:
    """Append one event to the audit trail and return it.

    The actor is ``actor`` when it is an authenticated user, else the agent of ``actor_node``
    (with its key's prefix), else the system: the running Celery task's name, or "system".
    ``obj`` gives the object's type and id; pass ``object_type`` and ``object_id`` instead for an
    object without a model instance at hand. ``details`` must be JSON-serialisable with
    ``DjangoJSONEncoder`` (decimals and datetimes become strings).

    Runs in a transaction of its own or joins the caller's. On PostgreSQL it takes a
    transaction-scoped advisory lock, held until the caller's transaction ends, so concurrent
    decisions write their events one after another.
    """
    context = structlog.contextvars.get_contextvars()
    actor_kind, actor_user, actor_label = _actor(actor, actor_node, actor_key_prefix, context)
    if obj is not None:
        object_type, object_id = obj._meta.label_lower, obj.pk
    organization_id = organization.pk if isinstance(organization, Organization) else organization
    # Store the details as they read back from the JSON column, so the hash of a stored row matches.
    plain_details = _storable(json.loads(json.dumps(details or {}, cls=DjangoJSONEncoder)))
    request_id = str(context.get("request_id") or context.get("task_id") or "")[:64]

    with transaction.atomic():
        _lock_chain()
        head = AuditEvent.objects.order_by("-sequence").values_list("sequence", "hash").first()
        sequence, previous_hash = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
        event = AuditEvent(
            sequence=sequence, at=timezone.now(), actor_kind=actor_kind, actor_user=actor_user,
            actor_label=actor_label[:200], action=action, object_type=object_type, object_id=str(object_id)[:64],
            organization_id=organization_id, details=plain_details, request_id=request_id,
            previous_hash=previous_hash,
        )
        event.hash = audit_event_hash(event)
        event.save(force_insert=True)
    logger.info("Audit event %s: %s by %s on %s %s", sequence, action, event.actor_label, object_type, object_id)
    return event


def audit_event_hash(event: AuditEvent) -> str:
    """Return the SHA-256 (hex) of the event's content and ``previous_hash``, in canonical JSON."""
    content = {
        "sequence": event.sequence,
        "at": event.at.astimezone(dt_timezone.utc).isoformat(),
        "actor_kind": event.actor_kind,
        "actor_user_id": event.actor_user_id,
        "actor_label": event.actor_label,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "organization_id": event.organization_id,
        "details": event.details,
        "request_id": event.request_id,
        "previous_hash": event.previous_hash,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def audit_chain_verify() -> tuple[ChainBreak | None, AuditEvent | None]:
    """Walk the chain in sequence order; return the first break (or None) and the last event checked.

    A break is a missing sequence number, a ``previous_hash`` that is not the previous row's
    hash, or a ``hash`` that does not match the row's content.
    """
    previous_hash, expected_sequence, last = GENESIS_HASH, 1, None
    for event in AuditEvent.objects.order_by("sequence").iterator(chunk_size=2000):
        if event.sequence != expected_sequence:
            return ChainBreak(event.sequence, event.pk, f"sequence {expected_sequence} is missing; the event "
                                                        f"before this one was deleted"), last
        if event.previous_hash != previous_hash:
            return ChainBreak(event.sequence, event.pk, "previous_hash does not match the previous event's hash; "
                                                        "the previous event was changed or replaced"), last
        if audit_event_hash(event) != event.hash:
            return ChainBreak(event.sequence, event.pk, "the stored hash does not match the event's content; the "
                                                        "event was changed after it was recorded"), last
        previous_hash, expected_sequence, last = event.hash, expected_sequence + 1, event
    return None, last


def _actor(actor, actor_node, actor_key_prefix: str, context: dict) -> tuple[str, AbstractBaseUser | None, str]:
    if actor is not None and actor.is_authenticated:
        return AuditEvent.ActorKind.USER, actor, actor.get_username()
    if actor_node is not None:
        key = f"node key {actor_key_prefix} of " if actor_key_prefix else "agent of "
        return AuditEvent.ActorKind.NODE, None, f"{key}{actor_node.hostname}"
    return AuditEvent.ActorKind.SYSTEM, None, str(context.get("task") or "system")


def _lock_chain() -> None:
    """Serialise writers of the chain until the transaction ends.

    PostgreSQL takes a transaction-scoped advisory lock; SQLite's BEGIN IMMEDIATE (the
    ``transaction_mode`` in settings) already serialises every writer.

    NOTE: under REPEATABLE READ or SERIALIZABLE, a transaction whose snapshot predates the lock
    reads a stale head, and its insert fails on the unique ``sequence`` instead of forking the chain.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [AUDIT_LOCK_KEY])


def _storable(value):
    """Return ``value`` with what jsonb would store differently replaced, so the stored row hashes as recorded.

    jsonb rewrites some floats (``1e+20`` comes back as an integer, ``-0.0`` as ``0``) and rejects NaN, NUL
    characters and lone surrogates. Floats are kept as their text, NUL as the text ``\\x00``, and lone
    surrogates as backslash escapes.
    """
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    return value
