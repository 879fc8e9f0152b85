"""Requests to drain unhealthy nodes that need an admin's approval."""

from django.conf import settings
from django.db import models
from django.db.models import Q


class NodeDrainRequest(models.Model):
    """An unhealthy node that holds many reservations: it is drained only after an admin approves."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    node = models.ForeignKey("marketplace.Node", on_delete=models.CASCADE, related_name="drain_requests")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    reservations = models.PositiveIntegerField(help_text="Reservations on the node when the request was made.")
    reason = models.TextField()
    created_at = models.DateTimeField()
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("approve_nodedrainrequest", "Can approve drains of unhealthy nodes")]
        constraints = [models.UniqueConstraint(fields=["node"], condition=Q(status="pending"),
                                               name="one_pending_drain_request_per_node")]

    def __str__(self) -> str:
        return f"drain request {self.pk} for {self.node_id} ({self.status})"


class UsageEntry(models.Model):
    """Metered usage of one reservation on one node, from the start and stop its agent reported, priced in Decimal.

    ``gpu_milli_seconds`` is the billed GPU milli times the seconds run; ``amount`` is that at the
    booked price per GPU-hour, to a millionth of the currency (rounded half up). Invoices and
    earnings add amounts and round the sum to cents once.
    """

    assignment = models.OneToOneField("scheduler.Assignment", on_delete=models.PROTECT, related_name="usage")
    reservation = models.ForeignKey("allocation.Reservation", on_delete=models.PROTECT, related_name="usage")
    customer = models.ForeignKey("marketplace.Organization", on_delete=models.PROTECT, related_name="+")
    provider = models.ForeignKey("marketplace.Organization", on_delete=models.PROTECT, related_name="+")
    node = models.ForeignKey("marketplace.Node", on_delete=models.PROTECT, related_name="+")
    started_at = models.DateTimeField()
    stopped_at = models.DateTimeField()
    billed_gpu_milli = models.PositiveIntegerField()
    gpu_milli_seconds = models.PositiveBigIntegerField()
    price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4)
    amount = models.DecimalField(max_digits=18, decimal_places=6)
    provider_share = models.DecimalField(max_digits=18, decimal_places=6,
                                         help_text="The amount less the marketplace's fee.")
    currency = models.CharField(max_length=3)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-stopped_at", "-id"]
        indexes = [models.Index(fields=["customer", "stopped_at"], name="usage_customer_stopped"),
                   models.Index(fields=["provider", "stopped_at"], name="usage_provider_stopped")]
        constraints = [models.CheckConstraint(condition=models.Q(stopped_at__gte=models.F("started_at")),
                                              name="usage_window_ordered")]

    def __str__(self) -> str:
        return f"usage of reservation {self.reservation_id}: {self.amount} {self.currency}"


class ProviderProfile(models.Model):
    """A provider's own settings: the lowest price per GPU-hour it accepts for any of its nodes."""

    organization = models.OneToOneField("marketplace.Organization", on_delete=models.CASCADE,
                                        related_name="provider_profile")
    min_price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4, default=0,
                                                 help_text="Node prices below this are rejected.")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"profile of {self.organization_id}"
