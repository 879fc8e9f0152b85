"""Middleware that rejects requests no view should see, and turns a lost database into a retryable 503."""

import logging
from urllib.parse import unquote

from django.db import DataError, InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse

from marketplace.api.errors import PROBLEM_CONTENT_TYPE, RETRY_AFTER_SECONDS, problem

logger = logging.getLogger(__name__)


class RejectNulCharactersMiddleware:
    """Return 400 for a path or query string with a NUL character, which no database text column can store."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        raw_query = request.META.get("QUERY_STRING", "")
        if "\x00" in request.path or "\x00" in unquote(raw_query):
            logger.info("Rejected a request with a NUL character: %s", request.path[:200])
            detail = "The URL contains a NUL character (%00). Remove it from the path and the query."
            if request.path.startswith("/api/"):
                body = problem(status=400, code="invalid_request", title="Invalid request", detail=detail)
                return JsonResponse(body, status=400, content_type=PROBLEM_CONTENT_TYPE)
            return HttpResponse(detail, status=400, content_type="text/plain")
        return self.get_response(request)


class DatabaseUnavailableMiddleware:
    """Return 503 with Retry-After when a view loses the database (a restart or failover), instead of 500.

    A value the database cannot store (``DataError``) gets 400 the same way.

    The view's transaction was rolled back, so the caller may retry; API paths get problem details.
    Django drops the broken connection at the end of the request and the next request reconnects.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, DataError):
            return self._unstorable_value(request, exception)
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        logger.error("Database unavailable during %s %s: %s", request.method, request.path[:200], exception)
        detail = "The database is unavailable and nothing was saved. Retry in a few seconds."
        if request.path.startswith("/api/"):
            body = problem(status=503, code="service_unavailable", title="Service unavailable", detail=detail)
            response = JsonResponse(body, status=503, content_type=PROBLEM_CONTENT_TYPE)
        else:
            response = HttpResponse(f'<p class="error" role="alert">{detail}</p>', status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    @staticmethod
    def _unstorable_value(request, exception):
        """Return 400 for a form or body value the database cannot store, such as a NUL character."""
        logger.warning("Request %s %s sent a value the database cannot store: %s", request.method,
                       request.path[:200], exception)
        detail = ("A value in the request has characters or a size the database cannot store (for example a NUL "
                  "character or a number out of range). Correct the value.")
        if request.path.startswith("/api/"):
            body = problem(status=400, code="invalid_request", title="Invalid request", detail=detail)
            return JsonResponse(body, status=400, content_type=PROBLEM_CONTENT_TYPE)
        return HttpResponse(f'<p class="error" role="alert">{detail}</p>', status=400)
