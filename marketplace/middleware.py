"""Middleware that rejects requests no view should see."""

import logging
from urllib.parse import unquote

from django.http import HttpResponse, JsonResponse

from marketplace.api.errors import PROBLEM_CONTENT_TYPE, problem

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
