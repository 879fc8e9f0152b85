"""Agent, decision, priority class and queue endpoints; each view parses, calls a service and renders."""

import logging

import django_filters
from django import forms
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from redis.exceptions import RedisError
from rest_framework.views import APIView

from allocation.api.views import _check_list_parameters, customer_of
from allocation.models import GpuShare
from marketplace.api.serializers import problem_responses
from marketplace.broker import enqueue
from marketplace.exceptions import FieldProblem, InvalidRequest, NotFound
from providers.heartbeat_queue import heartbeat_enqueue, queue_enabled
from providers.metering import invoice, month_bounds
from providers.models import UsageEntry
from providers.tasks import ingest_heartbeats_task
from providers.telemetry import heartbeats_ingest, node_register

from ..agents import agent_assignments, agent_report, assignment_action
from ..models import Decision, PriorityClass, Queue
from ..tasks import request_cycle
from .authentication import IsNodeAgent, NodeKeyAuthentication
from .serializers import (
    AgentRegisterSerializer,
    AgentReportSerializer,
    HeartbeatSerializer,
    AssignmentListSerializer,
    AssignmentSerializer,
    DecisionSerializer,
    PriorityClassSerializer,
    QueueSerializer,
)

POLL_AFTER_SECONDS = 10

logger = logging.getLogger(__name__)


class AgentAssignmentsView(APIView):
    """The assignments that the calling node's agent should start, keep running or stop."""

    authentication_classes = [NodeKeyAuthentication]
    permission_classes = [IsNodeAgent]

    @extend_schema(responses={200: AssignmentListSerializer, **problem_responses({401: "Missing or unknown node key."})})
    def get(self, request: Request) -> Response:
        node = request.auth.node
        now = timezone.now()
        assignments = agent_assignments(node=node, now=now)
        shares = _gpu_uuids(node, [assignment.reservation_id for assignment in assignments])
        rows = []
        for assignment in assignments:
            assignment.action = assignment_action(assignment, now)
            assignment.gpu_uuids = shares.get(assignment.reservation_id, [])
            rows.append(assignment)
        return Response(AssignmentListSerializer({
            "node": node.hostname, "poll_after_seconds": POLL_AFTER_SECONDS, "assignments": rows,
        }).data)


def _gpu_uuids(node, reservation_ids: list[int]) -> dict[int, list]:
    """Return the UUIDs of the GPUs each reservation holds on ``node`` from now on (a migrated one held others)."""
    uuids: dict[int, list] = {}
    shares = GpuShare.objects.filter(allocation__reservation_id__in=reservation_ids, gpu__node=node,
                                     end_at__gt=timezone.now())
    for reservation_id, uuid in shares.order_by("gpu__index").values_list("allocation__reservation_id", "gpu__uuid"):
        uuids.setdefault(reservation_id, []).append(uuid)
    return uuids


class AgentReportView(APIView):
    """An agent's report on one assignment of its node: started, exited with a code, or failed to start."""

    authentication_classes = [NodeKeyAuthentication]
    permission_classes = [IsNodeAgent]

    @extend_schema(request=AgentReportSerializer, responses={
        200: AssignmentSerializer,
        **problem_responses({400: "Invalid report; errors[] names the field.", 401: "Missing or unknown node key.",
                             404: "No such assignment on this node.", 409: "The assignment is already final."}),
    })
    def post(self, request: Request, assignment_id: int) -> Response:
        serializer = AgentReportSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        node = request.auth.node
        assignment = agent_report(node=node, assignment_id=assignment_id, state=data["state"],
                                  exit_code=data["exit_code"], message=data["message"])
        if data["state"] != "started":
            request_cycle("completion")
        assignment.action = assignment_action(assignment, timezone.now())
        assignment.gpu_uuids = _gpu_uuids(node, [assignment.reservation_id]).get(assignment.reservation_id, [])
        return Response(AssignmentSerializer(assignment).data)


class IntegerFilter(django_filters.NumberFilter):
    """A whole number only; django-filter's own number filter also takes 1.9."""

    field_class = forms.IntegerField


class AgentRegisterView(APIView):
    """Registration of the calling node: the GPUs its agent discovered, with driver and CUDA versions."""

    authentication_classes = [NodeKeyAuthentication]
    permission_classes = [IsNodeAgent]

    @extend_schema(request=AgentRegisterSerializer, responses={
        200: dict, **problem_responses({400: "Invalid inventory; errors[] names the field.",
                                        401: "Missing or unknown node key."}),
    })
    def post(self, request: Request) -> Response:
        serializer = _valid(AgentRegisterSerializer, request)
        data = serializer.validated_data
        summary = node_register(node=request.auth.node, inventory=data, agent_version=data["agent_version"])
        return Response({**summary, "node": request.auth.node.hostname,
                         "detail": f"{summary['gpus']} GPUs registered; {summary['retired']} retired."})


