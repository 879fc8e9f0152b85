"""Reservation, GPU model and offer endpoints; each view parses input, calls a service and renders."""

import logging

import django_filters
from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api.errors import problem, problem_response
from marketplace.api.serializers import problem_responses
from marketplace.exceptions import FieldProblem, InvalidRequest, NotFound, PermissionDenied
from marketplace.logs import DECISION_LOGGED
from marketplace.models import GpuModel, Organization, Region

from ..models import GpuShare, Reservation, ReservationStatus
from ..selectors import NodeFilter, offers, placed_reservation_for_response
from ..quoting import reservation_alternatives, reservation_quote
from ..services import reservation_cancel, reservation_create
from scheduler.tasks import request_cycle

from .idempotency import HEADER as IDEMPOTENCY_HEADER
from .idempotency import idempotent_post
from .serializers import (
    AlternativesSerializer,
    AwareDateTimeField,
    GpuModelSerializer,
    OfferListSerializer,
    OfferQuerySerializer,
    OfferSerializer,
    ReservationCreateSerializer,
    QuoteSerializer,
    ReservationSerializer,
)


logger = logging.getLogger(__name__)


def customer_of(request: Request) -> Organization:
    """Return the customer organization the caller acts for; raise ``PermissionDenied`` otherwise."""
    membership = getattr(request.user, "membership", None)
    if membership is None:
        raise PermissionDenied(
            f"User {request.user.get_username()!r} belongs to no organization. Ask an admin to add a membership.",
            code="no_organization",
        )
    if membership.organization.kind != Organization.Kind.CUSTOMER:
        raise PermissionDenied(
            f"Organization {membership.organization.slug!r} is a {membership.organization.kind}; "
            "only customer organizations reserve GPUs.",
            code="not_a_customer",
        )
    return membership.organization


class ReservationFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=ReservationStatus.choices)
    start_after = django_filters.IsoDateTimeFilter(field_name="start_at", lookup_expr="gte",
                                                   label="Windows that start at or after this time.")
    start_before = django_filters.IsoDateTimeFilter(field_name="start_at", lookup_expr="lt",
                                                    label="Windows that start before this time.")
    end_after = django_filters.IsoDateTimeFilter(field_name="end_at", lookup_expr="gt",
                                                 label="Windows that end after this time.")
    end_before = django_filters.IsoDateTimeFilter(field_name="end_at", lookup_expr="lte",
                                                  label="Windows that end at or before this time.")

    class Meta:
        model = Reservation
        fields = ["status", "start_after", "start_before", "end_after", "end_before"]


class ReservationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Reservations of the caller's organization."""

    LIST_PARAMETERS = frozenset({"page", "status", "start_after", "start_before", "end_after", "end_before"})

    serializer_class = ReservationSerializer
    filterset_class = ReservationFilter
    filter_backends = [django_filters.rest_framework.DjangoFilterBackend]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Reservation.objects.none()
        shares = Prefetch("allocation__shares", queryset=GpuShare.objects.select_related("gpu"))
        return (
            Reservation.objects.filter(customer=customer_of(self.request))
            .select_related(
                "customer", "region", "allocation__node__provider", "allocation__node__region",
                "allocation__gpu_model", "workload__priority_class", "workload__queue",
            )
            .prefetch_related("gpu_models", shares)
            .order_by("-created_at", "-id")
        )

    @extend_schema(
        request=ReservationCreateSerializer,
        parameters=[OpenApiParameter(
            IDEMPOTENCY_HEADER, str, OpenApiParameter.HEADER, required=False,
            description="A unique key per request; a retry with the same key and body returns the first response.",
        )],
        responses={
            201: ReservationSerializer,
            202: OpenApiResponse(ReservationSerializer, description=(
                "Placed and holding capacity, pending an admin's approval (status pending_approval, "
                "hold_expires_at says until when); or waiting in the queue (status queued, scheduling says "
                "its position, why it waits and the estimated start)."
            )),
            **problem_responses({
                400: "Invalid input; errors[] names each field and the fix.",
                403: "The user acts for no customer organization.",
                409: "Rejected: no capacity, quota exceeded, price too low or no node can hold the shape; "
                     "reason_code says which, reservation holds the stored rejected reservation, and alternatives "
                     "gives the earliest start that fits and the models and regions that fit now. Also a duplicate "
                     "external_ref.",
                422: "The Idempotency-Key was used with another body.",
            }),
        },
    )
    def create(self, request: Request) -> Response:
        """Reserve GPU shares now or for a future window; the reservation is stored even when rejected."""
        customer = customer_of(request)
        return idempotent_post(request, customer, lambda: self._create(request, customer))

    def _create(self, request: Request, customer: Organization) -> Response:
        serializer = _valid_create_serializer(request)
        created = reservation_create(customer=customer, spec=serializer.to_spec(), actor=request.user)

        reservation = placed_reservation_for_response(created) or self.get_queryset().get(pk=created.pk)
        body = ReservationSerializer(reservation).data
        if reservation.status == ReservationStatus.REJECTED:
            logger.info("Reservation %s of %s rejected: %s. %s", reservation.pk, customer.slug,
                        reservation.reason_code, reservation.reason_detail)
            setattr(request._request, DECISION_LOGGED, True)  # Django's own 4xx warning would repeat this line.
            alternatives = reservation_alternatives(reservation=reservation)
            return problem_response(problem(
                status=409, code=reservation.reason_code, title="Reservation rejected",
                detail=reservation.reason_detail, reason_code=reservation.reason_code, reservation=body,
                alternatives=AlternativesSerializer(alternatives).data,
            ))
        logger.info("Reservation %s of %s is %s", reservation.pk, customer.slug, reservation.status)
        if reservation.status == ReservationStatus.QUEUED:
            request_cycle("submit")
        # 202: holding capacity until an admin approves it, or waiting in the queue.
        status = 202 if reservation.status in (ReservationStatus.PENDING_APPROVAL, ReservationStatus.QUEUED) else 201
        return Response(body, status=status, headers={"Location": f"/api/v1/reservations/{reservation.pk}/"})

    @extend_schema(request=None, responses={
        200: ReservationSerializer,
        **problem_responses({
            404: "No such reservation in your organization.",
            409: "The reservation is already final; current_status says which.",
        }),
    })
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel the reservation and release its capacity and quota from now on."""
        customer = customer_of(request)
        reservation_id = _parse_id(pk)
        reservation_cancel(reservation_id=reservation_id, customer=customer, actor=request.user)
        request_cycle("cancel")
        return Response(ReservationSerializer(self.get_queryset().get(pk=reservation_id)).data)

    def get_serializer_class(self):
        if self.request is not None and self.request.method == "POST":
            return ReservationCreateSerializer
        return ReservationSerializer

    def list(self, request: Request, *args, **kwargs) -> Response:
        """List the organization's reservations, newest first; filter by status and window times."""
        _check_list_parameters(request, self.LIST_PARAMETERS)
        return super().list(request, *args, **kwargs)

    def get_object(self) -> Reservation:
        return _get_or_404(self.get_queryset(), _parse_id(self.kwargs["pk"]))


JSON_TYPE_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _valid_create_serializer(request: Request) -> ReservationCreateSerializer:
    """Return the validated reservation body; raise ``InvalidRequest`` if it is not a JSON object."""
    if not isinstance(request.data, dict):
        json_type = JSON_TYPE_NAMES.get(type(request.data), "value")
        raise InvalidRequest(
            f"The body is a JSON {json_type}; send a JSON object with the reservation's fields, as /api/docs/ shows.",
            errors=[FieldProblem("body", "Send a JSON object.", "not_an_object")],
        )
    serializer = ReservationCreateSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer


def _check_list_parameters(request: Request, allowed: frozenset[str]) -> None:
    """Reject unknown query parameters and datetimes without a UTC offset, naming each one."""
    problems = [
        FieldProblem(name, f"Unknown parameter. Valid parameters: {', '.join(sorted(allowed))}.", "unknown")
        for name in sorted(set(request.query_params) - allowed)
    ]
    datetime_field = AwareDateTimeField()
    for name in ("start_after", "start_before", "end_after", "end_before"):
        for value in request.query_params.getlist(name):
            try:
                datetime_field.run_validation(value)
            except ValidationError as error:
                problems.append(FieldProblem(name, str(error.detail[0]), "invalid"))
    if problems:
        summary = "; ".join(f"{problem.field}: {problem.message}" for problem in problems)
        raise InvalidRequest(f"The query is invalid. {summary}", errors=problems)


