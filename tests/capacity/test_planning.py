"""Plan previews, proposals and decisions, with the what-if settings validated field by field."""

from datetime import timedelta
from decimal import Decimal

import pytest

from capacity.forecasts import forecasts_purge, latest_forecasts
from capacity.models import CapacityPlan, DemandForecast, DemandSeries
from capacity.planning import DuplicateProposal, PlanSettings, capacity_plan_decide, capacity_plan_preview, capacity_plan_propose
from marketplace.exceptions import InvalidRequest, InvalidTransition, NotFound

from .conftest import store_forecast

pytestmark = pytest.mark.django_db


def test_preview_covers_service_level(planned_fleet):
    preview = capacity_plan_preview(PlanSettings(service_level=0.9, horizon_hours=48))

    [item] = preview.lines
    assert (item.line.capacity, item.line.required, item.line.action, item.line.delta) == (16, 20, "add", 4)
    assert item.line.monthly_cost == Decimal("4380.00")  # 4 GPUs x 1.50 x 730 h
    assert item.line.nodes_hint == "add about 1 node of 8 GPUs"
    assert item.trend is not None
    assert item.trend.days == 10
    assert preview.total_monthly_cost == Decimal("4380.00")


def test_what_if_changes_the_plan_without_saving(planned_fleet):
    median = capacity_plan_preview(PlanSettings(service_level=0.5, horizon_hours=48)).lines[0].line
    growth = capacity_plan_preview(PlanSettings(service_level=0.5, horizon_hours=48,
                                                growth_pct_per_month=Decimal("200"))).lines[0].line

    assert median.action == "hold"
    assert growth.peak_at_service_level > median.peak_at_service_level
    assert CapacityPlan.objects.count() == 0


def test_imported_series_uses_its_own_capacity_and_price(planned_fleet):
    now = planned_fleet[1].first_hour
    series = DemandSeries.objects.create(key="helios-earth", label="Helios Earth", source=DemandSeries.Source.IMPORTED,
                                         unit="GPUs", price_per_unit_hour=Decimal("2.00"))
    series.points.create(hour=now - timedelta(hours=1), demand=600, capacity=856)
    store_forecast(series, now, {0.5: 700.0, 0.9: 900.0, 0.95: 950.0})

    lines = {item.series.key: item.line for item in capacity_plan_preview(PlanSettings()).lines}

    assert (lines["helios-earth"].capacity, lines["helios-earth"].delta) == (856, 44)
    assert lines["helios-earth"].monthly_cost == Decimal("64240.00")


def test_propose_saves_the_lines_and_an_admin_approves(planned_fleet, django_user_model):
    admin = django_user_model.objects.create_user("planner")
    plan = capacity_plan_propose(plan_settings=PlanSettings(service_level=0.9, horizon_hours=48), actor=admin)

    assert plan.status == CapacityPlan.Status.PROPOSED
    assert plan.lines.get().required == 20

    decided = capacity_plan_decide(plan_id=plan.pk, approve=True, actor=admin)
    assert decided.status == CapacityPlan.Status.APPROVED
    assert decided.decided_by == admin

    with pytest.raises(InvalidTransition, match="already approved"):
        capacity_plan_decide(plan_id=plan.pk, approve=False, actor=admin, note="changed my mind")


def test_reject_needs_reason_and_plan(planned_fleet):
    plan = capacity_plan_propose(plan_settings=PlanSettings())

    with pytest.raises(InvalidRequest, match="reason"):
        capacity_plan_decide(plan_id=plan.pk, approve=False, note="  ")
    with pytest.raises(NotFound):
        capacity_plan_decide(plan_id=plan.pk + 100, approve=True)

    rejected = capacity_plan_decide(plan_id=plan.pk, approve=False, note="Budget frozen until Q3")
    assert rejected.status == CapacityPlan.Status.REJECTED
    assert rejected.decision_note == "Budget frozen until Q3"


