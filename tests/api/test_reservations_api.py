"""The REST API as a client sees it: authentication, tenant isolation, every error in one format."""

from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection

from allocation.models import Allocation
from allocation.services import quota_set
from marketplace.models import Organization

from ..factories import NodeFactory, gpu_model, member_with_token

pytestmark = pytest.mark.django_db

PROBLEM_KEYS = {"type", "title", "status", "detail", "code"}


def soon(hours: float = 1) -> str:
    return (datetime.now(timezone.utc) + timedelta(hours=hours)).isoformat()


def body(**overrides) -> dict:
    values = {"gpu_count": 1, "cpu_millicores": 4000, "memory_mib": 8192, "start_at": soon(1), "end_at": soon(3)}
    values.update(overrides)
    return values


def assert_problem(response, status: int, code: str) -> dict:
    data = response.json()
    assert response.status_code == status, data
    assert response["Content-Type"].startswith("application/problem+json")
    assert PROBLEM_KEYS <= set(data)
    assert data["status"] == status
    assert data["code"] == code
    return data


def test_create_returns_allocation(api, t4_node):
    response = api.post("/api/v1/reservations/", body(gpu_milli_per_gpu=460), format="json")

    data = response.json()
    assert response.status_code == 201, data
    assert response["Location"] == f"/api/v1/reservations/{data['id']}/"
    assert data["status"] == "scheduled"
    assert data["allocation"]["node"] == "t4-a"
    assert data["allocation"]["gpu_model"] == "T4"
    assert data["allocation"]["price_per_gpu_hour"] == "1.0000"
    assert data["allocation"]["estimated_cost"] == "0.92"
    assert [gpu["gpu_milli"] for gpu in data["allocation"]["gpus"]] == [460]


def test_do_not_migrate_is_stored_and_shown(api, t4_node):
    response = api.post("/api/v1/reservations/", body(do_not_migrate=True), format="json")

    assert response.status_code == 201, response.json()
    assert response.json()["do_not_migrate"] is True
    assert api.post("/api/v1/reservations/", body(), format="json").json()["do_not_migrate"] is False


def test_create_without_start_begins_now(api, t4_node):
    response = api.post("/api/v1/reservations/", {"gpu_count": 1, "end_at": soon(1)}, format="json")

    assert response.status_code == 201
    assert response.json()["status"] == "active"


def test_no_capacity_is_409_with_reason(api, t4_node):
    api.post("/api/v1/reservations/", body(gpu_count=2), format="json")

    response = api.post("/api/v1/reservations/", body(), format="json")

    data = assert_problem(response, 409, "no_capacity")
    assert data["reason_code"] == "no_capacity"
    assert data["reservation"]["status"] == "rejected"
    assert "Choose another window" in data["detail"]


def test_quota_exhausted_is_409(api, customer, t4_node):
    quota_set(organization=customer, gpu_model=None, max_gpu_milli=500)

    response = api.post("/api/v1/reservations/", body(), format="json")

    assert_problem(response, 409, "quota_exceeded")


def test_naive_datetime_names_field_and_fix(api, t4_node):
    response = api.post("/api/v1/reservations/", body(start_at="2030-01-01T10:00:00"), format="json")

    data = assert_problem(response, 400, "invalid_request")
    assert data["errors"][0]["field"] == "start_at"
    assert "Add one" in data["errors"][0]["message"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"end_at": None}, "end_at"),
        ({"gpu_count": "many"}, "gpu_count"),
        ({"gpu_count": 65}, "gpu_count"),
        ({"gpu_milli_per_gpu": 2000}, "gpu_milli_per_gpu"),
        ({"end_at": "tomorrow"}, "end_at"),
        ({"gpu_models": "T4"}, "gpu_models"),
        ({"gpu_models": ["H100"]}, "gpu_models"),
        ({"region": "atlantis"}, "region"),
        ({"max_price_per_gpu_hour": "free"}, "max_price_per_gpu_hour"),
        ({"gpu_mili": 500}, "gpu_mili"),
        ({"do_not_migrate": "maybe"}, "do_not_migrate"),
        ({"do_not_migrate": "yes"}, "do_not_migrate"),
        ({"do_not_migrate": 1}, "do_not_migrate"),
        ({"start_at": "2001-01-01T00:00:00Z", "end_at": "2001-01-02T00:00:00Z"}, "start_at"),
        ({"start_at": soon(5), "end_at": soon(4)}, "end_at"),
    ],
)
def test_invalid_field_is_400_naming_field(api, t4_node, payload, field):
    request = body(**payload)
    if payload.get("end_at", "") is None:
        del request["end_at"]

    response = api.post("/api/v1/reservations/", request, format="json")

    data = assert_problem(response, 400, "invalid_request")
    assert field in [error["field"] for error in data["errors"]]
    assert field in data["detail"]


