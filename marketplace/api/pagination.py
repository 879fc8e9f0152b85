"""Pagination whose errors name the ``page`` parameter and its valid range."""

from rest_framework.exceptions import NotFound as DRFNotFound
from rest_framework.pagination import PageNumberPagination

from marketplace.exceptions import FieldProblem, InvalidRequest, NotFound


class StrictPageNumberPagination(PageNumberPagination):
    """Page numbers: a non-integer or a page below 1 is a 400, a page past the end a 404."""

    def paginate_queryset(self, queryset, request, view=None):
        raw = request.query_params.get(self.page_query_param, "1")
        if not raw.isascii() or not raw.isdigit() or len(raw) > 9 or int(raw) < 1:
            raise InvalidRequest(
                f"page {raw[:20]!r} is not a page number. Use an integer from 1 to 999999999.",
                errors=[FieldProblem("page", "Use an integer from 1 to 999999999.", "invalid")],
            )
        try:
            return super().paginate_queryset(queryset, request, view)
        except DRFNotFound:
            raise NotFound(f"Page {raw} is past the last page. Start again from page 1.") from None