def test_nothing_to_plan_without_forecasts(db):
    with pytest.raises(InvalidRequest, match="import_demand"):
        capacity_plan_propose(plan_settings=PlanSettings())


@pytest.mark.parametrize(("params", "field"), [
    ({"service_level": "0.42"}, "service_level"),
    ({"service_level": "NaN"}, "service_level"),
    ({"horizon_hours": "0"}, "horizon_hours"),
    ({"horizon_hours": "100000"}, "horizon_hours"),
    ({"horizon_hours": "-5"}, "horizon_hours"),
    ({"growth_pct_per_month": "Infinity"}, "growth_pct_per_month"),
    ({"growth_pct_per_month": "1e9"}, "growth_pct_per_month"),
    ({"growth_pct_per_month": "-100"}, "growth_pct_per_month"),
    ({"growth_pct_per_month": "ten"}, "growth_pct_per_month"),
])
def test_settings_name_the_bad_field_and_the_fix(params, field):
    with pytest.raises(InvalidRequest) as caught:
        PlanSettings.parse(params)
    assert [problem.field for problem in caught.value.errors] == [field]


def test_settings_parse_defaults_and_values():
    assert PlanSettings.parse({}) == PlanSettings(service_level=0.9, horizon_hours=168,
                                                  growth_pct_per_month=Decimal("0.00"))
    assert PlanSettings.parse({"service_level": "0.95", "horizon_hours": "24", "growth_pct_per_month": "2.5"}) == \
        PlanSettings(service_level=0.95, horizon_hours=24, growth_pct_per_month=Decimal("2.50"))


def test_same_settings_are_not_proposed_twice_while_waiting(planned_fleet):
    first = capacity_plan_propose(plan_settings=PlanSettings())

    with pytest.raises(DuplicateProposal, match=f"Plan {first.pk} with the same settings"):
        capacity_plan_propose(plan_settings=PlanSettings())

    other = capacity_plan_propose(plan_settings=PlanSettings(service_level=0.95))
    capacity_plan_decide(plan_id=first.pk, approve=True)
    again = capacity_plan_propose(plan_settings=PlanSettings())
    assert len({first.pk, other.pk, again.pk}) == 3


def test_forecast_hours_already_past_are_skipped(planned_fleet):
    series, forecast = planned_fleet
    forecast.quantiles = {**forecast.quantiles, "0.9": [40.0] * 10 + [19.5] * 38}
    forecast.save()

    now_line = capacity_plan_preview(PlanSettings(horizon_hours=48), now=forecast.first_hour).lines[0].line
    later = capacity_plan_preview(PlanSettings(horizon_hours=48), now=forecast.first_hour + timedelta(hours=10))

    assert now_line.required == 40
    assert later.lines[0].line.required == 20

    expired = capacity_plan_preview(PlanSettings(), now=forecast.first_hour + timedelta(hours=48))
    assert expired.lines == []
    assert expired.missing_forecasts == [series.key]


def test_settings_accept_numbers_and_reject_other_types():
    assert PlanSettings.parse({"horizon_hours": 24, "service_level": 0.95}).horizon_hours == 24
    for params in ({"service_level": None}, {"service_level": [0.9]}, {"horizon_hours": 24.5}):
        with pytest.raises(InvalidRequest):
            PlanSettings.parse(params)


def test_default_horizon_follows_the_forecast_setting(settings):
    settings.MARKETPLACE = {**settings.MARKETPLACE, "FORECAST_HORIZON_HOURS": 48}
    assert PlanSettings.parse({}).horizon_hours == 48


def test_latest_forecast_wins_and_old_ones_are_purged(planned_fleet):
    series, first = planned_fleet
    newer = store_forecast(series, first.first_hour, {0.5: 1.0})
    DemandForecast.objects.filter(pk=first.pk).update(created_at=first.created_at - timedelta(days=100))

    assert latest_forecasts()[series.id] == newer
    assert forecasts_purge(keep_days=90) == 1
    assert list(DemandForecast.objects.all()) == [newer]
