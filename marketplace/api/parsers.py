"""Request parsing and content negotiation of the API."""

from rest_framework.exceptions import ParseError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import JSONParser


class SafeJSONParser(JSONParser):
    """JSON parser that rejects nesting too deep for Python's parser with a 400, not a crash."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error: the body is nested too deeply.") from None





class JSONOnlyNegotiation(DefaultContentNegotiation):
    """Always render JSON, whatever the Accept header requests, so a browser still gets a readable error."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
