"""Staff pages: recent runs of long tasks, one run's progress bar that HTMX polls, and buttons to start them."""

import json
import logging

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseStopPolling

from marketplace.exceptions import InvalidRequest
from marketplace.permissions import require_permission

from .launch import DEFAULT_REPLAY_LIMIT, MAX_REPLAY_LIMIT, launch_for, run_launch
from .models import TaskRun
from .progress import run_progress, runs_recent

logger = logging.getLogger(__name__)

RUNS_SHOWN = 50
VIEW_PERMISSION = "task_runs.view_taskrun"
VIEW_MESSAGE = "Seeing task runs needs the 'view task run' permission."


@require_GET
@staff_member_required
def task_runs_page(request: HttpRequest) -> HttpResponse:
    require_permission(request, VIEW_PERMISSION, VIEW_MESSAGE)
    return render(request, "task_runs/list.html", _list_context())


@require_GET
@staff_member_required
def task_run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    require_permission(request, VIEW_PERMISSION, VIEW_MESSAGE)
    run = get_object_or_404(TaskRun.objects.select_related("started_by"), pk=run_id)
    return render(request, "task_runs/detail.html", _progress_context(run))


@require_GET
@staff_member_required
def task_run_progress(request: HttpRequest, run_id: int) -> HttpResponse:
    """Render the progress fragment; HTTP 286 once the run finished, which stops htmx polling."""
    require_permission(request, VIEW_PERMISSION, VIEW_MESSAGE)
    run = get_object_or_404(TaskRun.objects.select_related("started_by"), pk=run_id)
    context = _progress_context(run)
    response = render(request, "task_runs/_progress.html", context)
    if context["progress"].is_active:
        return response
    return HttpResponseStopPolling(response.content)


@require_POST
@staff_member_required
def task_run_start(request: HttpRequest) -> HttpResponse:
    """Queue the posted ``kind`` of task and redirect (303) to its progress page."""
    require_permission(request, VIEW_PERMISSION, VIEW_MESSAGE)
    try:
        launch = launch_for(request.POST.get("kind", ""))
    except InvalidRequest as error:
        return render(request, "task_runs/list.html", _list_context(failed=str(error)), status=400)
    require_permission(request, launch.permission, launch.permission_message)
    try:
        run = run_launch(launch, user=request.user, data=request.POST)
    except InvalidRequest as error:
        logger.info("Starting a %s run failed: %s", launch.kind, error)
        return render(request, "task_runs/list.html", _list_context(failed=str(error), form=request.POST), status=400)
    response = redirect("task_runs:detail", run_id=run.pk)
    response.status_code = 303
    return response


def _list_context(*, failed: str = "", form=None) -> dict:
    form = form or {}
    return {"runs": runs_recent(RUNS_SHOWN), "messages_failed": [failed] if failed else [],
            "replay_limit": form.get("limit", DEFAULT_REPLAY_LIMIT), "max_replay_limit": MAX_REPLAY_LIMIT}


def _progress_context(run: TaskRun) -> dict:
    progress = run_progress(run)
    result = json.dumps(progress.run.result, indent=2, sort_keys=True) if progress.run.result is not None else ""
    return {"run": progress.run, "progress": progress, "result_json": result}
