"""Strict serializers: each instance binds its own field copies, and the declared fields stay untouched."""

from allocation.api.serializers import ReservationCreateSerializer
from scheduler.api.serializers import HeartbeatSerializer

BODY = {"gpu_count": 1, "gpu_milli_per_gpu": 470, "start_at": "2026-12-07T10:00:00+00:00",
        "end_at": "2026-12-07T12:00:00+00:00", "gpu_models": ["T4"]}


def test_instances_bind_own_fields():
    first = ReservationCreateSerializer(data=BODY)
    second = ReservationCreateSerializer(data=BODY)

    for name in ("gpu_count", "gpu_models", "end_at"):
        assert first.fields[name] is not second.fields[name]
        assert first.fields[name].parent is first
        assert second.fields[name].parent is second
        assert ReservationCreateSerializer._declared_fields[name].parent is None


def test_list_field_child_not_shared():
    first = ReservationCreateSerializer(data=BODY)
    second = ReservationCreateSerializer(data=BODY)

    assert first.fields["gpu_models"].child is not second.fields["gpu_models"].child
    assert first.fields["gpu_models"].child.parent is first.fields["gpu_models"]


def test_nested_serializer_copied_deeply():
    first = HeartbeatSerializer(data={})
    second = HeartbeatSerializer(data={})
    nested = [name for name, field in first.fields.items() if hasattr(field, "fields") or hasattr(field, "child")]

    assert nested
    for name in nested:
        assert first.fields[name] is not second.fields[name]
        assert first.fields[name].parent is first


def test_errors_and_values_unchanged_across_instances():
    invalid = ReservationCreateSerializer(data={**BODY, "gpu_milli_per_gpu": 1001, "typo": 1})
    valid = ReservationCreateSerializer(data=BODY)

    assert not invalid.is_valid()
    assert valid.is_valid(), valid.errors
    assert "typo" in invalid.errors
    assert valid.validated_data["gpu_milli_per_gpu"] == 470
    assert valid.validated_data["gpu_models"] == ["T4"]