def test_malformed_json_is_400(api):
    response = api.post("/api/v1/reservations/", "{not json", content_type="application/json")

    data = assert_problem(response, 400, "parse_error")
    assert data["errors"][0]["field"] == "body"


def test_number_with_thousands_of_digits_is_400(api):
    response = api.post("/api/v1/reservations/", '{"gpu_count": ' + "9" * 5000 + "}",
                        content_type="application/json")

    data = assert_problem(response, 400, "parse_error")
    assert "thousands of digits" in data["detail"]
    assert "sys." not in data["detail"]


def test_offset_in_whole_hours_is_accepted(api, t4_node):
    start = (datetime.now(timezone.utc) + timedelta(days=1)).astimezone(timezone(timedelta(hours=5)))
    start_text = start.strftime("%Y-%m-%dT%H:%M:%S+05")
    end_text = (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S+05")

    response = api.post("/api/v1/reservations/", {"gpu_count": 1, "start_at": start_text, "end_at": end_text},
                        format="json")

    assert response.status_code == 201, response.json()


def test_body_as_form_is_415(api):
    response = api.post("/api/v1/reservations/", {"gpu_count": 1})

    assert_problem(response, 415, "unsupported_media_type")


def test_body_as_list_is_400(api):
    response = api.post("/api/v1/reservations/", [1, 2], format="json")

    assert_problem(response, 400, "invalid_request")


def test_missing_token_is_401(client, t4_node):
    response = client.get("/api/v1/reservations/")

    data = assert_problem(response, 401, "not_authenticated")
    assert "Authorization: Token" in data["detail"]


def test_wrong_token_is_401(client):
    response = client.get("/api/v1/reservations/", HTTP_AUTHORIZATION="Token nope")

    assert_problem(response, 401, "authentication_failed")


def test_user_without_organization_is_403(client, django_user_model):
    from rest_framework.authtoken.models import Token

    user = django_user_model.objects.create(username="loner")
    token = Token.objects.create(user=user)

    response = client.get("/api/v1/reservations/", HTTP_AUTHORIZATION=f"Token {token.key}")

    assert_problem(response, 403, "no_organization")


def test_provider_user_cannot_reserve(client, t4_node):
    _, token = member_with_token(t4_node.provider, "prov")

    response = client.post("/api/v1/reservations/", body(), content_type="application/json",
                           HTTP_AUTHORIZATION=f"Token {token}")

    assert_problem(response, 403, "not_a_customer")


def test_customer_sees_only_own_reservations(api, other_api, t4_node):
    mine = api.post("/api/v1/reservations/", body(), format="json").json()
    theirs = other_api.post("/api/v1/reservations/", body(), format="json").json()

    listing = api.get("/api/v1/reservations/").json()
    assert [item["id"] for item in listing["results"]] == [mine["id"]]
    assert_problem(api.get(f"/api/v1/reservations/{theirs['id']}/"), 404, "not_found")
    assert_problem(api.post(f"/api/v1/reservations/{theirs['id']}/cancel/"), 404, "not_found")
    assert other_api.get(f"/api/v1/reservations/{theirs['id']}/").json()["status"] == "scheduled"


def test_cancel_then_cancel_again(api, t4_node):
    created = api.post("/api/v1/reservations/", body(), format="json").json()

    cancelled = api.post(f"/api/v1/reservations/{created['id']}/cancel/")
    again = api.post(f"/api/v1/reservations/{created['id']}/cancel/")

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    data = assert_problem(again, 409, "invalid_transition")
    assert data["current_status"] == "cancelled"


def test_list_filters_by_status_and_time(api, t4_node):
    first = api.post("/api/v1/reservations/", body(start_at=soon(1), end_at=soon(2)), format="json").json()
    api.post("/api/v1/reservations/", body(start_at=soon(10), end_at=soon(11)), format="json")
    api.post(f"/api/v1/reservations/{first['id']}/cancel/")

    cancelled = api.get("/api/v1/reservations/", {"status": "cancelled"}).json()
    late = api.get("/api/v1/reservations/", {"start_after": soon(5)}).json()

    assert [item["id"] for item in cancelled["results"]] == [first["id"]]
    assert late["count"] == 1


def test_bad_filter_value_is_400(api):
    response = api.get("/api/v1/reservations/", {"status": "sleeping"})

    data = assert_problem(response, 400, "invalid_request")
    assert data["errors"][0]["field"] == "status"


def test_bad_page_is_404_problem(api):
    assert_problem(api.get("/api/v1/reservations/", {"page": 99}), 404, "not_found")


def test_non_integer_id_is_404(api):
    assert_problem(api.get("/api/v1/reservations/abc/"), 404, "not_found")


def test_unknown_api_path_is_404_problem(api):
    assert_problem(api.get("/api/v1/nothing-here/"), 404, "not_found")


def test_wrong_method_is_405(api):
    assert_problem(api.delete("/api/v1/reservations/"), 405, "method_not_allowed")


def test_gpu_models_lists_catalogue(api):
    names = [model["name"] for model in api.get("/api/v1/gpu-models/").json()]

    assert names == ["A10", "G2", "G3", "P100", "T4", "V100M16", "V100M32"]


def test_offers_show_free_capacity(api, region, t4_node):
    NodeFactory(hostname="t4-b", gpu_count=4, region=region)
    api.post("/api/v1/reservations/", body(gpu_milli_per_gpu=500), format="json")

    response = api.get("/api/v1/offers/", {"start_at": soon(1), "end_at": soon(2), "gpu_model": "T4"})

    data = response.json()
    assert response.status_code == 200, data
    assert data["results"] == [{
        "gpu_model": "T4", "region": "eu-central", "price_per_gpu_hour": "1.0000", "currency": "USD",
        "nodes": 2, "whole_gpus_free": 5, "gpu_milli_free": 5500,
    }]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start_at": "2030-01-01T00:00:00"}, "start_at"),
        ({"gpu_model": "H100"}, "gpu_model"),
        ({"region": "mars"}, "region"),
        ({"color": "red"}, "color"),
    ],
)
def test_offers_bad_query_is_400(api, params, field):
    data = assert_problem(api.get("/api/v1/offers/", params), 400, "invalid_request")

    assert field in [error["field"] for error in data["errors"]]


