from django.urls import path

from . import pages

app_name = "task_runs"

urlpatterns = [
    path("", pages.task_runs_page, name="list"),
    path("start/", pages.task_run_start, name="start"),
    path("<int:run_id>/", pages.task_run_detail, name="detail"),
    path("<int:run_id>/progress/", pages.task_run_progress, name="progress"),
]
