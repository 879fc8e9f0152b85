from django.urls import path
from rest_framework.routers import SimpleRouter

from .views import GpuModelViewSet, OfferListView, QuoteView, ReservationViewSet

router = SimpleRouter()
router.register("reservations", ReservationViewSet, basename="reservation")
router.register("gpu-models", GpuModelViewSet, basename="gpu-model")

urlpatterns = [
    path("offers/", OfferListView.as_view(), name="offers"),
    path("quotes/", QuoteView.as_view(), name="quotes"),
    *router.urls,
]
