"""Admin for organizations, members, the fleet and the read-only audit trail."""

from django.contrib import admin

from .models import AuditEvent, Gpu, GpuModel, Membership, Node, Organization, Region


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "kind", "created_at"]
    list_filter = ["kind"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "organization", "role"]
    list_filter = ["role", "organization__kind"]
    search_fields = ["user__username", "organization__slug"]
    autocomplete_fields = ["user", "organization"]


@admin.register(GpuModel)
class GpuModelAdmin(admin.ModelAdmin):
    list_display = ["name", "vendor", "memory_gib", "description"]
    search_fields = ["name", "vendor"]


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):
    list_display = ["code", "name"]
    search_fields = ["code", "name"]


class GpuInline(admin.TabularInline):
    model = Gpu
    extra = 0
    fields = ["index", "uuid", "model_name", "health", "health_score", "health_reasons", "first_reading_at", "retired_at"]
    readonly_fields = ["index", "uuid", "model_name", "health_score", "health_reasons", "first_reading_at",
                       "retired_at"]
    can_delete = False


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = [
        "hostname", "provider", "region", "gpu_model", "gpu_count", "cpu_millicores", "memory_mib",
        "price_per_gpu_hour", "currency", "status", "health", "last_heartbeat_at",
    ]
    list_filter = ["status", "health", "gpu_model", "region", "provider", "gpu_count"]
    search_fields = ["hostname", "provider__slug"]
    list_select_related = ["provider", "region", "gpu_model"]
    autocomplete_fields = ["provider", "region"]
    inlines = [GpuInline]

    def has_drain_permission(self, request) -> bool:
        """Allow the scheduler's drain action (added to ``actions`` by ``scheduler.admin``)."""
        return request.user.has_perm("marketplace.drain_node")


@admin.register(Gpu)
class GpuAdmin(admin.ModelAdmin):
    list_display = ["__str__", "uuid", "health", "health_score", "first_reading_at", "node"]
    list_filter = ["health", "node__gpu_model"]
    search_fields = ["uuid", "node__hostname"]
    list_select_related = ["node"]
    readonly_fields = ["node", "index", "uuid"]


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit trail, read-only for everyone, superusers included."""

    list_display = ["sequence", "at", "action", "actor_kind", "actor_label", "object_type", "object_id",
                    "organization", "request_id"]
    list_filter = ["action", "actor_kind", "actor_user", "organization"]
    search_fields = ["=object_id", "actor_label", "request_id", "action"]
    list_select_related = ["organization"]
    date_hierarchy = "at"
    readonly_fields = [field.name for field in AuditEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
