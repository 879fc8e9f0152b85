"""`python manage.py refresh_capacity`: roll up all marketplace demand, refit every forecast, optionally propose a plan."""

from django.core.management.base import BaseCommand, CommandError

from capacity.forecasts import forecasts_refresh_all
from capacity.metrics import metrics_rollup_all
from capacity.models import CapacityPlan
from capacity.planning import PlanSettings, capacity_plan_propose
from marketplace.exceptions import MarketplaceError


class Command(BaseCommand):
    help = ("Recompute the marketplace's hourly demand series from every reservation, fit a forecast of each "
            "demand series, and with --propose save a capacity plan for an admin to decide on /ops/capacity/.")

    def add_arguments(self, parser):
        parser.add_argument("--propose", action="store_true",
                            help="Propose a plan with the default settings, unless a proposed plan is already waiting.")
        parser.add_argument("--service-level", default="0.9", help="Quantile the proposed plan covers (default 0.9).")

    def handle(self, *args, propose: bool = False, service_level: str = "0.9", **options):
        rollup = metrics_rollup_all()
        if rollup:
            self.stdout.write(f"Rolled up {rollup.reservations} reservations into {rollup.series} series, "
                              f"{rollup.hours} hours each.")
        models = forecasts_refresh_all()
        failed = {key: outcome for key, outcome in models.items() if outcome.startswith("error")}
        self.stdout.write(f"Forecast {len(models) - len(failed)} series" + (f"; failed: {failed}" if failed else "."))
        waiting = CapacityPlan.objects.filter(status=CapacityPlan.Status.PROPOSED).first()
        if propose and waiting:
            self.stdout.write(f"Capacity plan {waiting.pk} is still waiting for a decision; no new plan proposed.")
        elif propose:
            try:
                plan = capacity_plan_propose(plan_settings=PlanSettings.parse({"service_level": service_level}))
            except MarketplaceError as error:
                raise CommandError(str(error)) from error
            self.stdout.write(f"Proposed capacity plan {plan.pk}: {plan.lines.count()} lines, "
                              f"{plan.total_monthly_cost} {plan.currency} a month.")
