"""Serializers that document the API's shared shapes in the OpenAPI schema."""

from rest_framework import serializers


class FieldErrorSerializer(serializers.Serializer):
    field = serializers.CharField(help_text="The invalid field, dotted for nested values.")
    message = serializers.CharField(help_text="What is wrong and how to fix it.")
    code = serializers.CharField(help_text="Machine-readable error code.")


class ProblemSerializer(serializers.Serializer):
    """RFC 9457 problem details, the body of every error response."""

    type = serializers.CharField()
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField(help_text="What failed and how to fix it.")
    code = serializers.CharField(help_text="Stable machine-readable code, for example no_capacity.")
    errors = FieldErrorSerializer(many=True, required=False)


def problem_responses(descriptions: dict[int, str]) -> dict:
    """Return drf-spectacular responses documenting problem-details bodies for the given status codes."""
    from drf_spectacular.utils import OpenApiResponse

    return {
        (status, "application/problem+json"): OpenApiResponse(ProblemSerializer, description=description)
        for status, description in descriptions.items()
    }