class AgentHeartbeatView(APIView):
    """Readings of the calling node's GPUs: one or more snapshots, oldest first."""

    authentication_classes = [NodeKeyAuthentication]
    permission_classes = [IsNodeAgent]

    @extend_schema(request=HeartbeatSerializer, responses={
        200: dict, 202: dict, **problem_responses({400: "Invalid readings; errors[] names the field.",
                                        401: "Missing or unknown node key."}),
    })
    def post(self, request: Request) -> Response:
        serializer = _valid(HeartbeatSerializer, request)
        node = request.auth.node
        snapshots = serializer.validated_data["snapshots"]
        if queue_enabled():
            try:
                queued = heartbeat_enqueue(node_id=node.pk, snapshots=snapshots)
            except RedisError as error:
                # Redis is down or restarting: store this heartbeat in the request instead of the queue.
                logger.warning("Heartbeat queue unavailable, storing node %s's heartbeat directly: %s", node.pk, error)
            else:
                if queued == 1:
                    enqueue(ingest_heartbeats_task, countdown=0.5, reason="the periodic providers.ingest_heartbeats")
                return Response({"queued": len(snapshots), "poll_after_seconds": POLL_AFTER_SECONDS}, status=202)
        summary = heartbeats_ingest(heartbeats=[(node, snapshots)])
        node.refresh_from_db(fields=["health", "health_reasons"])
        return Response({"readings": summary.readings, "unknown_gpus": summary.unknown_gpus,
                         "node_health": node.health, "health_reasons": node.health_reasons,
                         "poll_after_seconds": POLL_AFTER_SECONDS})


def _valid(serializer_class, request: Request):
    if not isinstance(request.data, dict):
        raise InvalidRequest("Send a JSON object, as /api/docs/ shows.",
                             errors=[FieldProblem("body", "Send a JSON object.", "not_an_object")])
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer


class DecisionFilter(django_filters.FilterSet):
    reservation = IntegerFilter(field_name="reservation_id")
    kind = django_filters.MultipleChoiceFilter(choices=Decision.Kind.choices)

    class Meta:
        model = Decision
        fields = ["reservation", "kind"]


class DecisionViewSet(viewsets.ReadOnlyModelViewSet):
    """Scheduling decisions with their reasons: a customer's own, or every one for staff."""

    serializer_class = DecisionSerializer
    filterset_class = DecisionFilter
    filter_backends = [django_filters.rest_framework.DjangoFilterBackend]
    LIST_PARAMETERS = frozenset({"page", "reservation", "kind"})

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Decision.objects.none()
        decisions = Decision.objects.order_by("-at", "-id")
        if self.request.user.is_staff:
            return decisions
        return decisions.filter(reservation__customer=customer_of(self.request))

    def list(self, request: Request, *args, **kwargs) -> Response:
        """List decisions, newest first; filter by reservation id and kind."""
        _check_list_parameters(request, self.LIST_PARAMETERS)
        return super().list(request, *args, **kwargs)

    def get_object(self) -> Decision:
        raw = str(self.kwargs["pk"])
        decision = self.get_queryset().filter(pk=int(raw)).first() if raw.isdigit() and len(raw) < 18 else None
        if decision is None:
            raise NotFound(f"Decision {raw[:20]!r} does not exist or concerns another organization's reservation.")
        return decision


class PriorityClassViewSet(viewsets.ReadOnlyModelViewSet):
    """The priority classes a request may name, highest first."""

    queryset = PriorityClass.objects.order_by("-value")
    serializer_class = PriorityClassSerializer
    pagination_class = None
    lookup_field = "name"


class QueueViewSet(viewsets.ReadOnlyModelViewSet):
    """The queues a request may name."""

    queryset = Queue.objects.order_by("name")
    serializer_class = QueueSerializer
    pagination_class = None
    lookup_field = "name"


class InvoiceView(APIView):
    """The caller's organization's metered usage for one month, from its agents' start and stop reports."""

    @extend_schema(parameters=[OpenApiParameter("month", str, description="YYYY-MM; default: this month (UTC).")],
                   responses={200: dict, **problem_responses({400: "month is not of the form YYYY-MM."})})
    def get(self, request: Request) -> Response:
        customer = customer_of(request)
        _check_list_parameters(request, frozenset({"month"}))
        months = request.query_params.getlist("month")
        month = months[0] if months else timezone.now().strftime("%Y-%m")
        bounds = month_bounds(month) if len(months) <= 1 else None
        if bounds is None:
            raise InvalidRequest(f"month {month[:20]!r} is not one month; send one, of the form 2026-05.",
                                 errors=[FieldProblem("month", "Use one month of the form YYYY-MM.", "invalid")])
        start, end = bounds
        statement = invoice(customer_id=customer.pk, start=start, end=end)
        lines = (UsageEntry.objects.filter(customer=customer, stopped_at__gte=start, stopped_at__lt=end)
                 .order_by("stopped_at", "id"))
        return Response({
            "month": month, "currency": statement.currency, "total": str(statement.total),
            "gpu_hours": str(statement.gpu_hours), "entries": statement.entries,
            "lines": [{"reservation": line.reservation_id, "started_at": line.started_at,
                       "stopped_at": line.stopped_at, "gpu_milli_seconds": line.gpu_milli_seconds,
                       "price_per_gpu_hour": str(line.price_per_gpu_hour), "amount": str(line.amount)}
                      for line in lines[:1000]],
        })
