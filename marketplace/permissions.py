"""Permission checks shared by the staff pages."""

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest


def require_permission(request: HttpRequest, permission: str, message: str) -> None:
    """Raise ``PermissionDenied`` with ``message`` unless the user has ``permission``."""
    if not request.user.has_perm(permission):
        raise PermissionDenied(message)
