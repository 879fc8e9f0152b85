"""Read-only admin list of task runs; runs are written only by the tasks and the ops pages."""

from django.contrib import admin

from .models import TaskRun


@admin.register(TaskRun)
class TaskRunAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "state", "done", "total", "unit", "started_by", "queued_at", "finished_at"]
    list_filter = ["kind", "state"]
    search_fields = ["task_id"]
    readonly_fields = [field.name for field in TaskRun._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False
