from django.urls import path

from . import pages

app_name = "scheduler"

urlpatterns = [
    path("preemptions/", pages.preemptions_page, name="preemptions"),
    path("preemptions/list/", pages.preemptions_list, name="preemptions-list"),
    path("preemptions/<int:preemption_id>/decide/", pages.preemptions_decide, name="preemptions-decide"),
    path("preemptions/cycle/", pages.cycle_now, name="cycle-now"),
]
