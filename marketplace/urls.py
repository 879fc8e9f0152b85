"""Top-level URLs: the admin, API v1, its OpenAPI schema, the locally served Swagger UI, health and metrics."""

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import TemplateView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from marketplace.api.errors import json_not_found
from marketplace import health, metrics_endpoint
from marketplace.api.views import PingView

urlpatterns = [
    path("", TemplateView.as_view(template_name="home.html"), name="home"),
    path("admin/", admin.site.urls),
    path("ops/capacity/", include("capacity.urls")),
    path("ops/tasks/", include("task_runs.urls")),
    path("ops/", include("allocation.urls")),
    path("ops/", include("scheduler.urls")),
    path("provider/", include("providers.urls")),
    path("api/v1/ping/", PingView.as_view(), name="ping"),
    path("health/live/", health.live, name="health-live"),
    path("health/ready/", health.ReadinessView.as_view(), name="health-ready"),
    path("health/ready/web/", health.ReadinessView.as_view(web_only=True), name="health-ready-web"),
    path("metrics", metrics_endpoint.metrics_view, name="metrics"),
    path("api/v1/", include("allocation.api.urls")),
    path("api/v1/", include("scheduler.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    # Unknown API paths get problem details even with DEBUG on, where Django ignores handler404.
    re_path(r"^api/", json_not_found),
]

handler404 = "marketplace.api.errors.json_not_found"
handler500 = "marketplace.api.errors.json_server_error"
