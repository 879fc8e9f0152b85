"""Quotas, reservations, their allocations to GPU shares, and the reservation event log.

Windows are half-open ``[start_at, end_at)`` in UTC. On PostgreSQL, triggers installed by
migration 0002 reject any write that would put more than 1000 milli on one GPU, overcommit a node's
CPU or memory, or take an organization past its quota, at any instant of a window.
"""

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import F, Q

from marketplace.models import GPU_MILLI_PER_GPU, Gpu, GpuModel, Node, Organization, Region


class Quota(models.Model):
    """The maximum GPU milli that a customer organization may hold at any instant.

    A row with no GPU model limits the organization's total over all models; a row with a model
    limits allocations on nodes of that model. Both apply when both exist. An organization with no
    quota row has no limit.
    """

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="quotas",
        limit_choices_to={"kind": Organization.Kind.CUSTOMER},
    )
    gpu_model = models.ForeignKey(
        GpuModel, on_delete=models.CASCADE, null=True, blank=True, related_name="quotas",
        help_text="Leave empty for a limit over all GPU models.",
    )
    max_gpu_milli = models.PositiveBigIntegerField(
        help_text="Maximum concurrent GPU milli (1000 = one whole GPU).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["organization", "gpu_model"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "gpu_model"],
                condition=Q(gpu_model__isnull=False),
                name="quota_unique_per_model",
            ),
            models.UniqueConstraint(
                fields=["organization"],
                condition=Q(gpu_model__isnull=True),
                name="quota_unique_any_model",
            ),
        ]

    def __str__(self) -> str:
        scope = self.gpu_model.name if self.gpu_model_id else "any model"
        return f"{self.organization.slug}: {self.max_gpu_milli} milli of {scope}"


class Cohort(models.Model):
    """Customer organizations that lend each other the unused part of their quotas over all models.

    A member's own quota stays guaranteed: it is admitted up to it even when others borrowed it,
    and the borrowed allocations are the ones to preempt.

    ``allocation_version`` is bumped by the PostgreSQL quota trigger to serialise members' admissions.
    """

    slug = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    allocation_version = models.PositiveBigIntegerField(default=0, editable=False)

    def __str__(self) -> str:
        return self.slug


class CohortMembership(models.Model):
    """A customer's place in a cohort, and how much of the cohort's unused quota it may borrow."""

    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, related_name="memberships")
    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="cohort_membership",
        limit_choices_to={"kind": Organization.Kind.CUSTOMER},
    )
    borrowing_limit_gpu_milli = models.PositiveBigIntegerField(
        null=True, blank=True,
        help_text="GPU milli the organization may hold above its own quota; empty means any unused cohort quota.",
    )

    def __str__(self) -> str:
        return f"{self.organization.slug} in {self.cohort.slug}"


class ReservationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PENDING_APPROVAL = "pending_approval", "Pending approval"
    QUEUED = "queued", "Queued"
    SCHEDULED = "scheduled", "Scheduled"
    ACTIVE = "active", "Active"
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"
    FAILED = "failed", "Failed"
    REJECTED = "rejected", "Rejected"
    EXPIRED = "expired", "Expired"
    PREEMPTED = "preempted", "Preempted"


class RejectionReason(models.TextChoices):
    NO_CAPACITY = "no_capacity", "No node has free capacity in the window"
    QUOTA_EXCEEDED = "quota_exceeded", "The organization's quota cannot hold the request"
    PRICE_ABOVE_MAXIMUM = "price_above_maximum", "Capacity exists only above the maximum price"
    NO_MATCHING_NODE = "no_matching_node", "No node in the fleet can ever hold this shape"
    REJECTED_BY_ADMIN = "rejected_by_admin", "An admin rejected the request"
    BUDGET_EXCEEDED = "budget_exceeded", "The organization's budget for the period cannot pay for it"


