"""One error format for the whole API: RFC 9457 problem details.

Every error response has ``type``, ``title``, ``status``, ``detail`` (what failed and how to fix
it) and ``code`` (stable, machine-readable); input errors add ``errors``, a list of
``{"field", "message", "code"}``. Domain errors add their own fields (for example ``reason_code``).
"""

import logging
import math
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.views.decorators.csrf import csrf_exempt
from django.db import DataError, IntegrityError, InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from psycopg import errors as psycopg_errors
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import set_rollback

from marketplace.exceptions import MarketplaceError

# PostgreSQL errors that end a transaction because of a concurrent one; running the request again may succeed.
TRANSIENT_CONFLICTS = (psycopg_errors.DeadlockDetected, psycopg_errors.SerializationFailure,
                       psycopg_errors.LockNotAvailable)

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
# Seconds a client should wait before retrying a request that failed because the database was unavailable.
RETRY_AFTER_SECONDS = 5

_DRF_FIXES = {
    "not_authenticated": "Send the header 'Authorization: Token <your API token>'.",
    "authentication_failed": "Check the API token in the Authorization header.",
    "permission_denied": "Ask an owner of your organization for access.",
    "not_found": "Check the URL; objects of other organizations are not visible.",
    "method_not_allowed": "See /api/docs/ for the methods this endpoint accepts.",
    "parse_error": "Send a valid JSON body.",
    "unsupported_media_type": "Send the body as JSON with 'Content-Type: application/json'.",
    "not_acceptable": "Accept application/json.",
    "throttled": "Wait and retry after the number of seconds in the Retry-After header.",
}


CSRF_FIX = ("Send the csrftoken cookie's value in the X-CSRFToken header, or authenticate with "
            "'Authorization: Token <your API token>' instead of the session.")


def problem(
    *, status: int, code: str, title: str, detail: str, errors: list[dict[str, str]] | None = None, **extra: Any,
) -> dict[str, Any]:
    """Build a problem-details body."""
    body: dict[str, Any] = {
        "type": f"urn:gpu-marketplace:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors:
        body["errors"] = errors
    body.update(extra)
    return body


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(body, status=body["status"], content_type=PROBLEM_CONTENT_TYPE, headers=headers)


def problem_exception_handler(exc: Exception, context: dict) -> Response:
    """Render every error raised in a DRF view, expected or not, as problem details."""
    set_rollback()

    if isinstance(exc, MarketplaceError):
        body = problem(
            status=exc.status, code=exc.code, title=exc.title, detail=exc.detail,
            errors=[{"field": e.field, "message": e.message, "code": e.code} for e in exc.errors], **exc.extra,
        )
        return problem_response(body)

    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()

    if isinstance(exc, drf_exceptions.ValidationError):
        errors = list(_flatten_validation(exc.detail))
        summary = "; ".join(f"{error['field']}: {error['message']}" for error in errors)
        body = problem(status=400, code="invalid_request", title="Invalid request",
                       detail=f"The request is invalid. {summary}", errors=errors)
        return problem_response(body)

    if isinstance(exc, drf_exceptions.APIException):
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else exc.default_code
        detail = str(exc.detail).strip()
        fix = _DRF_FIXES.get(code, "")
        if detail.startswith("CSRF Failed"):  # DRF's session authentication rejected a POST without a CSRF token.
            fix = CSRF_FIX
        if fix:
            detail = f"{detail.rstrip('.')}. {fix}"
        headers = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None) is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.wait)))
        errors = [{"field": "body", "message": detail, "code": code}] if code == "parse_error" else None
        body = problem(status=exc.status_code, code=code, title=_title(code), detail=detail, errors=errors)
        response = problem_response(body, headers)
        if exc.status_code == 401 and "WWW-Authenticate" not in headers:
            response["WWW-Authenticate"] = 'Token realm="api"'
        return response

    if isinstance(exc, RequestDataTooBig):
        body = problem(status=413, code="payload_too_large", title="Payload too large",
                       detail="The request body is larger than the server accepts. Send a smaller body.")
        return problem_response(body)

    if isinstance(exc, TooManyFieldsSent):
        body = problem(status=400, code="invalid_request", title="Invalid request",
                       detail="The request has too many query or form parameters. Send fewer than 1000.")
        return problem_response(body)

    if isinstance(exc, DataError):
        logger.warning("Request %s sent a value the database cannot store: %s", _describe(context), exc)
        body = problem(status=400, code="invalid_request", title="Invalid request",
                       detail="A value in the request has characters or a size the database cannot store "
                              "(for example a NUL character or a number out of range). Correct the value.")
        return problem_response(body)

    if isinstance(exc, IntegrityError):
        logger.warning("Request %s hit a database constraint: %s", _describe(context), exc)
        body = problem(status=409, code="conflict", title="Conflict",
                       detail="A concurrent change conflicted with this request and nothing was saved. Retry it.")
        return problem_response(body)

    if isinstance(exc, OperationalError) and isinstance(exc.__cause__, TRANSIENT_CONFLICTS):
        logger.warning("Request %s lost a lock conflict and was rolled back: %s", _describe(context), exc)
        body = problem(status=409, code="conflict", title="Conflict",
                       detail="A concurrent change conflicted with this request and nothing was saved. Retry it.")
        return problem_response(body, {"Retry-After": "1"})

    if isinstance(exc, (OperationalError, InterfaceError)):
        logger.error("Database unavailable during %s: %s", _describe(context), exc)
        body = problem(status=503, code="service_unavailable", title="Service unavailable",
                       detail="The database is unavailable and nothing was saved. Retry in a few seconds.")
        return problem_response(body, {"Retry-After": str(RETRY_AFTER_SECONDS)})

    logger.exception("Unhandled error during %s", _describe(context))
    body = problem(status=500, code="internal_error", title="Internal error",
                   detail="An unexpected error occurred and nothing was saved. Retry; if it persists, report it.")
    return problem_response(body)


