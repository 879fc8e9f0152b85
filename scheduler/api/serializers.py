"""Request and response shapes of the agent, decision, priority class and queue endpoints."""

from rest_framework import serializers

from allocation.api.serializers import StrictIntegerField, StrictSerializer

from ..agents import REPORT_STATES
from ..models import Decision, PriorityClass, Queue


class AssignmentSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    reservation = serializers.IntegerField(source="reservation_id")
    action = serializers.CharField(help_text="start: start the work; run: keep it running; stop: stop it by stop_by.")
    status = serializers.CharField()
    gpu_uuids = serializers.ListField(child=serializers.UUIDField())
    gpu_milli_per_gpu = serializers.IntegerField(source="reservation.gpu_milli_per_gpu")
    cpu_millicores = serializers.IntegerField(source="reservation.cpu_millicores")
    memory_mib = serializers.IntegerField(source="reservation.memory_mib")
    ends_at = serializers.DateTimeField(source="reservation.end_at")
    stop_by = serializers.DateTimeField(allow_null=True)


class AssignmentListSerializer(serializers.Serializer):
    node = serializers.CharField()
    poll_after_seconds = serializers.IntegerField()
    assignments = AssignmentSerializer(many=True)


class AgentReportSerializer(StrictSerializer):
    state = serializers.ChoiceField(choices=REPORT_STATES)
    exit_code = StrictIntegerField(required=False, allow_null=True, default=None, min_value=-255, max_value=255)
    message = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)


class DecisionSerializer(serializers.ModelSerializer):
    reservation = serializers.IntegerField(source="reservation_id")
    cycle = serializers.IntegerField(source="cycle_id", allow_null=True)

    class Meta:
        model = Decision
        fields = ["id", "reservation", "kind", "reason_code", "reason", "at", "cycle", "detail"]
        read_only_fields = fields


class PriorityClassSerializer(serializers.ModelSerializer):
    class Meta:
        model = PriorityClass
        fields = ["name", "value", "can_preempt", "preemptible", "preemption_mode", "grace_period_seconds",
                  "min_runtime_seconds", "preemption_needs_approval", "is_default", "description"]
        read_only_fields = fields


class QueueSerializer(serializers.ModelSerializer):
    class Meta:
        model = Queue
        fields = ["name", "strict_fifo", "description"]
        read_only_fields = fields
