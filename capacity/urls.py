from django.urls import path

from . import pages

app_name = "capacity"

urlpatterns = [
    path("", pages.capacity_page, name="page"),
    path("preview/", pages.capacity_preview, name="preview"),
    path("plans/", pages.capacity_propose, name="propose"),
    path("plans/<int:plan_id>/", pages.capacity_plan_detail, name="plan"),
    path("plans/<int:plan_id>/decide/", pages.capacity_decide, name="decide"),
    path("forecasts/refresh/", pages.capacity_refresh, name="refresh"),
]
