"""Authentication of provider agents by their node's key: ``Authorization: Node <key>``."""

from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, permissions

from marketplace.exceptions import MarketplaceError

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
            raise NodeKeyMissing("The node key is unknown or was replaced. Issue the node's current key with "
                                 "'manage.py issue_node_key HOSTNAME' and send 'Authorization: Node <key>'.",
                                 code="invalid_node_key")
        return AnonymousUser(), credential

    def authenticate_header(self, request) -> str:
        return KEYWORD


class NodeKeyMissing(MarketplaceError):
    """No valid node key came with an agent request (HTTP 401)."""

    def __init__(self, detail: str, *, code: str = "node_key_required"):
        super().__init__(detail=detail, code=code, status=401, title="Node key required")


class IsNodeAgent(permissions.BasePermission):
    """Allows requests authenticated with a node key only; others get a 401 that names the header to send."""

    def has_permission(self, request, view) -> bool:
        if not isinstance(request.auth, NodeCredential):
            raise NodeKeyMissing("Agent endpoints take node keys only. Send the header 'Authorization: Node <key>' "
                                 "with the key that 'manage.py issue_node_key HOSTNAME' printed for this node.")
        return True


class NodeKeyScheme(OpenApiAuthenticationExtension):
    """Documents the node key in the OpenAPI schema."""

    target_class = NodeKeyAuthentication
    name = "nodeKey"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Node KEY`, where KEY is the node's agent key, issued with manage.py issue_node_key."}
