from django.apps import AppConfig


class TaskRunsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "task_runs"
    verbose_name = "Task runs"