class Reservation(models.Model):
    """A customer's request for GPU shares over a window, and its lifecycle status."""

    customer = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="reservations",
        limit_choices_to={"kind": Organization.Kind.CUSTOMER},
        db_index=False,  # reservation_customer_status and reservation_customer_ref lead with it.
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
    )
    external_ref = models.CharField(
        max_length=128, blank=True,
        help_text="The customer's own identifier, for example a trace task name; unique per customer.",
    )
    gpu_count = models.PositiveSmallIntegerField()
    gpu_milli_per_gpu = models.PositiveSmallIntegerField(help_text="Milli of each GPU; 1000 is a whole GPU.")
    gpu_models = models.ManyToManyField(
        GpuModel, blank=True, related_name="+", help_text="Acceptable GPU models; empty means any.",
    )
    region = models.ForeignKey(Region, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    cpu_millicores = models.PositiveIntegerField()
    memory_mib = models.PositiveBigIntegerField()
    start_at = models.DateTimeField()
    end_at = models.DateTimeField()
    max_price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    currency = models.CharField(max_length=3, default="USD")
    status = models.CharField(max_length=16, choices=ReservationStatus.choices, default=ReservationStatus.PENDING)
    reason_code = models.CharField(max_length=32, blank=True)
    reason_detail = models.TextField(blank=True)
    hold_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="While pending approval: when the held capacity is released unapproved.",
    )
    do_not_migrate = models.BooleanField(
        default=False, help_text="The customer asks that the reservation never moves to another node.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("approve_reservation", "Can approve or reject reservations pending approval"),
                       ("cancel_reservation", "Can cancel any customer's reservations")]
        indexes = [
            models.Index(fields=["customer", "status"], name="reservation_customer_status"),
            models.Index(fields=["status", "start_at"], name="reservation_status_start"),
            models.Index(fields=["status", "end_at"], name="reservation_status_end"),
            # The duplicate external_ref lookup runs as a prepared statement, whose generic plan cannot
            # use the partial unique index below, since that needs the literal '' and 'rejected'.
            models.Index(fields=["customer", "external_ref"], name="reservation_customer_ref"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(end_at__gt=F("start_at")), name="reservation_window_not_empty"),
            models.CheckConstraint(
                condition=Q(gpu_milli_per_gpu__lte=GPU_MILLI_PER_GPU), name="reservation_milli_at_most_one_gpu",
            ),
            models.CheckConstraint(
                condition=(Q(gpu_count=0) & Q(gpu_milli_per_gpu=0)) | (Q(gpu_count__gt=0) & Q(gpu_milli_per_gpu__gt=0)),
                name="reservation_gpu_shape_consistent",
            ),
            models.CheckConstraint(
                condition=~Q(status=ReservationStatus.REJECTED) | ~Q(reason_code=""),
                name="reservation_rejection_has_reason",
            ),
            # A rejected reservation frees its external_ref, so the customer can retry under the same name.
            models.UniqueConstraint(
                fields=["customer", "external_ref"],
                condition=~Q(external_ref="") & ~Q(status=ReservationStatus.REJECTED),
                name="reservation_unique_external_ref",
            ),
        ]

    def __str__(self) -> str:
        return f"reservation {self.pk} ({self.status})"

    @property
    def gpu_milli_total(self) -> int:
        return self.gpu_count * self.gpu_milli_per_gpu


class Budget(models.Model):
    """A customer's spending limits per calendar period (UTC), in GPU-hours and in money.

    Booked and consumed GPU-hours and spend both count: every allocation's window, cut at its
    release when it ended early, is charged to the periods it overlaps.
    """

    class Period(models.TextChoices):
        DAY = "day", "Day"
        WEEK = "week", "Week (Monday to Sunday)"
        MONTH = "month", "Month"

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="budget",
        limit_choices_to={"kind": Organization.Kind.CUSTOMER},
    )
    period = models.CharField(max_length=8, choices=Period.choices, default=Period.MONTH)
    max_gpu_hours = models.DecimalField(
        max_digits=14, decimal_places=3, null=True, blank=True, help_text="Empty means no GPU-hour limit.",
    )
    max_spend = models.DecimalField(
        max_digits=14, decimal_places=2, null=True, blank=True, help_text="Empty means no spending limit.",
    )
    currency = models.CharField(max_length=3, default="USD")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.period}ly budget of {self.organization.slug}"


