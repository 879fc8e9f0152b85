"""Request parsers and renderers of the API."""



from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer


class SafeJSONParser(JSONParser):
    """JSON parser that rejects nesting too deep for Python's parser with a 400, not a crash."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error: the body is nested too deeply.") from None


class ProblemJSONRenderer(JSONRenderer):
    """Lets clients send ``Accept: application/problem+json``; renders the same JSON."""

    media_type = "application/problem+json"



