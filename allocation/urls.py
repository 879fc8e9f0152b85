from django.urls import path

from . import pages, rebalance_pages

app_name = "allocation"

urlpatterns = [
    path("approvals/", pages.approvals_page, name="approvals"),
    path("approvals/table/", pages.approvals_table, name="approvals-table"),
    path("approvals/decide/", pages.approvals_decide, name="approvals-decide"),
    path("rebalancing/", rebalance_pages.rebalancing_page, name="rebalancing"),
    path("rebalancing/propose/", rebalance_pages.rebalancing_propose, name="rebalancing-propose"),
    path("rebalancing/<int:plan_id>/decide/", rebalance_pages.rebalancing_decide, name="rebalancing-decide"),
]