class ApprovalPolicy(models.Model):
    """When a customer's reservations need an admin's approval before they are confirmed.

    A request needs approval when any rule applies: the organization is flagged, it requests more
    than ``max_gpus_without_approval`` GPUs, or its estimated cost exceeds ``max_cost_without_approval``.
    """

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="approval_policy",
        limit_choices_to={"kind": Organization.Kind.CUSTOMER},
    )
    flagged = models.BooleanField(default=False, help_text="Every request of this organization needs approval.")
    max_gpus_without_approval = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests for more GPUs need approval; empty means no limit.",
    )
    max_cost_without_approval = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True,
        help_text="Requests whose estimated cost is higher need approval; empty means no limit.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "approval policies"

    def __str__(self) -> str:
        return f"approval policy of {self.organization.slug}"


class Allocation(models.Model):
    """The binding of a reservation to one node for its window.

    A migration's hold has no reservation, 0 GPU milli counted against quota and a price of 0:
    its GPU shares and CPU and memory keep the target node's capacity until the move switches over.

    ``customer``, ``gpu_model`` and ``gpu_milli_total`` copy the reservation and the node, so the
    database triggers check quotas and node capacity from this table alone. A released allocation
    has ``end_at`` cut to the release time; an empty window holds no capacity.
    """

    reservation = models.OneToOneField(
        Reservation, on_delete=models.PROTECT, related_name="allocation", null=True, blank=True,
        help_text="Empty for a migration's hold: capacity kept on the target node while the reservation moves.",
    )
    # Indexes that lead with the customer and the node serve both columns (Meta.indexes).
    customer = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+", db_index=False)
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="allocations", db_index=False)
    gpu_model = models.ForeignKey(GpuModel, on_delete=models.PROTECT, related_name="+")
    start_at = models.DateTimeField()
    end_at = models.DateTimeField()
    cpu_millicores = models.PositiveIntegerField()
    memory_mib = models.PositiveBigIntegerField()
    gpu_milli_total = models.PositiveIntegerField()
    billed_gpu_milli = models.PositiveIntegerField(
        help_text="GPU milli charged: the GPU share, or the node's GPUs in proportion to the CPU or memory "
                  "taken, whichever is larger.",
    )
    borrowed_gpu_milli = models.PositiveIntegerField(
        default=0, help_text="GPU milli held above the customer's own quota, borrowed from its cohort; "
                             "preempted first.",
    )
    price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4)
    currency = models.CharField(max_length=3)
    created_at = models.DateTimeField(auto_now_add=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-start_at", "-id"]
        indexes = [
            models.Index(fields=["node", "end_at"], name="allocation_node_end"),
            models.Index(fields=["customer", "end_at"], name="allocation_customer_end"),
            models.Index(fields=["end_at"], name="allocation_end"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(end_at__gte=F("start_at")), name="allocation_window_ordered"),
        ]

    def __str__(self) -> str:
        return f"allocation of reservation {self.reservation_id} on {self.node_id}"


class GpuShare(models.Model):
    """Milli of one GPU held by an allocation over the allocation's window (copied here)."""

    # share_one_per_gpu_per_allocation and share_gpu_end lead with these columns.
    allocation = models.ForeignKey(Allocation, on_delete=models.CASCADE, related_name="shares", db_index=False)
    gpu = models.ForeignKey(Gpu, on_delete=models.PROTECT, related_name="shares", db_index=False)
    gpu_milli = models.PositiveSmallIntegerField()
    start_at = models.DateTimeField()
    end_at = models.DateTimeField()

    class Meta:
        ordering = ["allocation", "gpu"]
        indexes = [
            models.Index(fields=["gpu", "end_at"], name="share_gpu_end"),
            models.Index(fields=["end_at"], name="share_end"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(gpu_milli__gt=0) & Q(gpu_milli__lte=GPU_MILLI_PER_GPU), name="share_milli_in_range",
            ),
            models.CheckConstraint(condition=Q(end_at__gte=F("start_at")), name="share_window_ordered"),
            models.UniqueConstraint(fields=["allocation", "gpu"], name="share_one_per_gpu_per_allocation"),
        ]

    def __str__(self) -> str:
        return f"{self.gpu_milli} milli of gpu {self.gpu_id}"


class ReservationEvent(models.Model):
    """One state change of a reservation: who, when, from which status to which, and why."""

    reservation = models.ForeignKey(Reservation, on_delete=models.CASCADE, related_name="events",
                                    db_index=False)  # event_reservation_at leads with it.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        help_text="Empty when the marketplace itself acted.",
    )
    at = models.DateTimeField()
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16)
    reason_code = models.CharField(max_length=32, blank=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["reservation", "at"], name="event_reservation_at")]

    def __str__(self) -> str:
        return f"{self.reservation_id}: {self.from_status or '-'} -> {self.to_status}"