def test_schema_and_docs_are_served(client):
    schema = client.get("/api/schema/")
    docs = client.get("/api/docs/")

    assert schema.status_code == 200
    assert b"/api/v1/reservations/" in schema.content
    assert docs.status_code == 200
    assert b"cdn" not in docs.content.lower()


def test_organization_kind_is_checked_by_membership(api, customer):
    Organization.objects.filter(pk=customer.pk).update(kind=Organization.Kind.PROVIDER)

    assert_problem(api.get("/api/v1/reservations/"), 403, "not_a_customer")


def test_openapi_schema_validates_without_warnings():
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null")


def test_missing_trailing_slash_names_fix(api):
    data = assert_problem(api.get("/api/v1/reservations"), 404, "not_found")

    assert data["detail"].endswith("Add the trailing slash: /api/v1/reservations/")


def test_deeply_nested_json_is_400(api):
    response = api.post("/api/v1/reservations/", "[" * 5000 + "]" * 5000, content_type="application/json")

    data = assert_problem(response, 400, "parse_error")
    assert "nested too deeply" in data["detail"]


def test_oversized_body_is_413(api):
    response = api.post("/api/v1/reservations/", body(external_ref="x" * 3_000_000), format="json")

    assert_problem(response, 413, "payload_too_large")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"start_at": "0001-01-01T00:00:00+01:00"}, "start_at"),
        ({"end_at": "9999-12-31T23:30:00-01:00"}, "end_at"),
        ({"end_at": soon(24 * 500)}, "end_at"),
        ({"start_at": soon(24 * 800), "end_at": soon(24 * 801)}, "start_at"),
    ],
)
def test_window_outside_limits_is_400(api, t4_node, payload, field):
    data = assert_problem(api.post("/api/v1/reservations/", body(**payload), format="json"), 400, "invalid_request")

    assert field in [error["field"] for error in data["errors"]]


