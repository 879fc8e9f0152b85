"""Hourly demand metrics, their forecasts, and the capacity plans that admins approve."""

from django.conf import settings
from django.db import models

from marketplace.models import GpuModel, Region


class DemandSeries(models.Model):
    """One hourly series: the marketplace's demand for a GPU model in a region, or an imported history.

    Marketplace series are rolled up from reservations and allocations (``metrics.py``); imported
    series come from the public traces shipped under ``data/`` (``import_demand``).
    """

    class Source(models.TextChoices):
        MARKETPLACE = "marketplace", "Marketplace"
        IMPORTED = "imported", "Imported trace"

    key = models.SlugField(max_length=120, unique=True)
    label = models.CharField(max_length=200)
    source = models.CharField(max_length=16, choices=Source.choices)
    gpu_model = models.ForeignKey(GpuModel, on_delete=models.PROTECT, null=True, blank=True, related_name="+",
                                  help_text="Empty for demand that asked for any model, and for imported series.")
    region = models.ForeignKey(Region, on_delete=models.PROTECT, null=True, blank=True, related_name="+",
                               help_text="Empty for demand that asked for any region, and for imported series.")
    unit = models.CharField(max_length=16, default="GPUs", help_text="What one unit of demand is: GPUs or servers.")
    price_per_unit_hour = models.DecimalField(
        max_digits=10, decimal_places=4, null=True, blank=True,
        help_text="Price used to cost a plan for imported series; marketplace series use the nodes' current prices.",
    )
    description = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["source", "key"]
        verbose_name_plural = "demand series"

    def __str__(self) -> str:
        return self.label


class DemandPoint(models.Model):
    """One hour of one series, in units held during the hour (a GPU held for 30 minutes counts 0.5).

    ``demand`` is what customers requested, including rejected and waiting requests. ``None``
    marks an hour without data (an outage in an imported trace), not zero demand.
    """

    series = models.ForeignKey(DemandSeries, on_delete=models.CASCADE, related_name="points")
    hour = models.DateTimeField(help_text="Start of the hour, UTC.")
    demand = models.FloatField(null=True, blank=True)
    allocated = models.FloatField(null=True, blank=True)
    capacity = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["series", "hour"]
        constraints = [
            models.UniqueConstraint(fields=["series", "hour"], name="demand_point_one_per_hour"),
            models.CheckConstraint(condition=models.Q(demand__gte=0) | models.Q(demand__isnull=True),
                                   name="demand_point_demand_not_negative"),
        ]

    @property
    def utilisation(self) -> float | None:
        if self.allocated is None or not self.capacity:
            return None
        return self.allocated / self.capacity


class DemandForecast(models.Model):
    """The latest forecasts of one series: the selected model, its quantiles per hour ahead and its backtest."""

    series = models.ForeignKey(DemandSeries, on_delete=models.CASCADE, related_name="forecasts")
    created_at = models.DateTimeField(auto_now_add=True)
    first_hour = models.DateTimeField(help_text="The first forecast hour, UTC; the hour after the last history hour.")
    horizon_hours = models.PositiveIntegerField()
    model_name = models.CharField(max_length=32)
    status = models.CharField(max_length=32, help_text="ok, gaps_filled, short_history, constant, all_zero or no_data.")
    message = models.CharField(max_length=500, blank=True)
    backtest_mase = models.JSONField(default=dict, help_text="MASE of each candidate model in the selection backtest.")
    quantiles = models.JSONField(help_text='Forecast per hour ahead by level, for example {"0.5": [...], "0.9": [...]}.')
    history_hours = models.PositiveIntegerField(help_text="Hours of history the forecast was fitted on.")

    class Meta:
        ordering = ["series", "-created_at"]
        get_latest_by = "created_at"


class CapacityPlan(models.Model):
    """A proposal of GPUs to add or retire per series, which an admin approves or rejects."""

    class Status(models.TextChoices):
        PROPOSED = "proposed", "Proposed"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    horizon_hours = models.PositiveIntegerField()
    service_level = models.DecimalField(max_digits=4, decimal_places=3,
                                        help_text="Forecast quantile the capacity must cover, for example 0.900.")
    growth_pct_per_month = models.DecimalField(max_digits=6, decimal_places=2, default=0,
                                               help_text="Extra demand growth assumed on top of the forecast.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PROPOSED)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.CharField(max_length=500, blank=True)
    total_monthly_cost = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    currency = models.CharField(max_length=3, default="USD")

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("approve_capacityplan", "Can approve or reject capacity plans")]

    def __str__(self) -> str:
        return f"Capacity plan {self.pk} ({self.status})"


class CapacityPlanLine(models.Model):
    """One plan's decision for one series, with the numbers behind it."""

    class Action(models.TextChoices):
        ADD = "add", "Add"
        RETIRE = "retire", "Retire"
        HOLD = "hold", "Hold"

    plan = models.ForeignKey(CapacityPlan, on_delete=models.CASCADE, related_name="lines")
    series = models.ForeignKey(DemandSeries, on_delete=models.PROTECT, related_name="+")
    forecast = models.ForeignKey(DemandForecast, on_delete=models.SET_NULL, null=True, related_name="+")
    unit = models.CharField(max_length=16)
    capacity = models.IntegerField(help_text="Units in service now.")
    peak_p50 = models.FloatField(help_text="Highest median forecast over the horizon, with the growth assumption.")
    peak_at_service_level = models.FloatField()
    peak_p95 = models.FloatField()
    required = models.IntegerField(help_text="Units that cover the forecast at the plan's service level.")
    delta = models.IntegerField(help_text="Units to add (positive) or retire (negative).")
    delta_low = models.IntegerField(help_text="The same at the median forecast.")
    delta_high = models.IntegerField(help_text="The same at the 95th percentile.")
    action = models.CharField(max_length=8, choices=Action.choices)
    nodes_hint = models.CharField(max_length=200, blank=True)
    monthly_cost = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True,
                                       help_text="Cost per month of the added units at current prices; negative saves.")
    currency = models.CharField(max_length=3, default="USD")
    weekly_growth_pct = models.FloatField(null=True, blank=True)
    monthly_growth_pct = models.FloatField(null=True, blank=True)
    explanation = models.CharField(max_length=500)

    class Meta:
        ordering = ["plan", "series__key"]

    @property
    def amount(self) -> int:
        """Units to add or retire, without the sign."""
        return abs(self.delta)
