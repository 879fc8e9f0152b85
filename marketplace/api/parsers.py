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
        except ParseError as error:
            if "integer string conversion" in str(error.detail):
                # Python refuses integers of more than sys.get_int_max_str_digits() digits (4300 by default).
                raise ParseError("JSON parse error: a number in the body has thousands of digits. Send numbers "
                                 "within the ranges in /api/docs/.") from None
            raise





class JSONOnlyNegotiation(DefaultContentNegotiation):
    """Always render JSON, whatever the Accept header requests, so a browser still gets a readable error."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
