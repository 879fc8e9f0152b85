"""Property-based requests generated from the OpenAPI schema: no 500, and responses match the schema."""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from marketplace.wsgi import application

from ..factories import member_with_token

schema = schemathesis.openapi.from_wsgi("/api/schema/", application)

EXAMPLES_PER_OPERATION = 50


def not_a_server_error(ctx, response, case):
    """Fail on any 5xx, naming the request that caused it."""
    assert response.status_code < 500, f"{case.method} {case.formatted_path} answered {response.status_code}"


@pytest.fixture
def token(customer, t4_node):
    _, key = member_with_token(customer, "fuzzer")
    return key


# Each request commits on its own, as in production, so one failed statement cannot poison the rest.
@pytest.mark.django_db(transaction=True)
@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_api_conforms_to_schema(case, token):
    response = case.call(headers={"Authorization": f"Token {token}"})

    case.validate_response(response, checks=[not_a_server_error, content_type_conformance,
                                             response_schema_conformance])
