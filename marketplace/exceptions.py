"""The domain's exception tree: every error carries a machine code, a message and the fix.

The API turns these into RFC 9457 problem details (see ``marketplace.api.errors``); services raise
them and never build HTTP responses themselves.
"""

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FieldProblem:
    """One invalid input field: where it is, what is wrong, and how to fix it."""

    field: str
    message: str
    code: str = "invalid"


@dataclass
class MarketplaceError(Exception):
    """Base class of the domain's errors.

    ``code`` is a stable machine-readable identifier, and ``detail`` states what failed and how to fix it.
    """

    detail: str
    code: str = "error"
    status: int = 400
    title: str = "Request failed"
    errors: list[FieldProblem] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.detail


class InvalidRequest(MarketplaceError):
    """Input that can never succeed as sent (HTTP 400)."""

    def __init__(self, detail: str, *, errors: list[FieldProblem] | None = None, code: str = "invalid_request"):
        super().__init__(detail=detail, code=code, status=400, title="Invalid request", errors=errors or [])


class NotFound(MarketplaceError):
    """An object that does not exist or that the caller may not see (HTTP 404)."""

    def __init__(self, detail: str, *, code: str = "not_found"):
        super().__init__(detail=detail, code=code, status=404, title="Not found")


class InvalidTransition(MarketplaceError):
    """A lifecycle change that the object's current state does not allow (HTTP 409)."""

    def __init__(self, detail: str, *, current: str, requested: str):
        super().__init__(
            detail=detail,
            code="invalid_transition",
            status=409,
            title="Invalid state transition",
            extra={"current_status": current, "requested_status": requested},
        )


class PermissionDenied(MarketplaceError):
    """The caller is authenticated but may not do this (HTTP 403)."""

    def __init__(self, detail: str, *, code: str = "permission_denied"):
        super().__init__(detail=detail, code=code, status=403, title="Permission denied")