def _parse_id(raw: str | None) -> int:
    text = str(raw)
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise NotFound(f"{text[:20]!r} is not a reservation id; ids are positive integers.")
    return int(text)


def _get_or_404(queryset, reservation_id: int) -> Reservation:
    try:
        return queryset.get(pk=reservation_id)
    except Reservation.DoesNotExist:
        raise NotFound(f"Reservation {reservation_id} does not exist or belongs to another organization.") from None


class QuoteView(APIView):
    """Quotes: the cost and earliest start of a reservation, without booking anything."""

    @extend_schema(request=ReservationCreateSerializer, responses={
        200: QuoteSerializer,
        **problem_responses({400: "Invalid input; errors[] names each field and the fix."}),
    })
    def post(self, request: Request) -> Response:
        customer = customer_of(request)
        serializer = _valid_create_serializer(request)
        quote = reservation_quote(customer=customer, spec=serializer.to_spec())
        return Response(QuoteSerializer(quote).data)


class GpuModelViewSet(viewsets.ReadOnlyModelViewSet):
    """The GPU model catalogue."""

    queryset = GpuModel.objects.order_by("name")
    serializer_class = GpuModelSerializer
    lookup_field = "name"
    pagination_class = None

    def get_object(self) -> GpuModel:
        name = self.kwargs["name"]
        model = GpuModel.objects.filter(name=name).first()
        if model is None:
            valid = ", ".join(GpuModel.objects.order_by("name").values_list("name", flat=True))
            raise NotFound(f"No GPU model {name[:64]!r}. Names are case-sensitive: {valid}.")
        return model


class OfferListView(APIView):
    """Free capacity by GPU model, region and price for a window (default: the next hour)."""

    @extend_schema(parameters=[OfferQuerySerializer], responses={
        200: OfferListSerializer,
        **problem_responses({400: "Invalid query parameter; errors[] names it."}),
    })
    def get(self, request: Request) -> Response:
        parameters = request.query_params.dict()
        model_names = request.query_params.getlist("gpu_model")
        parameters.pop("gpu_model", None)
        query = OfferQuerySerializer(data=parameters)
        query.is_valid(raise_exception=True)
        data = query.validated_data

        model_ids = _lookup_model_ids(model_names)
        region_ids = _lookup_ids(Region, "code", data.get("region"), "region")
        node_filter = NodeFilter(
            gpu_model_ids=model_ids,
            region_id=region_ids[0] if data.get("region") else None,
            max_price_per_gpu_hour=data.get("max_price_per_gpu_hour"),
        )
        results = offers(data["start_at"], data["end_at"], node_filter)
        return Response({
            "start_at": data["start_at"], "end_at": data["end_at"],
            "results": OfferSerializer(results, many=True).data,
        })


def _lookup_model_ids(names: list[str]) -> tuple[int, ...]:
    """Return the ids of the named GPU models (all models when ``names`` is empty)."""
    if not names:
        return tuple(GpuModel.objects.values_list("id", flat=True))
    found = dict(GpuModel.objects.filter(name__in=names).values_list("name", "id"))
    unknown = [name for name in names if name not in found]
    if unknown:
        valid = ", ".join(GpuModel.objects.values_list("name", flat=True))
        raise InvalidRequest(
            f"Unknown gpu_model {unknown[0][:64]!r}. Use one of: {valid}.",
            errors=[FieldProblem("gpu_model", f"Unknown value; use one of: {valid}.", "unknown")],
        )
    return tuple(found.values())


def _lookup_ids(model, field: str, value: str | None, parameter: str) -> tuple[int, ...]:
    rows = model.objects.all() if value is None else model.objects.filter(**{field: value})
    ids = tuple(rows.values_list("id", flat=True))
    if value is not None and not ids:
        valid = ", ".join(model.objects.values_list(field, flat=True))
        raise InvalidRequest(
            f"Unknown {parameter} {value!r}. Use one of: {valid}.",
            errors=[FieldProblem(parameter, f"Unknown value; use one of: {valid}.", "unknown")],
        )
    return ids
