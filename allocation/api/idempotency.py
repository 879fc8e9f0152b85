"""``Idempotency-Key`` for POST: a retry with the same key and body gets the first response again.

The key row is inserted in the same transaction as the request's own writes. A concurrent request
with the same key blocks on the row's unique index until the first one commits, then replays its
response. If the first one failed, nothing was stored and the retry runs as a new request.
"""

import hashlib
import json
import re
from datetime import timedelta
from typing import Callable

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response

from marketplace.api.errors import PROBLEM_CONTENT_TYPE, problem, problem_response
from marketplace.exceptions import FieldProblem, InvalidRequest
from marketplace.models import Organization

from ..models import IdempotencyKey

HEADER = "Idempotency-Key"
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")


def idempotent_post(request: Request, customer: Organization, handle: Callable[[], Response]) -> Response:
    """Run ``handle`` once per idempotency key; replay its stored response for a retry with the same body.

    Without the header, ``handle`` just runs. The same key with a different body gets 422.
    """
    key = request.headers.get(HEADER)
    if key is None:
        return handle()
    if not KEY_PATTERN.fullmatch(key):
        raise InvalidRequest(
            f"The {HEADER} header must be 1 to 255 visible ASCII characters, for example a UUID.",
            errors=[FieldProblem(HEADER, "Use 1 to 255 visible ASCII characters.", "invalid")],
        )
    fingerprint = _fingerprint(request.data)

    stored = _live_record(customer, key)
    if stored is not None:
        return _replay(stored, fingerprint)

    with transaction.atomic():
        try:
            with transaction.atomic():
                record = IdempotencyKey.objects.create(customer=customer, key=key, request_fingerprint=fingerprint)
        except IntegrityError:
            record = None
        if record is not None:
            response = handle()
            record.response_status = response.status_code
            record.response_body = response.data
            record.reservation_id = _reservation_id(response)
            record.save(update_fields=["response_status", "response_body", "reservation"])
            return response

    # Another request with this key committed first.
    return _replay(IdempotencyKey.objects.get(customer=customer, key=key), fingerprint)


def _live_record(customer: Organization, key: str) -> IdempotencyKey | None:
    """Return the stored record for ``key``, deleting it first if it is older than the retention period."""
    retention = timedelta(seconds=settings.MARKETPLACE["IDEMPOTENCY_KEY_RETENTION_SECONDS"])
    record = IdempotencyKey.objects.filter(customer=customer, key=key).first()
    if record is not None and record.created_at < timezone.now() - retention:
        record.delete()
        return None
    return record


def _replay(record: IdempotencyKey, fingerprint: str) -> Response:
    if record.request_fingerprint != fingerprint:
        return problem_response(problem(
            status=422, code="idempotency_key_reused", title="Idempotency key reused",
            detail=(
                f"{HEADER} {record.key!r} was first used at {record.created_at.isoformat()} with a different "
                f"body. Send the same body to retry that request, or use a new key for a new request."
            ),
            errors=[{"field": HEADER, "code": "idempotency_key_reused",
                     "message": "This key was used with a different body. Use a new key for a new request."}],
        ))
    headers = {"Idempotent-Replayed": "true"}
    if record.response_status in (201, 202) and record.reservation_id:
        headers["Location"] = f"/api/v1/reservations/{record.reservation_id}/"
    content_type = PROBLEM_CONTENT_TYPE if record.response_status >= 400 else None
    return Response(record.response_body, status=record.response_status, headers=headers, content_type=content_type)


def _fingerprint(data) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _reservation_id(response: Response) -> int | None:
    data = response.data if isinstance(response.data, dict) else {}
    if "reservation" in data and isinstance(data["reservation"], dict):
        data = data["reservation"]
    return data.get("id")

