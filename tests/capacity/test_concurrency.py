"""Admins proposing the same plan at the same moment on PostgreSQL get one plan, not several."""

import threading

import pytest
from django.db import connection

from capacity.models import CapacityPlan
from capacity.planning import DuplicateProposal, PlanSettings, capacity_plan_propose

pytestmark = pytest.mark.django_db(transaction=True)


def test_concurrent_proposals_make_one_plan(require_postgres, planned_fleet):
    outcomes, barrier = [], threading.Barrier(4)

    def propose():
        barrier.wait()
        try:
            capacity_plan_propose(plan_settings=PlanSettings())
            outcomes.append("proposed")
        except DuplicateProposal:
            outcomes.append("duplicate")
        finally:
            connection.close()

    threads = [threading.Thread(target=propose) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["duplicate", "duplicate", "duplicate", "proposed"]
    assert CapacityPlan.objects.count() == 1
