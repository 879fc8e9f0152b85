"""Request and response shapes of the agent, decision, priority class and queue endpoints."""

import re
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework import serializers

from allocation.api.serializers import AwareDateTimeField, StrictIntegerField, StrictSerializer

from ..agents import REPORT_STATES
from ..models import Decision, PriorityClass, Queue


class AssignmentSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    reservation = serializers.IntegerField(source="reservation_id")
    action = serializers.CharField(help_text="start: start the work; run: keep it running; stop: stop it by stop_by.")
    status = serializers.CharField()
    gpu_uuids = serializers.SerializerMethodField(help_text="The GPUs to use, as NVIDIA writes them (GPU-...).")
    gpu_milli_per_gpu = serializers.IntegerField(source="reservation.gpu_milli_per_gpu")
    cpu_millicores = serializers.IntegerField(source="reservation.cpu_millicores")
    memory_mib = serializers.IntegerField(source="reservation.memory_mib")
    ends_at = serializers.DateTimeField(source="reservation.end_at")
    stop_by = serializers.DateTimeField(allow_null=True)

    def get_gpu_uuids(self, assignment) -> list[str]:
        return [f"GPU-{uuid}" for uuid in assignment.gpu_uuids]


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


MAX_GPUS_PER_NODE = 64
MAX_SNAPSHOTS_PER_HEARTBEAT = 60
"""The agent sends at most 60 snapshots per request; 60 x 64 GPUs stays under Django's request size limit."""
MAX_CLOCK_AHEAD = timedelta(minutes=5)


def _bare(uuid: str) -> str:
    text = uuid.strip().lower()
    return text[4:] if text.startswith("gpu-") else text


GPU_UUID = re.compile(r"(GPU-)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class GpuUuidField(serializers.CharField):
    """An NVIDIA GPU UUID in its canonical form, with or without the ``GPU-`` prefix."""

    def to_internal_value(self, data):
        text = super().to_internal_value(data).strip()
        if not GPU_UUID.fullmatch(text):
            raise serializers.ValidationError(
                f"{text[:64]!r} is not a GPU UUID; send the form GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx.")
        return text


class StrictFloatField(serializers.FloatField):
    """A JSON number only: no boolean and no string."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


class DiscoveredGpuSerializer(StrictSerializer):
    index = StrictIntegerField(min_value=0, max_value=MAX_GPUS_PER_NODE - 1)
    uuid = GpuUuidField(max_length=64)
    model = serializers.CharField(max_length=128, allow_blank=True)
    memory_mib = StrictIntegerField(min_value=0, max_value=1 << 24)


class AgentRegisterSerializer(StrictSerializer):
    agent_version = serializers.CharField(max_length=32)
    backend = serializers.CharField(max_length=32, required=False, allow_blank=True, default="")
    driver_version = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    cuda_version = serializers.CharField(max_length=32, required=False, allow_blank=True, default="")
    gpus = DiscoveredGpuSerializer(many=True, min_length=1, max_length=MAX_GPUS_PER_NODE)

    def validate_gpus(self, gpus):
        for key in ("index", "uuid"):
            values = [_bare(str(gpu[key])) for gpu in gpus]
            if len(values) != len(set(values)):
                raise serializers.ValidationError(f"Two GPUs have the same {key}; each GPU needs its own.")
        return gpus


class GpuReadingSerializer(StrictSerializer):
    uuid = GpuUuidField(max_length=64)
    temperature_c = StrictFloatField(required=False, allow_null=True, min_value=-50, max_value=200)
    utilization_pct = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=100)
    memory_used_mib = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=1 << 24)
    power_w = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=10_000)
    ecc_uncorrected = StrictIntegerField(required=False, default=0, min_value=0, max_value=1 << 31)
    xid_events = serializers.ListField(child=StrictIntegerField(min_value=0, max_value=100_000), required=False,
                                       default=list, max_length=100)


class SnapshotSerializer(StrictSerializer):
    at = AwareDateTimeField()
    gpus = GpuReadingSerializer(many=True, max_length=MAX_GPUS_PER_NODE)

    def validate_at(self, at):
        now = timezone.now()
        oldest = now - timedelta(hours=settings.MARKETPLACE["READING_RETENTION_HOURS"])
        if not oldest <= at <= now + MAX_CLOCK_AHEAD:
            raise serializers.ValidationError(
                f"The reading time {at.isoformat()} is outside {oldest.isoformat()} to now; check the node's clock "
                f"(readings older than the retention period are not stored).")
        return at

    def validate_gpus(self, gpus):
        uuids = [_bare(reading["uuid"]) for reading in gpus]
        if len(uuids) != len(set(uuids)):
            raise serializers.ValidationError("A GPU appears twice in one snapshot; send one reading per GPU.")
        return gpus


class HeartbeatSerializer(StrictSerializer):
    agent_version = serializers.CharField(max_length=32, required=False, allow_blank=True, default="")
    snapshots = SnapshotSerializer(many=True, min_length=1, max_length=MAX_SNAPSHOTS_PER_HEARTBEAT)
