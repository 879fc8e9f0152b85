"""Request and response shapes of the reservation API; validation of business rules is in the services."""

import copy
import re
from datetime import timedelta, timezone as dt_timezone
from decimal import Decimal

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework import serializers

from marketplace.models import GPU_MILLI_PER_GPU, GpuModel

from ..models import Reservation
from ..pricing import estimated_cost
from ..services import ReservationSpec
from .representation import alternatives_body, reservation_body


ISO_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?",
)


class StrictIntegerField(serializers.IntegerField):
    """An integer that must be a JSON number or digits, never a boolean or a float with a fraction."""

    def to_internal_value(self, data):
        if isinstance(data, bool):
            self.fail("invalid")
        return super().to_internal_value(data)


class AwareDateTimeField(serializers.DateTimeField):
    """An ISO 8601 datetime that must carry a UTC offset; stored and returned in UTC."""

    default_error_messages = {
        "naive": "The datetime {value!r} has no UTC offset. Add one, for example 2026-05-01T10:00:00Z.",
        "invalid": "{value!r} is not an ISO 8601 datetime. Use a form such as 2026-05-01T10:00:00Z.",
        "out_of_range": "{value!r} is outside the supported years {first} to {last}.",
    }
    FIRST_YEAR, LAST_YEAR = 1970, 9000

    def to_internal_value(self, value):
        if not isinstance(value, str) or not ISO_DATETIME.fullmatch(value.strip()):
            self.fail("invalid", value=str(value)[:64])
        try:
            parsed = parse_datetime(value.strip())
        except ValueError:
            parsed = None
        if parsed is None:
            self.fail("invalid", value=value)
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            self.fail("naive", value=value)
        if not self.FIRST_YEAR <= parsed.year <= self.LAST_YEAR:
            self.fail("out_of_range", value=value, first=self.FIRST_YEAR, last=self.LAST_YEAR)
        in_utc = parsed.astimezone(dt_timezone.utc)
        if not self.FIRST_YEAR <= in_utc.year <= self.LAST_YEAR:
            self.fail("out_of_range", value=value, first=self.FIRST_YEAR, last=self.LAST_YEAR)
        return in_utc


class StrictSerializer(serializers.Serializer):
    """A serializer that rejects fields it does not know, so a typo is not silently ignored.

    Each instance gets shallow copies of the declared fields, which the serializer then binds to
    itself, instead of DRF's deep copies: DRF builds every field again from its arguments, which
    took about a third of a reservation body's validation time (281 to 186 us per body). Nested serializers and list or dict
    fields are still deep-copied, because a shallow copy would share their bound children.
    Subclasses must not change a field's validators or error messages on an instance.
    """

    MAX_REPORTED_UNKNOWN = 10
    DEEP_COPIED_FIELDS = (serializers.BaseSerializer, serializers.ListField, serializers.DictField)

    def get_fields(self):
        return {
            name: copy.deepcopy(field) if isinstance(field, self.DEEP_COPIED_FIELDS) else copy.copy(field)
            for name, field in self._declared_fields.items()
        }

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                valid = ", ".join(sorted(self.fields))
                reported = {name[:64]: ["Unknown field."] for name in unknown[: self.MAX_REPORTED_UNKNOWN]}
                reported["non_field_errors"] = [
                    f"{len(unknown)} unknown field(s); the valid fields are: {valid}."
                ]
                raise serializers.ValidationError(reported)
        return super().to_internal_value(data)


class JsonBooleanField(serializers.BooleanField):
    """A JSON ``true`` or ``false`` only; DRF's own field also takes "yes", "on", 1 and similar."""

    default_error_messages = {"invalid": "Must be true or false (a JSON boolean)."}

    def to_internal_value(self, data):
        if isinstance(data, bool):
            return data
        self.fail("invalid")


