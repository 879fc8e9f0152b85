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
        constraints = [models.UniqueConstraint(fields=["node"], condition=Q(status="pending"),
                                               name="one_pending_drain_request_per_node")]

    def __str__(self) -> str:
        return f"drain request {self.pk} for {self.node_id} ({self.status})"
