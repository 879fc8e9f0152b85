"""Admin views of the capacity app; plans are decided on the HTMX page, so the admin shows them read-only."""

from django.contrib import admin

from .models import CapacityPlan, CapacityPlanLine, DemandForecast, DemandSeries


@admin.register(DemandSeries)
class DemandSeriesAdmin(admin.ModelAdmin):
    list_display = ["key", "label", "source", "gpu_model", "region", "unit", "price_per_unit_hour"]
    list_filter = ["source", "gpu_model", "region"]
    search_fields = ["key", "label"]
    readonly_fields = ["key", "source", "gpu_model", "region"]


@admin.register(DemandForecast)
class DemandForecastAdmin(admin.ModelAdmin):
    list_display = ["series", "created_at", "first_hour", "horizon_hours", "model_name", "status", "history_hours"]
    list_filter = ["model_name", "status"]
    search_fields = ["series__key"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class CapacityPlanLineInline(admin.TabularInline):
    model = CapacityPlanLine
    extra = 0
    can_delete = False
    fields = ["series", "capacity", "peak_at_service_level", "required", "action", "delta", "delta_low",
              "delta_high", "monthly_cost", "currency", "explanation"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(CapacityPlan)
class CapacityPlanAdmin(admin.ModelAdmin):
    list_display = ["id", "created_at", "status", "service_level", "horizon_hours", "growth_pct_per_month",
                    "total_monthly_cost", "currency", "decided_by"]
    list_filter = ["status"]
    inlines = [CapacityPlanLineInline]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
