"""``GET /metrics``: Prometheus text exposition of django-prometheus's and the marketplace's metrics.

Access: with the ``METRICS_TOKEN`` setting set, every scrape must send
``Authorization: Bearer <token>`` (401 otherwise). Without it, only clients connecting from a
loopback address and without proxy headers (``X-Forwarded-For``, ``Forwarded``) may scrape;
others get 403. Both errors use the API's problem-details format.

With ``PROMETHEUS_MULTIPROC_DIR`` set in the environment, the response aggregates the metric
files that every web and Celery process writes there (prometheus_client's multiprocess mode),
as django-prometheus's own view does. Without it, the response shows this process's registry.
The gauges of ``metric_collectors.py`` are read once per scrape in either mode.
"""

import hmac
import ipaddress
import logging
import os

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from marketplace.api.errors import PROBLEM_CONTENT_TYPE, problem
from marketplace.metric_collectors import DomainCollector

logger = logging.getLogger(__name__)

PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP", "X-Client-IP", "Client-IP", "True-Client-IP", "Via")
"""A request carrying one of these came through a proxy, so its loopback address proves nothing."""

_domain_collector = DomainCollector()


def multiprocess_directory() -> str:
    """Return the multiprocess directory from the environment, or "" when multiprocess mode is off.

    prometheus_client reads the same variable (and its old lower-case name) when it is imported.
    """
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or ""


def scrape_registry() -> CollectorRegistry:
    """Build the registry for one scrape: every process's metrics (or this process's) plus the domain gauges.

    Raises ``ValueError`` when ``PROMETHEUS_MULTIPROC_DIR`` names a missing directory.
    """
    registry = CollectorRegistry()
    directory = multiprocess_directory()
    if directory:
        MultiProcessCollector(registry, path=directory)
    else:
        registry.register(REGISTRY)
    registry.register(_domain_collector)
    return registry


@csrf_exempt  # read-only: other methods get the 405 below, not a CSRF page
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Return the metrics in Prometheus's text format, or a problem-details error."""
    if request.method not in ("GET", "HEAD"):
        response = _problem(405, "method_not_allowed", f"Method {request.method} is not allowed on /metrics. Use GET.")
        response["Allow"] = "GET, HEAD"
        return response
    denied = _access_denied_response(request)
    if denied is not None:
        return denied

    try:
        registry = scrape_registry()
    except ValueError as error:
        logger.error("Metrics scrape failed: %s", error)
        return _problem(
            503, "service_unavailable",
            f"PROMETHEUS_MULTIPROC_DIR is {multiprocess_directory()!r}, which is not a usable directory. "
            f"Create it before the processes start, or unset the variable.",
        )
    response = HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response


def _access_denied_response(request: HttpRequest) -> JsonResponse | None:
    """Return the 401 or 403 response for a request that may not scrape, or None when it may."""
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(offered.strip().encode(), token.encode()):
            return None
        logger.warning("Metrics scrape from %s rejected: missing or wrong bearer token", _client_address(request))
        response = _problem(401, "not_authenticated",
                            "Scraping /metrics needs the header 'Authorization: Bearer <METRICS_TOKEN>'. "
                            "Send the token configured on the server.")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response

    if _is_direct_loopback(request):
        return None
    logger.info("Metrics scrape from %s rejected: not a direct loopback client and METRICS_TOKEN is unset",
                _client_address(request))
    return _problem(403, "permission_denied",
                    "Only clients on this machine may scrape /metrics while METRICS_TOKEN is unset. "
                    "Scrape from 127.0.0.1, or set METRICS_TOKEN and send it as a bearer token.")


def _is_direct_loopback(request: HttpRequest) -> bool:
    if any(header in request.headers for header in PROXY_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _client_address(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR") or "an unknown address"


def _problem(status: int, code: str, detail: str) -> JsonResponse:
    body = problem(status=status, code=code, title=code.replace("_", " ").capitalize(), detail=detail)
    return JsonResponse(body, status=status, content_type=PROBLEM_CONTENT_TYPE)