def _flatten_validation(detail: Any, prefix: str = ""):
    """Yield ``{"field", "message", "code"}`` for every message of a DRF validation error."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = "non_field_errors" if key == "non_field_errors" and not prefix else f"{prefix}{key}"
            yield from _flatten_validation(value, f"{name}.")
    elif isinstance(detail, list):
        for index, item in enumerate(detail):
            if isinstance(item, (dict, list)):
                yield from _flatten_validation(item, f"{prefix}{index}.")
            else:
                yield from _flatten_validation(item, prefix)
    else:
        field = prefix.rstrip(".") or "non_field_errors"
        yield {"field": field, "message": str(detail), "code": getattr(detail, "code", "invalid")}


def _title(code: str) -> str:
    return code.replace("_", " ").capitalize()


def _describe(context: dict) -> str:
    request = context.get("request")
    return f"{request.method} {request.path}" if request is not None else "an API call"


@csrf_exempt
def json_not_found(request, exception=None):
    """Django 404 handler: problem details for API paths, the plain page elsewhere."""
    if request.path.startswith("/api/"):
        detail = f"No endpoint at {request.path}. See /api/docs/ for the endpoints."
        if not request.path.endswith("/") and _resolves_to_endpoint(request.path + "/"):
            detail = f"No endpoint at {request.path}. Add the trailing slash: {request.path}/"
        body = problem(status=404, code="not_found", title="Not found", detail=detail)
        return JsonResponse(body, status=404, content_type=PROBLEM_CONTENT_TYPE)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def _resolves_to_endpoint(path: str) -> bool:
    from django.urls import Resolver404, resolve

    try:
        return resolve(path).func is not json_not_found
    except Resolver404:
        return False


def json_server_error(request):
    """Django 500 handler for errors outside DRF views: problem details for API paths."""
    if request.path.startswith("/api/"):
        body = problem(status=500, code="internal_error", title="Internal error",
                       detail="An unexpected error occurred and nothing was saved. Retry; if it persists, report it.")
        return JsonResponse(body, status=500, content_type=PROBLEM_CONTENT_TYPE)
    from django.views.defaults import server_error

    return server_error(request)
