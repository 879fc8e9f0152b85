"""Organizations, their members, and the fleet that providers list: regions, nodes and GPUs."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

GPU_MILLI_PER_GPU = 1000
"""Capacity of one GPU in milli; a share of 460 milli is 46 % of one GPU."""


class Organization(models.Model):
    """A tenant: a customer that reserves GPUs or a provider that lists nodes.

    ``allocation_version`` is bumped by the PostgreSQL quota trigger; it serialises concurrent
    admissions of one customer at every isolation level.
    """

    class Kind(models.TextChoices):
        CUSTOMER = "customer", "Customer"
        PROVIDER = "provider", "Provider"

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    allocation_version = models.PositiveBigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"


class Membership(models.Model):
    """The organization a user acts for, and the user's role in it.

    NOTE: a user belongs to exactly one organization; multi-organization users would need an
    organization selector on every API request.
    """

    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        MEMBER = "member", "Member"
        VIEWER = "viewer", "Viewer"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.organization.slug}"


class GpuModel(models.Model):
    """An entry of the GPU model catalogue."""

    name = models.CharField(max_length=64, unique=True)
    vendor = models.CharField(max_length=64)
    memory_gib = models.PositiveIntegerField(null=True, blank=True, help_text="Empty when the vendor did not disclose it.")
    description = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Region(models.Model):
    """A location where providers run nodes."""

    code = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class Node(models.Model):
    """A provider's machine with identical GPUs.

    ``allocation_version`` is bumped by the PostgreSQL allocation trigger; it serialises concurrent
    writers of the node's allocations at every isolation level.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DRAINING = "draining", "Draining"
        OFFLINE = "offline", "Offline"

    provider = models.ForeignKey(
        Organization,
        on_delete=models.PROTECT,
        related_name="nodes",
        limit_choices_to={"kind": Organization.Kind.PROVIDER},
    )
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="nodes")
    hostname = models.CharField(max_length=253, unique=True)
    gpu_model = models.ForeignKey(GpuModel, on_delete=models.PROTECT, related_name="nodes")
    gpu_count = models.PositiveSmallIntegerField()
    cpu_millicores = models.PositiveIntegerField()
    memory_mib = models.PositiveBigIntegerField()
    price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4)
    currency = models.CharField(max_length=3, default="USD")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    allocation_version = models.PositiveBigIntegerField(default=0, editable=False)
    health = models.CharField(
        max_length=16, choices=[("healthy", "Healthy"), ("degraded", "Degraded"), ("unhealthy", "Unhealthy"),
                                ("unknown", "Unknown: no recent heartbeat")], default="unknown",
        help_text="From the agent's readings; unknown until the first heartbeat or after missed ones.",
    )
    health_reasons = models.JSONField(default=list, blank=True)
    failure_risk = models.FloatField(
        null=True, blank=True, help_text="Fitted probability that a GPU of the node fails within a day; empty "
                                         "until the risk model has been fitted.",
    )
    unhealthy_since = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    agent_version = models.CharField(max_length=32, blank=True)
    driver_version = models.CharField(max_length=64, blank=True)
    cuda_version = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["hostname"]
        permissions = [("drain_node", "Can drain nodes: no new work, and what runs there moves")]
        indexes = [
            models.Index(
                fields=["status", "gpu_count", "cpu_millicores", "price_per_gpu_hour", "id"], name="node_free_order",
            ),
            # The same order within one GPU model: a request for a scarce model reads only its nodes.
            models.Index(
                fields=["gpu_model", "status", "gpu_count", "cpu_millicores", "price_per_gpu_hour", "id"],
                name="node_model_free_order",
            ),
            # Cheapest first within a model, region and currency: the options of a 409 stop at the
            # first empty node that fits in each group.
            models.Index(fields=["gpu_model", "region", "currency", "price_per_gpu_hour", "id"], name="node_price_order"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(cpu_millicores__gt=0), name="node_cpu_positive"),
            models.CheckConstraint(condition=Q(memory_mib__gt=0), name="node_memory_positive"),
            models.CheckConstraint(condition=Q(price_per_gpu_hour__gte=0), name="node_price_not_negative"),
        ]

    def __str__(self) -> str:
        return self.hostname


