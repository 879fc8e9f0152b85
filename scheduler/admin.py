"""Admin for the scheduler: priority classes and queues (audited), its read-only records, and the drain action."""

from django.contrib import admin, messages

from marketplace.admin import NodeAdmin
from marketplace.audit_admin import AuditedModelAdmin
from marketplace.exceptions import MarketplaceError

from .migrating import node_drain
from .models import (
    Assignment, Decision, Migration, NodeCredential, Preemption, PreemptionVictim, PriorityClass, Queue, SchedulingCycle,
)


@admin.action(description="Drain selected nodes: no new work, move what runs there to other nodes",
              permissions=["drain"])
def drain_nodes(modeladmin, request, queryset):
    """Drain each node through ``node_drain``, which records ``node.drain`` in the audit trail."""
    for node in queryset:
        try:
            summary = node_drain(node_id=node.pk, actor=request.user)
        except MarketplaceError as error:
            modeladmin.message_user(request, f"{node.hostname}: {error}", messages.ERROR)
            continue
        modeladmin.message_user(
            request, f"Node {node.hostname} is draining: {summary['planned']} moves planned, {summary['stayed']} "
                     f"reservations stay (do-not-migrate, or no room elsewhere); see Scheduler > Migrations.")


# The scheduler adds its drain action to the core app's node admin.
NodeAdmin.actions = [*(NodeAdmin.actions or []), drain_nodes]


@admin.register(PriorityClass)
class PriorityClassAdmin(AuditedModelAdmin):
    list_display = ["name", "value", "can_preempt", "preemptible", "preemption_mode", "grace_period_seconds",
                    "min_runtime_seconds", "preemption_needs_approval", "is_default"]
    list_editable = ["value", "can_preempt", "preemptible", "preemption_needs_approval"]


@admin.register(Queue)
class QueueAdmin(AuditedModelAdmin):
    list_display = ["name", "strict_fifo", "description"]


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records written by the scheduler; admins read them and change them only through the services."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(SchedulingCycle)
class SchedulingCycleAdmin(ReadOnlyAdmin):
    list_display = ["id", "started_at", "trigger", "waiting", "placed", "preemptions", "decide_seconds", "seconds"]


@admin.register(Decision)
class DecisionAdmin(ReadOnlyAdmin):
    list_display = ["at", "reservation", "kind", "reason_code", "reason"]
    list_filter = ["kind", "reason_code"]
    search_fields = ["reservation__id"]


class VictimInline(admin.TabularInline):
    model = PreemptionVictim
    extra = 0
    can_delete = False
    readonly_fields = ["reservation", "mode", "requeued_as", "outcome"]


@admin.register(Preemption)
class PreemptionAdmin(ReadOnlyAdmin):
    list_display = ["id", "created_at", "beneficiary", "node", "status", "grace_ends_at", "decided_by"]
    list_filter = ["status"]
    inlines = [VictimInline]


@admin.register(Assignment)
class AssignmentAdmin(ReadOnlyAdmin):
    list_display = ["id", "reservation", "node", "status", "stop_by", "exit_code", "updated_at"]
    list_filter = ["status"]


@admin.register(NodeCredential)
class NodeCredentialAdmin(ReadOnlyAdmin):
    list_display = ["node", "prefix", "created_at", "last_seen_at"]
    exclude = ["secret_hash"]


@admin.register(Migration)
class MigrationAdmin(ReadOnlyAdmin):
    list_display = ["id", "created_at", "reservation", "kind", "from_node", "to_node", "status", "outcome"]
    list_filter = ["status", "kind"]
