"""Admin for quotas, budgets, approval policies and cohorts (editable, audited), reservations (cancel only)
and the read-only allocation records."""

import logging

from django.contrib import admin, messages
from django.db import DatabaseError, transaction
from django.utils import timezone

from marketplace.audit import audit_record
from marketplace.audit_admin import AuditedModelAdmin, audit_admin_save
from marketplace.exceptions import MarketplaceError

from .models import (
    Allocation,
    ApprovalPolicy,
    Budget,
    Cohort,
    CohortMembership,
    GpuShare,
    IdempotencyKey,
    Quota,
    RebalanceMove,
    RebalancePlan,
    Reservation,
    ReservationEvent,
    SolverRun,
)
from .services import quota_set, reservation_cancel

logger = logging.getLogger(__name__)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records written only by services: viewable, never added, changed or deleted by hand."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Quota)
class QuotaAdmin(AuditedModelAdmin):
    list_display = ["organization", "gpu_model", "max_gpu_milli", "whole_gpus", "updated_at"]
    list_filter = ["gpu_model"]
    search_fields = ["organization__slug"]
    list_select_related = ["organization", "gpu_model"]
    autocomplete_fields = ["organization"]

    @admin.display(description="Whole GPUs")
    def whole_gpus(self, quota: Quota) -> str:
        return f"{quota.max_gpu_milli / 1000:g}"

    def save_model(self, request, obj, form, change):
        with transaction.atomic():
            if change and ("organization" in form.changed_data or "gpu_model" in form.changed_data):
                Quota.objects.filter(pk=obj.pk).delete()
            saved = quota_set(organization=obj.organization, gpu_model=obj.gpu_model,
                              max_gpu_milli=obj.max_gpu_milli)
            obj.pk = saved.pk
            audit_admin_save(request, obj, form, change)


class EventInline(ReadOnlyInline):
    model = ReservationEvent
    fields = ["at", "from_status", "to_status", "reason_code", "actor", "note"]
    readonly_fields = fields
    ordering = ["at", "id"]


class ShareInline(ReadOnlyInline):
    model = GpuShare
    fields = ["gpu", "gpu_milli", "start_at", "end_at"]
    readonly_fields = fields


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdmin):
    list_display = [
        "id", "customer", "status", "reason_code", "gpu_count", "gpu_milli_per_gpu", "start_at", "end_at",
        "node", "external_ref",
    ]
    list_filter = ["status", "reason_code", "customer", "gpu_count"]
    search_fields = ["=id", "external_ref", "customer__slug", "allocation__node__hostname"]
    list_select_related = ["customer", "allocation__node"]
    inlines = [EventInline]
    actions = ["cancel_reservations"]

    @admin.display(description="Node", ordering="allocation__node__hostname")
    def node(self, reservation: Reservation) -> str:
        allocation = getattr(reservation, "allocation", None)
        return allocation.node.hostname if allocation else "-"

    def has_cancel_permission(self, request) -> bool:
        return request.user.has_perm("allocation.cancel_reservation")

    @admin.action(description="Cancel the selected reservations", permissions=["cancel"])
    def cancel_reservations(self, request, queryset):
        """Cancel through ``reservation_cancel``; the change page stays read-only."""
        now = timezone.now()
        cancelled = 0
        for reservation_id in queryset.values_list("id", flat=True):
            try:
                with transaction.atomic():
                    reservation = reservation_cancel(reservation_id=reservation_id, actor=request.user, now=now,
                                                     note="Cancelled by an admin.")
                    audit_record(action="reservation.cancel", obj=reservation, actor=request.user,
                                 organization=reservation.customer_id,
                                 details={"after": {"status": reservation.status}, "via": "admin"})
                cancelled += 1
            except MarketplaceError as error:
                self.message_user(request, str(error), messages.WARNING)
            except DatabaseError as error:
                logger.warning("Admin cancel of reservation %s failed in the database: %s", reservation_id, error)
                self.message_user(request, f"Reservation {reservation_id} was not cancelled because the database was "
                                           f"busy or unavailable; try again.", messages.ERROR)
        self.message_user(request, f"Cancelled {cancelled} reservations.", messages.SUCCESS)


@admin.register(Allocation)
class AllocationAdmin(ReadOnlyAdmin):
    list_display = ["reservation", "customer", "node", "gpu_model", "gpu_milli_total", "borrowed_gpu_milli",
                    "start_at", "end_at", "price_per_gpu_hour", "currency", "released_at"]
    list_filter = ["gpu_model", "node__region", "customer"]
    search_fields = ["=reservation__id", "node__hostname", "customer__slug"]
    list_select_related = ["reservation", "customer", "node", "gpu_model"]
    inlines = [ShareInline]


@admin.register(ReservationEvent)
class ReservationEventAdmin(ReadOnlyAdmin):
    list_display = ["at", "reservation", "from_status", "to_status", "reason_code", "actor"]
    list_filter = ["to_status", "reason_code"]
    search_fields = ["=reservation__id"]
    list_select_related = ["reservation", "actor"]


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(AuditedModelAdmin):
    list_display = ["organization", "flagged", "max_gpus_without_approval", "max_cost_without_approval", "updated_at"]
    list_filter = ["flagged"]
    search_fields = ["organization__slug"]
    autocomplete_fields = ["organization"]


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(ReadOnlyAdmin):
    list_display = ["key", "customer", "response_status", "reservation", "created_at"]
    search_fields = ["key", "customer__slug"]
    list_select_related = ["customer", "reservation"]


class CohortMembershipInline(admin.TabularInline):
    model = CohortMembership
    extra = 0
    autocomplete_fields = ["organization"]


@admin.register(Cohort)
class CohortAdmin(AuditedModelAdmin):
    list_display = ["slug", "name"]
    search_fields = ["slug", "name"]
    inlines = [CohortMembershipInline]


@admin.register(Budget)
class BudgetAdmin(AuditedModelAdmin):
    list_display = ["organization", "period", "max_gpu_hours", "max_spend", "currency", "updated_at"]
    list_filter = ["period"]
    search_fields = ["organization__slug"]
    autocomplete_fields = ["organization"]


class RebalanceMoveInline(ReadOnlyInline):
    model = RebalanceMove
    fields = ["reservation", "from_node", "to_node", "gain", "disruption", "score", "explanation", "outcome",
              "outcome_detail"]
    readonly_fields = fields


@admin.register(RebalancePlan)
class RebalancePlanAdmin(ReadOnlyAdmin):
    """Plans are proposed and decided through services, on the rebalancing page or by the planner task."""

    list_display = ["id", "status", "total_score", "max_moves", "created_at", "decided_by", "decided_at"]
    list_filter = ["status"]
    inlines = [RebalanceMoveInline]


@admin.register(SolverRun)
class SolverRunAdmin(ReadOnlyAdmin):
    list_display = ["id", "kind", "policy", "requests", "nodes", "variables", "objective", "status", "wall_ms",
                    "created_at"]
    list_filter = ["kind", "status", "policy"]
