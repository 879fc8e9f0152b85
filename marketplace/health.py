"""Liveness and readiness endpoints for load balancers and orchestrators.

``/health/live/`` returns 200 while the process serves requests and checks nothing else.
``/health/ready/`` runs django-health-check's checks: the database, and with ``REDIS_URL`` also
Redis and a ping of the Celery workers. It returns 503 when one fails. ``/health/ready/web/``
checks only the database, which is all the API needs, so a load balancer keeps sending traffic
while Redis or the workers are down. No check reaches beyond the configured servers.
"""

import datetime

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe
from health_check.checks import Database
from health_check.contrib.celery import Ping
from health_check.contrib.redis import Redis
from health_check.views import HealthCheckView
from redis.asyncio import Redis as RedisClient


@csrf_exempt
@require_safe
def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


class ReadinessView(HealthCheckView):
    """django-health-check's view with this deployment's checks, returning 503 rather than 500 on failure.

    By default it checks the whole stack. With ``web_only`` it checks only what a web process needs to
    serve the API (the database), for load balancers, because the API keeps serving while Redis or the
    workers are down.
    """

    web_only = False

    def get_checks(self):
        yield Database()
        if settings.REDIS_URL and not self.web_only:
            yield Redis(client_factory=lambda: RedisClient.from_url(settings.REDIS_URL, socket_connect_timeout=1,
                                                                   socket_timeout=1))
            yield Ping(timeout=datetime.timedelta(seconds=1), limit=1)

    async def get(self, request, *args, **kwargs):
        response = await super().get(request, *args, **kwargs)
        if response.status_code == 500:
            response.status_code = 503
        return response
