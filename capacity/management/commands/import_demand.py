"""`python manage.py import_demand`: load the shipped Helios and Philly demand series as history."""

from django.core.management.base import BaseCommand

from capacity.importing import demand_import


class Command(BaseCommand):
    help = ("Load the hourly demand series shipped under data/ (Helios, Philly) as imported demand history. "
            "Safe to run again: each series' points are replaced.")

    def add_arguments(self, parser):
        parser.add_argument("--keep-dates", action="store_true",
                            help="Keep the traces' own dates (2017 and 2020) instead of moving them to end now.")
        parser.add_argument("--forecast", action="store_true", help="Fit and store a forecast of each series afterwards.")

    def handle(self, *args, keep_dates: bool = False, forecast: bool = False, **options):
        for summary in demand_import(shift_to_now=not keep_dates, forecast=forecast):
            self.stdout.write(
                f"{summary.key}: {summary.hours} hours from {summary.first_hour} to {summary.last_hour}, "
                f"{summary.missing_hours} missing"
                + (f", shifted by {summary.shifted_days} days" if summary.shifted_days else "")
                + (f", forecast model {summary.forecast_model}" if summary.forecast_model else "")
            )
