"""Token authentication: one statement loads the token, user, membership and organization."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token

from marketplace.api.authentication import token_with_organization
from marketplace.models import Organization

from ..factories import member_with_token

pytestmark = pytest.mark.django_db


def test_lookup_matches_orm_in_one_query():
    customer = Organization.objects.create(name="Acme", slug="acme", kind=Organization.Kind.CUSTOMER)
    _, key = member_with_token(customer, "alice")

    with CaptureQueriesContext(connection) as queries:
        token = token_with_organization(Token, key)
        organization = token.user.membership.organization
    expected = Token.objects.select_related("user__membership__organization").get(key=key)

    assert len(queries) == 1
    assert token == expected
    assert token.created == expected.created
    assert token.user == expected.user
    assert token.user.date_joined == expected.user.date_joined
    assert token.user.is_active is True
    assert token.user.password == expected.user.password
    assert token.user.membership == expected.user.membership
    assert token.user.membership.role == expected.user.membership.role
    assert organization == customer
    assert organization.created_at == customer.created_at
    assert organization.kind == Organization.Kind.CUSTOMER


def test_no_membership_needs_no_query(django_user_model):
    user = django_user_model.objects.create(username="loner")
    key = Token.objects.create(user=user).key

    with CaptureQueriesContext(connection) as queries:
        token = token_with_organization(Token, key)
        membership = getattr(token.user, "membership", None)

    assert len(queries) == 1
    assert token.user == user
    assert membership is None


def test_unknown_key_returns_none():
    assert token_with_organization(Token, "no-such-key") is None


def test_inactive_user_is_401(client):
    customer = Organization.objects.create(name="Acme", slug="acme", kind=Organization.Kind.CUSTOMER)
    user, key = member_with_token(customer, "alice")
    user.is_active = False
    user.save(update_fields=["is_active"])

    response = client.get("/api/v1/reservations/", HTTP_AUTHORIZATION=f"Token {key}")

    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"
    assert "inactive" in response.json()["detail"]