class Gpu(models.Model):
    """One GPU of a node, with 1000 milli of capacity that reservations may share.

    ``share_version`` is bumped by the PostgreSQL share trigger to serialise writers of one GPU.
    """

    class Health(models.TextChoices):
        HEALTHY = "healthy", "Healthy"
        DEGRADED = "degraded", "Degraded"
        FAILED = "failed", "Failed"

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="gpus")
    index = models.PositiveSmallIntegerField()
    uuid = models.UUIDField(unique=True, default=uuid.uuid4)
    health = models.CharField(max_length=16, choices=Health.choices, default=Health.HEALTHY)
    share_version = models.PositiveBigIntegerField(default=0, editable=False)
    model_name = models.CharField(max_length=128, blank=True, help_text="The name the driver reports.")
    memory_mib = models.PositiveIntegerField(null=True, blank=True)
    health_score = models.FloatField(default=100.0, help_text="0 (failed) to 100 (healthy), from the last reading.")
    health_reasons = models.JSONField(default=list, blank=True)
    probation_until = models.DateTimeField(
        null=True, blank=True, help_text="A GPU that recovered stays out of placement until then.",
    )
    first_reading_at = models.DateTimeField(
        null=True, blank=True, help_text="When the GPU first reported; a listed GPU that never reported can be adopted.",
    )
    retired_at = models.DateTimeField(null=True, blank=True, help_text="When the GPU disappeared from discovery.")

    class Meta:
        ordering = ["node", "index"]
        constraints = [
            # A retired GPU keeps its index, and the GPU that replaces it in that slot takes it too.
            models.UniqueConstraint(fields=["node", "index"], condition=models.Q(retired_at__isnull=True),
                                    name="gpu_unique_index_per_node"),
        ]

    def __str__(self) -> str:
        return f"{self.node.hostname}/gpu{self.index}"


class GpuReading(models.Model):
    """One reading of one GPU from its node's agent; kept ``READING_RETENTION_HOURS``, then only hourly rollups."""

    gpu = models.ForeignKey(Gpu, on_delete=models.CASCADE, related_name="readings")
    at = models.DateTimeField()
    temperature_c = models.FloatField(null=True, blank=True)
    utilization_pct = models.FloatField(null=True, blank=True)
    memory_used_mib = models.PositiveIntegerField(null=True, blank=True)
    power_w = models.FloatField(null=True, blank=True)
    ecc_uncorrected = models.PositiveIntegerField(default=0)
    xid_events = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["gpu", "at"], name="reading_gpu_at"),
                   models.Index(fields=["at"], name="reading_at")]

    def __str__(self) -> str:
        return f"reading of {self.gpu_id} at {self.at:%Y-%m-%d %H:%M:%S}"


class GpuReadingHour(models.Model):
    """One GPU's readings rolled up per hour (UTC), kept after the raw readings are deleted."""

    gpu = models.ForeignKey(Gpu, on_delete=models.CASCADE, related_name="reading_hours")
    hour = models.DateTimeField()
    samples = models.PositiveIntegerField()
    temperature_max_c = models.FloatField(null=True, blank=True)
    utilization_mean_pct = models.FloatField(null=True, blank=True)
    power_mean_w = models.FloatField(null=True, blank=True)
    ecc_uncorrected_max = models.PositiveIntegerField(default=0)
    xid_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-hour", "gpu"]
        constraints = [models.UniqueConstraint(fields=["gpu", "hour"], name="reading_hour_unique")]

    def __str__(self) -> str:
        return f"{self.gpu_id} at {self.hour:%Y-%m-%d %H}:00"


class MaintenanceWindow(models.Model):
    """A period when a provider takes a node out of service: no new booking may overlap it."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="maintenance_windows")
    start_at = models.DateTimeField()
    end_at = models.DateTimeField()
    reason = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["start_at", "id"]
        indexes = [models.Index(fields=["node", "end_at"], name="maintenance_node_end")]
        constraints = [models.CheckConstraint(condition=Q(end_at__gt=models.F("start_at")),
                                              name="maintenance_window_not_empty")]

    def __str__(self) -> str:
        return f"maintenance of {self.node_id} from {self.start_at:%Y-%m-%d %H:%M}"


class GpuHealthEvent(models.Model):
    """A change of one GPU's health state, with the reasons; the history the failure-risk model learns from."""

    gpu = models.ForeignKey(Gpu, on_delete=models.CASCADE, related_name="health_events")
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="health_events")
    at = models.DateTimeField()
    from_state = models.CharField(max_length=16)
    to_state = models.CharField(max_length=16)
    reasons = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["node", "at"], name="health_event_node_at"),
                   models.Index(fields=["at"], name="health_event_at")]

    def __str__(self) -> str:
        return f"{self.gpu_id}: {self.from_state} -> {self.to_state}"


