from django.urls import path
from rest_framework.routers import SimpleRouter

from .views import (
    AgentAssignmentsView, AgentHeartbeatView, AgentRegisterView, AgentReportView, DecisionViewSet, InvoiceView,
    PriorityClassViewSet, QueueViewSet,
)

router = SimpleRouter()
router.register("decisions", DecisionViewSet, basename="decision")
router.register("priority-classes", PriorityClassViewSet, basename="priority-class")
router.register("queues", QueueViewSet, basename="queue")

urlpatterns = [
    path("agent/register/", AgentRegisterView.as_view(), name="agent-register"),
    path("agent/heartbeats/", AgentHeartbeatView.as_view(), name="agent-heartbeats"),
    path("agent/assignments/", AgentAssignmentsView.as_view(), name="agent-assignments"),
    path("agent/assignments/<int:assignment_id>/status/", AgentReportView.as_view(), name="agent-report"),
    path("invoices/", InvoiceView.as_view(), name="invoices"),
    *router.urls,
]
