from django.contrib.auth.views import LogoutView
from django.urls import path

from . import portal

app_name = "providers"

urlpatterns = [
    path("", portal.portal_page, name="portal"),
    path("login/", portal.ProviderLoginView.as_view(), name="login"),
    path("logout/", LogoutView.as_view(next_page="/provider/login/"), name="logout"),
    path("nodes/", portal.portal_nodes, name="nodes"),
    path("nodes/<int:node_id>/price/", portal.node_price, name="node-price"),
    path("prices/", portal.model_price, name="model-price"),
    path("minimum/", portal.minimum, name="minimum"),
    path("maintenance/", portal.maintenance_add, name="maintenance-add"),
    path("maintenance/<int:window_id>/delete/", portal.maintenance_remove, name="maintenance-delete"),
    path("payouts.csv", portal.payouts, name="payouts"),
]