def test_offers_near_end_of_calendar_is_400(api):
    assert_problem(api.get("/api/v1/offers/", {"start_at": "9999-12-31T23:30:00Z"}), 400, "invalid_request")


def test_nul_in_model_name_is_not_500(api):
    response = api.get("/api/v1/gpu-models/A1%000/")

    assert response.status_code in (400, 404)
    assert response["Content-Type"].startswith("application/problem+json")


def test_post_without_trailing_slash_is_404_problem(api):
    data = assert_problem(api.post("/api/v1/reservations", body(), format="json"), 404, "not_found")

    assert "trailing slash" in data["detail"]


def test_html_accept_still_gets_json(api):
    response = api.get("/api/v1/reservations/abc/", HTTP_ACCEPT="text/html")

    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/problem+json")
    assert response.json()["code"] == "not_found"


def test_problem_json_accept_is_honoured(api):
    response = api.get("/api/v1/gpu-models/", HTTP_ACCEPT="application/problem+json")

    assert response.status_code == 200


@pytest.mark.parametrize("page", ["abc", "0", "-1", "1.5"])
def test_invalid_page_is_400_naming_page(api, page):
    data = assert_problem(api.get("/api/v1/reservations/", {"page": page}), 400, "invalid_request")

    assert data["errors"][0]["field"] == "page"


def test_null_body_is_400(api):
    data = assert_problem(api.post("/api/v1/reservations/", "null", content_type="application/json"),
                          400, "invalid_request")

    assert "JSON object" in data["detail"]


def test_unknown_list_parameter_is_400(api):
    data = assert_problem(api.get("/api/v1/reservations/", {"stauts": "active"}), 400, "invalid_request")

    assert data["errors"][0]["field"] == "stauts"


def test_naive_list_filter_is_400(api):
    data = assert_problem(api.get("/api/v1/reservations/", {"start_after": "2030-01-01T00:00:00"}),
                          400, "invalid_request")

    assert data["errors"][0]["field"] == "start_after"


def test_long_id_is_truncated_in_message(api):
    data = assert_problem(api.get("/api/v1/reservations/" + "9" * 5000 + "/"), 404, "not_found")

    assert len(data["detail"]) < 300


def test_offers_accept_several_models(api, region, t4_node):
    from ..factories import gpu_model

    NodeFactory(hostname="v100", gpu_count=1, gpu_model=gpu_model("V100M32"), region=region)

    data = api.get("/api/v1/offers/?gpu_model=T4&gpu_model=V100M32").json()

    assert sorted(offer["gpu_model"] for offer in data["results"]) == ["T4", "V100M32"]


def test_options_describes_create_fields(api):
    data = api.options("/api/v1/reservations/").json()

    assert "gpu_count" in data["actions"]["POST"]
    assert "id" not in data["actions"]["POST"]


