"""Server-side SVG charts of history, forecast, intervals and capacity; no JavaScript library needed.

Plain Python; no Django imports. Values are in the series' units, one per hour.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
import math

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 22


@dataclass(frozen=True)
class ForecastChart:
    title: str
    history: Sequence[float | None]
    """Past hours, oldest first; ``None`` where the hour has no data."""
    point: Sequence[float]
    lower_80: Sequence[float]
    upper_80: Sequence[float]
    lower_95: Sequence[float]
    upper_95: Sequence[float]
    capacity: float | None = None
    required: float | None = None
    unit: str = "GPUs"


def forecast_svg(chart: ForecastChart) -> str:
    """Return an ``<svg>`` element: history in grey, the forecast in blue with 80 % and 95 % bands,
    today's capacity as a green line and the plan's required capacity as an orange dashed line."""
    hours = len(chart.history) + len(chart.point)
    # The scale follows demand and the plan's requirement. Capacity more than three times above
    # them would flatten the demand curve to a line at zero, so it then shows as a label instead.
    finite = [value for value in (*chart.history, *chart.upper_95, chart.required)
              if value is not None and math.isfinite(value)]
    top = max(finite, default=0.0) * 1.08 or 1.0
    capacity_above = chart.capacity is not None and chart.capacity > 3 * top
    if chart.capacity is not None and not capacity_above:
        top = max(top, chart.capacity * 1.08)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(index: float) -> float:
        return round(LEFT + plot_w * index / max(hours - 1, 1), 1)

    def y(value: float) -> float:
        return round(TOP + plot_h * (1 - value / top), 1)

    offset = len(chart.history)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{escape(chart.title)}" class="forecast-chart">',
        f"<title>{escape(chart.title)}</title>",
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="#b8c2cc"/>',
        f'<text x="2" y="{TOP + 8}" font-size="10" fill="#6b7785">{top:.0f}</text>',
        f'<text x="2" y="{TOP + plot_h}" font-size="10" fill="#6b7785">0 {escape(chart.unit)}</text>',
        f'<line x1="{x(offset)}" y1="{TOP}" x2="{x(offset)}" y2="{TOP + plot_h}" stroke="#b8c2cc" stroke-dasharray="2 3"/>',
        f'<text x="{x(offset) + 3}" y="{HEIGHT - 6}" font-size="10" fill="#6b7785">forecast</text>',
    ]
    for lower, upper, fill in ((chart.lower_95, chart.upper_95, "#dce8fb"), (chart.lower_80, chart.upper_80, "#b3cdf5")):
        if len(upper):
            outline = [(x(offset + i), y(value)) for i, value in enumerate(upper)]
            outline += [(x(offset + i), y(value)) for i, value in reversed(list(enumerate(lower)))]
            parts.append(f'<polygon class="band" points="{_points(outline)}" fill="{fill}"/>')
    for segment in _segments(chart.history):
        parts.append(f'<polyline class="history" points="{_points([(x(i), y(v)) for i, v in segment])}" '
                     f'fill="none" stroke="#4a5561" stroke-width="1.2"/>')
    if len(chart.point):
        parts.append(f'<polyline class="forecast" points="{_points([(x(offset + i), y(v)) for i, v in enumerate(chart.point)])}" '
                     f'fill="none" stroke="#1f5fbf" stroke-width="1.6"/>')
    if capacity_above:
        parts.append(f'<text class="capacity" x="{WIDTH - RIGHT}" y="{TOP + 8}" font-size="10" fill="#146c2e" '
                     f'text-anchor="end">capacity {chart.capacity:.0f} {escape(chart.unit)}, above the chart</text>')
    for value, colour, dash, name in ((None if capacity_above else chart.capacity, "#146c2e", "", "capacity"),
                                      (chart.required, "#c05a00", ' stroke-dasharray="6 4"', "required")):
        if value is not None:
            parts.append(f'<line class="{name}" x1="{LEFT}" y1="{y(value)}" x2="{WIDTH - RIGHT}" y2="{y(value)}" '
                         f'stroke="{colour}" stroke-width="1.4"{dash}/>')
    parts.append("</svg>")
    return "".join(parts)


def _segments(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """Split a series at missing hours, so a gap shows as a gap rather than a line across it."""
    segments, current = [], []
    for index, value in enumerate(values):
        if value is None or not math.isfinite(value):
            if current:
                segments.append(current)
            current = []
        else:
            current.append((index, value))
    if current:
        segments.append(current)
    return segments


def _points(pairs) -> str:
    return " ".join(f"{px},{py}" for px, py in pairs)
