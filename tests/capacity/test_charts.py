"""The SVG chart: escaped labels, gaps left open, capacity far above demand shown as a label."""

from capacity.charts import ForecastChart, forecast_svg


def chart(**overrides):
    values = dict(title="T4 <b>", history=[1.0, None, 2.0, 3.0], point=[3.0, 3.0], lower_80=[2.0, 2.0],
                  upper_80=[4.0, 4.0], lower_95=[1.0, 1.0], upper_95=[5.0, 5.0], capacity=6.0, required=5.0)
    return ForecastChart(**{**values, **overrides})


def test_title_is_escaped_and_gap_splits_the_history():
    svg = forecast_svg(chart())
    assert "T4 &lt;b&gt;" in svg
    assert "<b>" not in svg
    assert svg.count('class="history"') == 2
    assert '<line class="capacity"' in svg


def test_capacity_far_above_demand_becomes_a_label():
    svg = forecast_svg(chart(capacity=1312.0))
    assert '<line class="capacity"' not in svg
    assert "capacity 1312 GPUs, above the chart" in svg