class TaskDelivery(models.Model):
    """One Celery task message by its task id, so a second delivery of the same message runs nothing.

    Redis redelivers a message whose worker died before acknowledging it, and may deliver one twice
    when a task outlives the visibility timeout. ``marketplace.task_ledger`` records each delivery
    here: a message whose run succeeded is skipped, and a run that died is taken over.
    """

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    task_id = models.CharField(max_length=64, unique=True)
    task_name = models.CharField(max_length=128)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    attempts = models.PositiveSmallIntegerField(default=1, help_text="Deliveries that started the task.")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "task deliveries"
        indexes = [models.Index(fields=["started_at"], name="task_delivery_started")]

    def __str__(self) -> str:
        return f"{self.task_name} {self.task_id} ({self.status})"


class AuditTrailImmutable(Exception):
    """An attempt to change or delete a recorded audit event."""


class AuditEventQuerySet(models.QuerySet):
    """Audit events are append-only: bulk writes and changes through a queryset raise."""

    def update(self, **kwargs):
        raise AuditTrailImmutable("Audit events cannot be updated. Record a new event that corrects the old one.")

    def delete(self):
        raise AuditTrailImmutable("Audit events cannot be deleted, because the audit trail keeps every event.")

    def bulk_create(self, *args, **kwargs):
        raise AuditTrailImmutable("Write audit events one at a time with marketplace.audit.audit_record, which "
                                  "chains their hashes.")

    def bulk_update(self, *args, **kwargs):
        raise AuditTrailImmutable("Audit events cannot be updated. Record a new event that corrects the old one.")


class AuditEvent(models.Model):
    """One privileged decision: who made it, on what, with the before/after values and the reason.

    Rows form a hash chain: ``hash`` is the SHA-256 of the row's content and ``previous_hash``, the
    hash of the row with the previous ``sequence``. Write rows only with
    ``marketplace.audit.audit_record``, which serialises inserts and computes the hash.
    ``save`` of an existing row, ``delete`` and the queryset's ``update`` and ``delete`` raise
    ``AuditTrailImmutable``; on PostgreSQL a trigger also rejects UPDATE and DELETE in SQL.
    The user and organization columns have no foreign-key constraint, so deleting a user or an
    organization leaves its events as they were.

    NOTE: on SQLite (the demo) nothing below the model layer stops raw SQL from changing rows;
    ``manage.py verify_audit`` still detects the change.
    """

    class ActorKind(models.TextChoices):
        USER = "user", "User"
        NODE = "node", "Agent node key"
        SYSTEM = "system", "System or task"

    sequence = models.PositiveBigIntegerField(unique=True, editable=False)
    at = models.DateTimeField(db_index=True)
    actor_kind = models.CharField(max_length=16, choices=ActorKind.choices)
    actor_user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.DO_NOTHING, db_constraint=False,
                                   null=True, blank=True, related_name="+")
    actor_label = models.CharField(max_length=200, help_text="Username, node key prefix and hostname, or task name, "
                                                             "as it was when the event was recorded.")
    action = models.CharField(max_length=64, db_index=True, help_text="Dotted name such as reservation.approve.")
    object_type = models.CharField(max_length=100,
                                   help_text="The object's model label, such as allocation.reservation.")
    object_id = models.CharField(max_length=64, blank=True)
    organization = models.ForeignKey(Organization, on_delete=models.DO_NOTHING, db_constraint=False, null=True,
                                     blank=True, related_name="+")
    details = models.JSONField(default=dict, blank=True,
                               help_text="Before and after values of the changed fields, the reason, and counts.")
    request_id = models.CharField(max_length=64, blank=True,
                                  help_text="The request's id, or the Celery task's id when a task decided.")
    previous_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-sequence"]
        indexes = [models.Index(fields=["organization", "at"], name="audit_organization_at"),
                   models.Index(fields=["object_type", "object_id"], name="audit_object")]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor_label} on {self.object_type} {self.object_id}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AuditTrailImmutable(
                f"Audit event {self.pk} cannot be changed. Record a new event that corrects it.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AuditTrailImmutable(
            f"Audit event {self.pk} cannot be deleted, because the audit trail keeps every event.")