class ReservationCreateSerializer(StrictSerializer):
    gpu_count = StrictIntegerField(min_value=0, max_value=64, help_text="GPUs on one node; 0 for CPU only.")
    gpu_milli_per_gpu = StrictIntegerField(
        min_value=0, max_value=GPU_MILLI_PER_GPU, required=False,
        help_text="Milli of each GPU (1000 is a whole GPU). Default: 1000, or 0 when gpu_count is 0.",
    )
    cpu_millicores = StrictIntegerField(
        min_value=0, max_value=10_000_000, default=0,
        help_text="Host CPU to hold on the node, in millicores (1000 = one core). Default: 0, none held.",
    )
    memory_mib = StrictIntegerField(
        min_value=0, max_value=1 << 40, default=0,
        help_text="Host memory to hold on the node, in MiB. Default: 0, none held.",
    )
    start_at = AwareDateTimeField(required=False, help_text="Window start with offset; default: now.")
    end_at = AwareDateTimeField(help_text="Window end with offset; the window is [start_at, end_at).")
    gpu_models = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, default=list, max_length=32,
        help_text="Acceptable GPU model names; empty means any.",
    )
    region = serializers.CharField(max_length=64, required=False, allow_null=True, default=None)
    max_price_per_gpu_hour = serializers.DecimalField(
        max_digits=10, decimal_places=4, min_value=Decimal("0.0001"), required=False, allow_null=True, default=None,
    )
    external_ref = serializers.CharField(max_length=128, required=False, default="", allow_blank=True)
    do_not_migrate = JsonBooleanField(
        required=False, default=False,
        help_text="True keeps the reservation on the node it is placed on; rebalancing plans never move it.",
    )
    priority_class = serializers.CharField(
        max_length=64, required=False, allow_null=True, default=None,
        help_text="A name from GET /api/v1/priority-classes/; default: the default class.",
    )
    interruptible = JsonBooleanField(
        required=False, default=False,
        help_text="True pays less (see the priority classes) and may be preempted by higher priorities.",
    )
    queue_if_unavailable = JsonBooleanField(
        required=False, default=False,
        help_text="True waits in the queue (202, status queued) instead of a 409 when capacity or quota is short. "
                  "The window's length is the run time; it starts when the scheduler places it.",
    )
    queue = serializers.CharField(max_length=64, required=False, allow_null=True, default=None,
                                  help_text="A queue name from GET /api/v1/queues/; default: default.")
    latest_start_at = AwareDateTimeField(
        required=False, allow_null=True, default=None,
        help_text="For queued requests: expire unless started by then; default: start_at plus the maximum wait.",
    )

    def to_spec(self) -> ReservationSpec:
        data = self.validated_data
        gpu_milli = data.get("gpu_milli_per_gpu")
        if gpu_milli is None:
            gpu_milli = GPU_MILLI_PER_GPU if data["gpu_count"] > 0 else 0
        return ReservationSpec(
            gpu_count=data["gpu_count"],
            gpu_milli_per_gpu=gpu_milli,
            cpu_millicores=data["cpu_millicores"],
            memory_mib=data["memory_mib"],
            start_at=data.get("start_at") or timezone.now(),
            end_at=data["end_at"],
            gpu_models=tuple(data["gpu_models"]),
            region=data["region"],
            max_price_per_gpu_hour=data["max_price_per_gpu_hour"],
            external_ref=data["external_ref"],
            do_not_migrate=data["do_not_migrate"],
            priority_class=data["priority_class"],
            interruptible=data["interruptible"],
            queue_if_unavailable=data["queue_if_unavailable"],
            queue=data["queue"],
            latest_start_at=data["latest_start_at"],
        )


class GpuShareSerializer(serializers.Serializer):
    index = serializers.IntegerField(source="gpu.index")
    uuid = serializers.UUIDField(source="gpu.uuid")
    gpu_milli = serializers.IntegerField()


class AllocationSerializer(serializers.Serializer):
    node = serializers.CharField(source="node.hostname")
    provider = serializers.CharField(source="node.provider.slug")
    region = serializers.CharField(source="node.region.code")
    gpu_model = serializers.CharField(source="gpu_model.name")
    gpus = GpuShareSerializer(source="shares", many=True)
    start_at = serializers.DateTimeField()
    end_at = serializers.DateTimeField()
    price_per_gpu_hour = serializers.DecimalField(max_digits=10, decimal_places=4)
    currency = serializers.CharField()
    billed_gpus = serializers.SerializerMethodField(
        help_text="GPUs charged: the GPU share, or more when the reservation takes a larger share of the "
                  "node's CPU or memory.",
    )
    borrowed_gpu_milli = serializers.IntegerField(
        help_text="GPU milli held above the organization's own quota, borrowed from its cohort; preempted first.",
    )
    estimated_cost = serializers.SerializerMethodField(help_text="Price x billed GPUs x hours, rounded to cents.")
    released_at = serializers.DateTimeField()

    def get_billed_gpus(self, allocation) -> str:
        return str(Decimal(allocation.billed_gpu_milli) / GPU_MILLI_PER_GPU)

    def get_estimated_cost(self, allocation) -> str:
        return str(estimated_cost(
            price_per_gpu_hour=allocation.price_per_gpu_hour, billed_milli=allocation.billed_gpu_milli,
            start_at=allocation.start_at, end_at=allocation.end_at,
        ))


