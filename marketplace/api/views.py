"""Endpoints of the API that belong to no single app."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

PING_RESPONSE = inline_serializer("Ping", {
    "user": serializers.CharField(),
    "organization": serializers.CharField(allow_null=True),
})


class PingView(APIView):
    """An authenticated no-op: checks the token and measures the round trip without touching any domain data."""

    @extend_schema(request=None, responses={200: PING_RESPONSE})
    def get(self, request: Request) -> Response:
        return Response(self._identity(request))

    @extend_schema(request=None, responses={200: PING_RESPONSE})
    def post(self, request: Request) -> Response:
        return Response(self._identity(request))

    @staticmethod
    def _identity(request: Request) -> dict:
        membership = getattr(request.user, "membership", None)
        return {
            "user": request.user.get_username(),
            "organization": membership.organization.slug if membership else None,
        }
