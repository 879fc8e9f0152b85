from django.contrib import admin, messages

from marketplace.models import GpuReadingHour

from .health import drain_request_approve
from .models import NodeDrainRequest


@admin.action(description="Approve: drain the node now", permissions=["change"])
def approve_drain(modeladmin, request, queryset):
    for drain_request in queryset.filter(status=NodeDrainRequest.Status.PENDING):
        summary = drain_request_approve(request_id=drain_request.pk, actor=request.user)
        modeladmin.message_user(request, f"{drain_request.node}: {summary['planned']} moves planned, "
                                         f"{summary['stayed']} reservations stay.", messages.SUCCESS)


@admin.register(NodeDrainRequest)
class NodeDrainRequestAdmin(admin.ModelAdmin):
    list_display = ["id", "created_at", "node", "reservations", "status", "reason", "decided_by"]
    list_filter = ["status"]
    actions = [approve_drain]
    readonly_fields = ["node", "reservations", "reason", "created_at", "decided_by", "decided_at"]

    def has_add_permission(self, request):
        return False


@admin.register(GpuReadingHour)
class GpuReadingHourAdmin(admin.ModelAdmin):
    list_display = ["hour", "gpu", "samples", "temperature_max_c", "utilization_mean_pct", "power_mean_w",
                    "ecc_uncorrected_max", "xid_count"]
    list_filter = ["hour"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