def test_external_ref_reusable_after_rejection(api, t4_node):
    rejected = api.post("/api/v1/reservations/", body(max_price_per_gpu_hour="0.01", external_ref="job-42"),
                        format="json")

    retried = api.post("/api/v1/reservations/", body(external_ref="job-42"), format="json")
    duplicate = api.post("/api/v1/reservations/", body(external_ref="job-42"), format="json")

    assert_problem(rejected, 409, "price_above_maximum")
    assert retried.status_code == 201
    assert_problem(duplicate, 409, "duplicate_external_ref")


def test_cpu_heavy_reservation_pays_dominant_share(api, t4_node):
    response = api.post("/api/v1/reservations/", body(gpu_count=0, gpu_milli_per_gpu=0, cpu_millicores=32000,
                                                      start_at=soon(1), end_at=soon(2)), format="json")

    allocation = response.json()["allocation"]
    assert response.status_code == 201
    assert allocation["billed_gpus"] == "1"
    assert allocation["estimated_cost"] == "1.00"


@pytest.mark.parametrize("url", ["/api/v1/gpu-models/G3%00/", "/api/v1/offers/?gpu_model=G3%00",
                                 "/api/v1/reservations/?status=%00"])
def test_nul_character_in_url_is_400(api, url):
    data = assert_problem(api.get(url), 400, "invalid_request")

    assert "NUL" in data["detail"]


def test_nul_character_in_admin_url_is_400(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "r@example.com", "pw-for-tests"))

    response = client.get("/admin/allocation/reservation/?status__exact=%00")

    assert response.status_code == 400


def test_huge_page_number_is_400(api):
    data = assert_problem(api.get("/api/v1/reservations/", {"page": "9" * 5000}), 400, "invalid_request")

    assert data["errors"][0]["field"] == "page"


def test_too_many_parameters_is_400(api):
    assert_problem(api.get("/api/v1/offers/?" + "&".join(["gpu_model=G3"] * 1001)), 400, "invalid_request")


def test_post_without_slash_is_json_404_not_csrf(api):
    data = assert_problem(api.post("/api/v1/reservations/1/cancel", format="json"), 404, "not_found")

    assert "trailing slash" in data["detail"]


def test_many_unknown_fields_give_short_error(api):
    payload = {f"junk{i}": 1 for i in range(5000)}

    response = api.post("/api/v1/reservations/", payload, format="json")

    assert_problem(response, 400, "invalid_request")
    assert len(response.content) < 5000


@pytest.mark.parametrize("value", ["2027-01-01T00:00:00\u00a0Z", "2027-01-01X00:00:00Z",
                                   "\uff12\uff10\uff12\uff17-01-01T00:00:00Z", "1970-01-01T00:00:00+01:00"])
def test_loose_datetimes_are_400(api, value):
    data = assert_problem(api.get("/api/v1/offers/", {"start_at": value}), 400, "invalid_request")

    assert data["errors"][0]["field"] == "start_at"


def test_boolean_count_is_400(api, t4_node):
    data = assert_problem(api.post("/api/v1/reservations/", body(gpu_count=True), format="json"),
                          400, "invalid_request")

    assert data["errors"][0]["field"] == "gpu_count"


def test_unknown_gpu_model_lists_names(api):
    data = assert_problem(api.get("/api/v1/gpu-models/g3/"), 404, "not_found")

    assert "G3" in data["detail"]


@pytest.mark.parametrize("local_time", [
    "2030-10-27T02:30:00",  # occurs twice in Central Europe when summer time ends
    "2030-03-31T02:30:00",  # does not exist in Central Europe when summer time starts
])
def test_daylight_saving_naive_times_are_400(api, t4_node, local_time):
    data = assert_problem(api.post("/api/v1/reservations/", body(start_at=local_time), format="json"),
                          400, "invalid_request")

    assert data["errors"][0]["field"] == "start_at"
    assert "UTC offset" in data["errors"][0]["message"]


def test_null_body_names_json_type(api):
    data = assert_problem(api.post("/api/v1/quotes/", "null", content_type="application/json"), 400,
                          "invalid_request")

    assert "JSON null" in data["detail"]


