"""The forecast refresh on a real prefork worker over Redis, whose child processes may not start their own."""

import pytest

from capacity.models import DemandForecast
from capacity.tasks import refresh_capacity_forecasts_task

from ..celery_worker import celery_worker
from .test_forecasts import seasonal_series


@pytest.mark.django_db(transaction=True)
def test_refresh_runs_serially_inside_a_prefork_worker(require_postgres):
    seasonal_series("pool-a", days=8)
    seasonal_series("pool-b", days=8)

    with celery_worker(pool="prefork") as queue:
        outcome = refresh_capacity_forecasts_task.apply_async(queue=queue).get(timeout=180)

    assert set(outcome) == {"pool-a", "pool-b"}
    assert not any(model.startswith("error") for model in outcome.values())
    assert DemandForecast.objects.count() == 2
