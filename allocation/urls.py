from django.urls import path

from . import pages

app_name = "allocation"

urlpatterns = [
    path("approvals/", pages.approvals_page, name="approvals"),
    path("approvals/table/", pages.approvals_table, name="approvals-table"),
    path("approvals/decide/", pages.approvals_decide, name="approvals-decide"),
]