class SchedulingSerializer(serializers.Serializer):
    priority_class = serializers.CharField(source="priority_class.name")
    priority = serializers.IntegerField(source="priority_class.value")
    queue = serializers.CharField(source="queue.name")
    interruptible = serializers.BooleanField()
    duration_seconds = serializers.IntegerField()
    latest_start_at = serializers.DateTimeField(allow_null=True)
    queue_position = serializers.IntegerField(source="position", allow_null=True,
                                              help_text="1 is next, as of the last scheduling cycle; null when not waiting.")
    waiting_reason_code = serializers.CharField()
    waiting_reason = serializers.CharField(help_text="Why it waits, in plain words.")
    estimated_start_at = serializers.DateTimeField(
        allow_null=True, help_text="When the held window starts if nothing changes; null when not known.",
    )
    requeued_from = serializers.IntegerField(source="requeued_from_id", allow_null=True)


class ReservationSerializer(serializers.ModelSerializer):
    customer = serializers.CharField(source="customer.slug")
    gpu_models = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)
    region = serializers.CharField(source="region.code", allow_null=True)
    allocation = serializers.SerializerMethodField()
    scheduling = serializers.SerializerMethodField()

    class Meta:
        model = Reservation
        fields = [
            "id", "customer", "external_ref", "status", "reason_code", "reason_detail",
            "gpu_count", "gpu_milli_per_gpu", "gpu_models", "region", "cpu_millicores", "memory_mib",
            "start_at", "end_at", "max_price_per_gpu_hour", "currency", "hold_expires_at", "do_not_migrate",
            "allocation", "scheduling", "created_at", "updated_at",
        ]
        read_only_fields = fields

    def to_representation(self, reservation) -> dict:
        return reservation_body(reservation)

    def get_allocation(self, reservation) -> dict | None:
        allocation = getattr(reservation, "allocation", None)
        return AllocationSerializer(allocation).data if allocation is not None else None

    def get_scheduling(self, reservation) -> dict | None:
        workload = getattr(reservation, "workload", None)
        return SchedulingSerializer(workload).data if workload is not None else None


class GpuModelSerializer(serializers.ModelSerializer):
    class Meta:
        model = GpuModel
        fields = ["name", "vendor", "memory_gib", "description"]


class OfferQuerySerializer(StrictSerializer):
    start_at = AwareDateTimeField(required=False)
    end_at = AwareDateTimeField(required=False)
    gpu_model = serializers.CharField(max_length=64, required=False, help_text="Repeat to allow several models.")
    region = serializers.CharField(max_length=64, required=False)
    max_price_per_gpu_hour = serializers.DecimalField(
        max_digits=10, decimal_places=4, min_value=Decimal("0.0001"), required=False,
    )

    def validate(self, data):
        start_at = data.get("start_at") or timezone.now()
        end_at = data.get("end_at") or start_at + timedelta(hours=1)
        if end_at <= start_at:
            raise serializers.ValidationError({"end_at": ["end_at must be after start_at (default: now)."]})
        data["start_at"], data["end_at"] = start_at, end_at
        return data


class OfferSerializer(serializers.Serializer):
    gpu_model = serializers.CharField()
    region = serializers.CharField()
    price_per_gpu_hour = serializers.DecimalField(max_digits=10, decimal_places=4)
    currency = serializers.CharField()
    nodes = serializers.IntegerField()
    whole_gpus_free = serializers.IntegerField()
    gpu_milli_free = serializers.IntegerField()


class OfferListSerializer(serializers.Serializer):
    start_at = serializers.DateTimeField()
    end_at = serializers.DateTimeField()
    results = OfferSerializer(many=True)


class OptionSerializer(serializers.Serializer):
    gpu_model = serializers.CharField()
    region = serializers.CharField()
    price_per_gpu_hour = serializers.DecimalField(max_digits=10, decimal_places=4)
    currency = serializers.CharField()


class AlternativesSerializer(serializers.Serializer):
    earliest_start_at = serializers.DateTimeField(
        allow_null=True, help_text="Earliest start at which the request fits as asked; null if none was found.",
    )
    options = OptionSerializer(many=True, help_text="GPU models and regions where it fits in its window now.")

    def to_representation(self, alternatives) -> dict:
        return alternatives_body(alternatives)


class QuoteSerializer(serializers.Serializer):
    fits = serializers.BooleanField(help_text="Whether a reservation sent now would be placed.")
    start_at = serializers.DateTimeField()
    end_at = serializers.DateTimeField()
    reason_code = serializers.CharField(help_text="Why it does not fit; empty when it fits.")
    detail = serializers.CharField()
    gpu_model = serializers.CharField()
    region = serializers.CharField()
    price_per_gpu_hour = serializers.DecimalField(max_digits=10, decimal_places=4, allow_null=True)
    currency = serializers.CharField()
    billed_gpus = serializers.SerializerMethodField()
    estimated_cost = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True)
    alternatives = AlternativesSerializer(allow_null=True)
    needs_approval = serializers.BooleanField(
        help_text="Whether the reservation would wait for an admin's approval (answered with 202).",
    )

    def get_billed_gpus(self, quote) -> str:
        return str(Decimal(quote.billed_gpu_milli) / GPU_MILLI_PER_GPU)