class IdempotencyKey(models.Model):
    """The first response to a customer's POST with an ``Idempotency-Key`` header, replayed on retries."""

    customer = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the request body as canonical JSON.")
    response_status = models.PositiveSmallIntegerField(null=True)
    response_body = models.JSONField(null=True, encoder=DjangoJSONEncoder)
    reservation = models.ForeignKey(Reservation, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["customer", "key"], name="idempotency_key_unique")]
        indexes = [models.Index(fields=["created_at"], name="idempotency_key_created")]

    def __str__(self) -> str:
        return f"{self.customer_id}: {self.key}"


class SolverRun(models.Model):
    """One run of a placement solver outside the reservation path: what it solved, how well and how fast."""

    class Kind(models.TextChoices):
        BATCH = "batch", "Batch placement"
        REBALANCE = "rebalance", "Rebalancing plan"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    policy = models.CharField(max_length=64, help_text="Solver or policy name, for example cp_sat or fgd_best_fit.")
    requests = models.PositiveIntegerField(help_text="Requests or reservations considered.")
    nodes = models.PositiveIntegerField(help_text="Nodes considered.")
    variables = models.PositiveIntegerField(default=0, help_text="Decision variables of the model; 0 for heuristics.")
    objective = models.FloatField(null=True, blank=True)
    status = models.CharField(max_length=32, help_text="The solver's own status, or why it fell back.")
    wall_ms = models.PositiveIntegerField()
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} run {self.pk} ({self.policy}, {self.status})"


class RebalancePlan(models.Model):
    """Migrations proposed to improve the placement, applied only after an admin approves them."""

    class Status(models.TextChoices):
        PROPOSED = "proposed", "Proposed"
        APPLIED = "applied", "Applied"
        REJECTED = "rejected", "Rejected"

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PROPOSED)
    max_moves = models.PositiveSmallIntegerField()
    total_score = models.FloatField(help_text="Sum of the moves' gain minus disruption, in points.")
    solver_run = models.ForeignKey(SolverRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("approve_rebalanceplan", "Can approve or reject rebalancing plans")]
        constraints = [
            models.UniqueConstraint(fields=["status"], condition=Q(status="proposed"), name="one_proposed_rebalance"),
        ]

    def __str__(self) -> str:
        return f"rebalancing plan {self.pk} ({self.status})"


class RebalanceMove(models.Model):
    """One proposed migration of a reservation, with its score and, once decided, its outcome."""

    class Outcome(models.TextChoices):
        PENDING = "pending", "Pending"
        APPLIED = "applied", "Applied"
        SKIPPED = "skipped", "Skipped"

    plan = models.ForeignKey(RebalancePlan, on_delete=models.CASCADE, related_name="moves")
    reservation = models.ForeignKey(Reservation, on_delete=models.CASCADE, related_name="+")
    from_node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="+")
    to_node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="+")
    target_price_per_gpu_hour = models.DecimalField(
        max_digits=10, decimal_places=4, help_text="The target node's price when the move was proposed.",
    )
    gain = models.FloatField()
    disruption = models.FloatField()
    score = models.FloatField()
    explanation = models.TextField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.PENDING)
    outcome_detail = models.TextField(blank=True)

    class Meta:
        ordering = ["-score", "id"]

    def __str__(self) -> str:
        return f"move of reservation {self.reservation_id} from {self.from_node_id} to {self.to_node_id}"
