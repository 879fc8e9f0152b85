"""One row per run of a long Celery task: its state, progress, result or error, and who started it."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class TaskRun(models.Model):
    """A run of a long task, found again by its Celery task id.

    The row stores the durable state: every state change and the final counters. While the task
    runs, its live counters are in the cache (see ``task_runs.progress``), so ``done``, ``total``
    and ``message`` here can lag behind until the run finishes.
    """

    class Kind(models.TextChoices):
        REPLAY = "replay", "Trace replay"
        FORECASTS = "forecasts", "Forecast refresh"
        REBALANCE = "rebalance", "Rebalancing proposal"

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    ACTIVE_STATES = (State.QUEUED, State.RUNNING)

    kind = models.CharField(max_length=16, choices=Kind.choices)
    task_id = models.CharField(max_length=255, unique=True, help_text="Celery task id; a redelivery reuses the run.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    done = models.PositiveBigIntegerField(default=0, help_text="Units of work done.")
    total = models.PositiveBigIntegerField(null=True, blank=True, help_text="Units of work in all; empty while unknown.")
    unit = models.CharField(max_length=32, blank=True, help_text="What one unit is, in the plural: tasks, series.")
    message = models.CharField(max_length=500, blank=True, help_text="The current step, or the outcome in words.")
    parameters = models.JSONField(default=dict, blank=True, help_text="The task's keyword arguments.")
    result = models.JSONField(null=True, blank=True, help_text="The task's result summary, once it succeeded.")
    error = models.TextField(blank=True, help_text="Why the run failed.")
    deliveries = models.PositiveIntegerField(default=0, help_text="Times a worker started the task.")
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+", help_text="Empty for runs from the schedule or a command.")
    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now, help_text="Last write of this row.")

    class Meta:
        ordering = ["-queued_at", "-id"]
        indexes = [models.Index(fields=["state", "updated_at"], name="task_run_state_updated")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.task_id} ({self.state})"

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES
