"""Priority classes, queues, the scheduling terms of each reservation, preemptions, agent assignments and
the decision records that explain every scheduling decision."""

import hashlib

from django.conf import settings
from django.db import models
from django.db.models import Q


class PriorityClass(models.Model):
    """A priority band that admins manage: its value, and how its reservations preempt and are preempted."""

    class Mode(models.TextChoices):
        CANCEL = "cancel", "Cancel the victim"
        REQUEUE = "requeue", "Put the victim back in the queue"

    name = models.SlugField(max_length=64, unique=True)
    value = models.IntegerField(help_text="Higher runs first and may preempt lower values.")
    can_preempt = models.BooleanField(default=False, help_text="Its requests may preempt lower-priority work.")
    preemptible = models.BooleanField(
        default=True, help_text="Its interruptible or borrowed work may be preempted by higher priorities.",
    )
    preemption_mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.REQUEUE,
                                       help_text="What happens to this class's work when it is preempted.")
    grace_period_seconds = models.PositiveIntegerField(
        default=120, help_text="Seconds a victim of this class gets to stop after its agent is told.",
    )
    min_runtime_seconds = models.PositiveIntegerField(
        default=0, help_text="Seconds its work runs before it may be preempted at all.",
    )
    preemption_needs_approval = models.BooleanField(
        default=False, help_text="Preemptions that this class's requests cause wait for an admin's approval.",
    )
    is_default = models.BooleanField(default=False, help_text="Used when a request names no class.")
    description = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-value", "name"]
        verbose_name_plural = "priority classes"
        constraints = [
            models.UniqueConstraint(fields=["is_default"], condition=Q(is_default=True), name="one_default_priority"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.value})"


class Queue(models.Model):
    """A named queue; a strict first-in-first-out queue never lets a later request pass a blocked one."""

    name = models.SlugField(max_length=64, unique=True)
    strict_fifo = models.BooleanField(default=False, help_text="No backfill: a blocked head blocks the queue.")
    description = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Workload(models.Model):
    """The scheduling terms of one reservation, and, while it waits, its place in the queue.

    Every reservation made through the API has one. ``duration_seconds`` is the length it runs
    once started; a queued reservation may start from its ``start_at`` until ``latest_start_at``.
    """

    reservation = models.OneToOneField("allocation.Reservation", on_delete=models.CASCADE, primary_key=True,
                                       related_name="workload")
    priority_class = models.ForeignKey(PriorityClass, on_delete=models.PROTECT, related_name="+")
    queue = models.ForeignKey(Queue, on_delete=models.PROTECT, related_name="workloads")
    interruptible = models.BooleanField(
        default=False, help_text="Interruptible work is priced lower and may be preempted by higher priorities.",
    )
    duration_seconds = models.PositiveIntegerField()
    latest_start_at = models.DateTimeField(null=True, blank=True,
                                           help_text="A queued request that has not started by then expires.")
    queued_at = models.DateTimeField(null=True, blank=True)
    position = models.PositiveIntegerField(null=True, blank=True, help_text="1 is next; set by the last cycle.")
    waiting_reason_code = models.CharField(max_length=32, blank=True)
    waiting_reason = models.TextField(blank=True)
    estimated_start_at = models.DateTimeField(null=True, blank=True)
    requeued_from = models.ForeignKey("allocation.Reservation", on_delete=models.SET_NULL, null=True, blank=True,
                                      related_name="+", help_text="The preempted reservation this one continues.")
    start_attempts = models.PositiveSmallIntegerField(default=0, help_text="Failed starts reported by agents.")
    failed_node_ids = models.JSONField(default=list, blank=True, help_text="Nodes where a start failed.")

    def __str__(self) -> str:
        return f"workload of reservation {self.reservation_id}"


class SchedulingCycle(models.Model):
    """One run of the scheduling cycle: what it saw, what it did and how long it took."""

    started_at = models.DateTimeField()
    seconds = models.FloatField(default=0.0, help_text="Wall time of the whole cycle, database work included.")
    decide_seconds = models.FloatField(default=0.0, help_text="Wall time of the decisions alone.")
    waiting = models.PositiveIntegerField(default=0)
    placed = models.PositiveIntegerField(default=0)
    preemptions = models.PositiveIntegerField(default=0)
    trigger = models.CharField(max_length=32, default="periodic")
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        permissions = [("request_schedulingcycle", "Can request a scheduling cycle now")]

    def __str__(self) -> str:
        return f"cycle {self.pk} at {self.started_at:%Y-%m-%d %H:%M:%S}"


class Decision(models.Model):
    """A scheduling decision about one reservation, with its reason in plain words."""

    class Kind(models.TextChoices):
        PLACED = "placed", "Placed"
        WAITING = "waiting", "Waiting"
        PREEMPTION_PROPOSED = "preemption_proposed", "Preemption proposed"
        PREEMPTED = "preempted", "Preempted"
        REQUEUED = "requeued", "Requeued"
        STARTED = "started", "Started by its agent"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        START_RETRIED = "start_retried", "Start retried on another node"
        MIGRATED = "migrated", "Migrated to another node"
        NOT_MIGRATED = "not_migrated", "Left in place"
        EXPIRED = "expired", "Expired in the queue"

    reservation = models.ForeignKey("allocation.Reservation", on_delete=models.CASCADE, related_name="decisions",
                                    db_index=False)  # decision_reservation_at leads with it.
    cycle = models.ForeignKey(SchedulingCycle, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    kind = models.CharField(max_length=24, choices=Kind.choices)
    reason_code = models.CharField(max_length=32, blank=True)
    reason = models.TextField()
    at = models.DateTimeField()
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["reservation", "at"], name="decision_reservation_at"),
                   models.Index(fields=["kind", "at"], name="decision_kind_at")]

    def __str__(self) -> str:
        return f"{self.kind} of reservation {self.reservation_id}"


class Preemption(models.Model):
    """Victims chosen to free capacity for one beneficiary: proposed, then executed after approval or at once."""

    class Status(models.TextChoices):
        PENDING_APPROVAL = "pending_approval", "Pending approval"
        GRACE = "grace", "Victims told to stop; grace period running"
        DONE = "done", "Done"
        REJECTED = "rejected", "Rejected"
        OBSOLETE = "obsolete", "Obsolete"

    beneficiary = models.ForeignKey("allocation.Reservation", on_delete=models.CASCADE, related_name="+")
    node = models.ForeignKey("marketplace.Node", on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices)
    explanation = models.TextField()
    cost = models.JSONField(default=list)
    cycle = models.ForeignKey(SchedulingCycle, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField()
    grace_ends_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("decide_preemption", "Can approve or reject preemptions")]
        indexes = [models.Index(fields=["status", "grace_ends_at"], name="preemption_status_grace")]
        constraints = [
            models.UniqueConstraint(fields=["beneficiary"], condition=Q(status__in=["pending_approval", "grace"]),
                                    name="one_open_preemption_per_beneficiary"),
        ]

    def __str__(self) -> str:
        return f"preemption {self.pk} for reservation {self.beneficiary_id} ({self.status})"


class PreemptionVictim(models.Model):
    preemption = models.ForeignKey(Preemption, on_delete=models.CASCADE, related_name="victims")
    reservation = models.ForeignKey("allocation.Reservation", on_delete=models.CASCADE, related_name="+")
    mode = models.CharField(max_length=16, choices=PriorityClass.Mode.choices)
    requeued_as = models.ForeignKey("allocation.Reservation", on_delete=models.SET_NULL, null=True, blank=True,
                                    related_name="+")
    outcome = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["preemption", "id"]
        constraints = [models.UniqueConstraint(fields=["preemption", "reservation"], name="victim_once_per_preemption")]

    def __str__(self) -> str:
        return f"victim {self.reservation_id} of preemption {self.preemption_id}"


class NodeCredential(models.Model):
    """A node agent's API key, scoped to its node. Only a SHA-256 hash of the secret is stored."""

    node = models.OneToOneField("marketplace.Node", on_delete=models.CASCADE, related_name="credential")
    prefix = models.CharField(max_length=16, unique=True, help_text="The key's public part, shown in logs.")
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"key {self.prefix} of {self.node_id}"

    @staticmethod
    def hash_secret(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()


class Assignment(models.Model):
    """Work that a node's agent runs: start it while the reservation is active, stop it on request."""

    class Status(models.TextChoices):
        ASSIGNED = "assigned", "Assigned, not started"
        STARTED = "started", "Started"
        EXITED = "exited", "Exited"
        FAILED = "failed", "Failed to start"
        STOPPED = "stopped", "Stopped before it started"

    reservation = models.ForeignKey("allocation.Reservation", on_delete=models.CASCADE, related_name="assignments")
    node = models.ForeignKey("marketplace.Node", on_delete=models.CASCADE, related_name="assignments")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ASSIGNED)
    stop_requested_at = models.DateTimeField(null=True, blank=True)
    stop_by = models.DateTimeField(null=True, blank=True, help_text="The agent must stop the work by then.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    message = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["reservation", "node"], name="one_assignment_per_node")]
        indexes = [models.Index(fields=["node", "status"], name="assignment_node_status")]

    def __str__(self) -> str:
        return f"assignment of reservation {self.reservation_id} on {self.node_id} ({self.status})"


class Migration(models.Model):
    """The move of one reservation to another node, as a state machine that survives a crash at any step.

    planned -> target_reserved (a hold keeps the target's capacity) -> moving (the source's agent is
    told to stop) -> done (the allocation switches to the target, the hold goes), or rolled_back
    from any step before done. Until the switch the reservation runs on the source only.
    """

    class Status(models.TextChoices):
        PLANNED = "planned", "Planned"
        TARGET_RESERVED = "target_reserved", "Target reserved"
        MOVING = "moving", "Moving"
        DONE = "done", "Done"
        ROLLED_BACK = "rolled_back", "Rolled back"

    class Kind(models.TextChoices):
        REBALANCE = "rebalance", "Rebalancing plan"
        DRAIN = "drain", "Node drain"
        GPU_RETIRED = "gpu_retired", "GPU retired"

    reservation = models.ForeignKey("allocation.Reservation", on_delete=models.CASCADE, related_name="migrations")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PLANNED)
    from_node = models.ForeignKey("marketplace.Node", on_delete=models.PROTECT, related_name="+")
    to_node = models.ForeignKey("marketplace.Node", on_delete=models.PROTECT, related_name="+")
    hold = models.OneToOneField("allocation.Allocation", on_delete=models.SET_NULL, null=True, blank=True,
                                related_name="migration_hold")
    rebalance_move = models.OneToOneField("allocation.RebalanceMove", on_delete=models.SET_NULL, null=True,
                                          blank=True, related_name="migration")
    reason = models.TextField(help_text="Why the move was planned.")
    outcome = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["reservation"], condition=Q(status__in=["planned", "target_reserved", "moving"]),
                                    name="one_open_migration_per_reservation"),
        ]
        indexes = [models.Index(fields=["status"], name="migration_status")]

    def __str__(self) -> str:
        return f"migration {self.pk} of reservation {self.reservation_id} ({self.status})"
