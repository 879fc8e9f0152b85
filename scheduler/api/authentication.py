"""Authentication of provider agents by their node's key: ``Authorization: Node <key>``."""

from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions

from ..agents import node_credential_check
from ..models import NodeCredential

KEYWORD = "Node"


class NodeKeyAuthentication(authentication.BaseAuthentication):
    """Sets ``request.auth`` to the node's ``NodeCredential``; the user stays anonymous."""

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode(errors="replace")
        keyword, _, key = header.partition(" ")
        if keyword != KEYWORD:
            return None
        credential = node_credential_check(key.strip())
        if credential is None:
            raise exceptions.AuthenticationFailed(
                "The node key is unknown or was replaced. Ask the provider's admin for the node's current key.")
        return AnonymousUser(), credential

    def authenticate_header(self, request) -> str:
        return KEYWORD


class IsNodeAgent(permissions.BasePermission):
    message = "Send the header 'Authorization: Node <node key>'; agent endpoints take node keys only."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, NodeCredential)


class NodeKeyScheme(OpenApiAuthenticationExtension):
    """Documents the node key in the OpenAPI schema."""

    target_class = NodeKeyAuthentication
    name = "nodeKey"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "'Node <key>': the node's agent key, issued with manage.py issue_node_key."}
