"""Admin for node drain requests (approved through the service) and the hourly GPU reading rollups."""

from django.contrib import admin, messages

from marketplace.models import GpuReadingHour

from .health import drain_request_approve
from .models import NodeDrainRequest


@admin.action(description="Approve: drain the node now", permissions=["approve"])
def approve_drain(modeladmin, request, queryset):
    """Approve each pending request through ``drain_request_approve``, which drains its node and audits both."""
    for drain_request in queryset.filter(status=NodeDrainRequest.Status.PENDING):
        summary = drain_request_approve(request_id=drain_request.pk, actor=request.user)
        modeladmin.message_user(request, f"{drain_request.node}: {summary['planned']} moves planned, "
                                         f"{summary['stayed']} reservations stay.", messages.SUCCESS)


@admin.register(NodeDrainRequest)
class NodeDrainRequestAdmin(admin.ModelAdmin):
    list_display = ["id", "created_at", "node", "reservations", "status", "reason", "decided_by"]
    list_filter = ["status"]
    actions = [approve_drain]
    readonly_fields = ["node", "status", "reservations", "reason", "created_at", "decided_by", "decided_at"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        # Only the approve action changes a request, so the decision is audited and drains the node.
        return False

    def has_approve_permission(self, request) -> bool:
        return request.user.has_perm("providers.approve_nodedrainrequest")


@admin.register(GpuReadingHour)
class GpuReadingHourAdmin(admin.ModelAdmin):
    list_display = ["hour", "gpu", "samples", "temperature_max_c", "utilization_mean_pct", "power_mean_w",
                    "ecc_uncorrected_max", "xid_count"]
    list_filter = ["hour"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