@pytest.mark.parametrize("overrides", [
    {},
    {"gpu_models": ["T4"], "region": "eu-central", "max_price_per_gpu_hour": "2.5", "external_ref": "job-7",
     "gpu_count": 2, "gpu_milli_per_gpu": 460},
    {"start_at": (datetime.now(timezone(timedelta(hours=5, minutes=30))) + timedelta(hours=1)).isoformat(),
     "end_at": (datetime.now(timezone(timedelta(hours=-7))) + timedelta(hours=4)).isoformat(),
     "priority_class": "high", "do_not_migrate": True},
])
def test_created_body_matches_later_read(api, t4_node, overrides):
    created = api.post("/api/v1/reservations/", body(**overrides), format="json")

    read_back = api.get(created["Location"])

    assert created.status_code == 201, created.json()
    assert created.json() == read_back.json()


def test_approval_hold_body_matches_read(api, customer, t4_node):
    from allocation.models import ApprovalPolicy

    ApprovalPolicy.objects.create(organization=customer, flagged=True)
    created = api.post("/api/v1/reservations/", body(), format="json")

    read_back = api.get(created["Location"])

    assert created.status_code == 202, created.json()
    assert created.json()["status"] == "pending_approval"
    assert created.json() == read_back.json()


def test_placed_body_reads_twice(customer, t4_node, django_assert_num_queries):
    from allocation.api.serializers import ReservationSerializer
    from allocation.selectors import placed_reservation_for_response
    from allocation.services import ReservationSpec, reservation_create

    start = datetime.now(timezone.utc) + timedelta(hours=1)
    reservation = reservation_create(customer=customer, spec=ReservationSpec(
        gpu_count=1, gpu_milli_per_gpu=460, cpu_millicores=1000, memory_mib=1024, gpu_models=("T4",),
        start_at=start, end_at=start + timedelta(hours=2)))

    # The express path on PostgreSQL returns it complete. The full path leaves two reads: the
    # requested GPU models, and the shares with their GPUs.
    with django_assert_num_queries(0 if connection.vendor == "postgresql" else 2):
        data = ReservationSerializer(placed_reservation_for_response(reservation)).data

    assert data["allocation"]["node"] == "t4-a"
    assert data["allocation"]["provider"]
    assert data["gpu_models"] == ["T4"]


def test_session_post_without_csrf_names_fix(client, customer, t4_node):
    from django.test import Client

    user, _ = member_with_token(customer, "session-user")
    session_client = Client(enforce_csrf_checks=True)
    session_client.force_login(user)

    response = session_client.post("/api/v1/reservations/", body(), content_type="application/json")

    data = assert_problem(response, 403, "permission_denied")
    assert data["detail"].startswith("CSRF Failed")
    assert "X-CSRFToken" in data["detail"]
    assert "Ask an owner" not in data["detail"]


@pytest.mark.parametrize("ledger", [True, False], ids=["ledger", "database"])
def test_price_cap_with_gpuless_node(api, customer, region, settings, ledger):
    settings.MARKETPLACE = {**settings.MARKETPLACE, "CAPACITY_LEDGER": ledger}
    node = NodeFactory(hostname="cpu-only", gpu_model=gpu_model("A10"), gpu_count=0, region=region,
                       price_per_gpu_hour="2.0000")
    start = datetime.now(timezone.utc)
    Allocation.objects.create(customer=customer, node=node, gpu_model=node.gpu_model, start_at=start,
                              end_at=start + timedelta(hours=5), cpu_millicores=1000, memory_mib=1024,
                              gpu_milli_total=0, billed_gpu_milli=0, price_per_gpu_hour=2, currency="USD")

    response = api.post("/api/v1/reservations/", body(gpu_count=0, gpu_milli_per_gpu=0, cpu_millicores=1000,
                                                      memory_mib=1024, gpu_models=["A10"],
                                                      max_price_per_gpu_hour="1.00"), format="json")

    assert response.status_code == 409, response.json()
    assert response.json()["reason_code"] == "price_above_maximum"
