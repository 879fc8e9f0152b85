"""Benchmark the demand forecasts: accuracy and interval coverage on the shipped series, and fleet fit time.

Accuracy uses a nested rolling-origin protocol. At each evaluation origin ``t`` the product's
``forecast_series`` receives only the hours before ``t``. Its own backtest, the selection block,
picks the model and calibrates the intervals on origins whose test windows end by ``t``. Errors
and coverage are then measured on the hours from ``t`` on, the evaluation block, and nowhere
else. Every candidate is also fitted at ``t`` to report its own MASE.

    python -m bench.forecast --output docs/benchmarks.md
"""

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.report import machine_description, write_section
from capacity.demand_files import DATASETS
from capacity.forecasting import MODEL_NAMES, forecast_many, forecast_series
from capacity.forecasting.backtest import mase_scale, origin_count, origin_spacing
from capacity.forecasting.selection import COMBINATION_MARGIN, DEFAULT_MAX_TRAIN_HOURS, forecast_each_model

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SEASON = 24
EVALUATION = {24: (14, 12), 168: (8, 24)}
"""Evaluation origins per horizon: how many, and the hours between them, counted back from the data's end."""
FLEET_SIZE = 100
FLEET_SEED = 20260601
FLEET_HORIZON = 168
CHART_PATH = REPO_ROOT / "docs" / "forecast-helios.svg"
CHART_CONTEXT_HOURS = 72


def evaluation_origins(length: int, horizon: int) -> list[int]:
    """Return the evaluation origins, oldest first; the last one's test window ends at the last hour."""
    count, spacing = EVALUATION[horizon]
    last = length - horizon
    return [last - spacing * step for step in reversed(range(count))]


def evaluate_series(key: str, values: np.ndarray, horizon: int) -> dict:
    """Run the nested protocol on one series and horizon; return MASE, coverage and timing figures."""
    observed = np.isfinite(values)
    naive_scaled, model_scaled, selected_scaled = [], {name: [] for name in MODEL_NAMES}, []
    inside_80 = inside_95 = evaluated_hours = 0
    fit_seconds, selections, chart = [], Counter(), None

    for origin in evaluation_origins(values.size, horizon):
        history, actual = values[:origin], values[origin:origin + horizon]
        hours = np.isfinite(actual)
        if not hours.any():
            continue
        train_start = max(0, origin - DEFAULT_MAX_TRAIN_HOURS)
        filled = np.where(observed[train_start:origin], values[train_start:origin], 0.0)
        scale = mase_scale(filled, observed[train_start:origin], SEASON)

        started = time.perf_counter()
        result = forecast_series(history, horizon=horizon, season=SEASON)
        fit_seconds.append(time.perf_counter() - started)
        selections[result.model] += 1
        selected_scaled.append(np.mean(np.abs(actual - result.point)[hours]) / scale)
        inside_80 += int(((actual >= result.lower_80) & (actual <= result.upper_80))[hours].sum())
        inside_95 += int(((actual >= result.lower_95) & (actual <= result.upper_95))[hours].sum())
        evaluated_hours += int(hours.sum())
        chart = (origin, result)

        forecasts = forecast_each_model(history, horizon=horizon, season=SEASON)
        naive_scaled.append(np.mean(np.abs(actual - forecasts["seasonal_naive"])[hours]) / scale)
        for name in MODEL_NAMES:
            if name in forecasts:
                model_scaled[name].append(np.mean(np.abs(actual - forecasts[name])[hours]) / scale)
            else:
                model_scaled[name].append(np.nan)

    naive = float(np.mean(naive_scaled))
    print(f"{key} {horizon} h: selected {dict(selections)}, MASE {np.mean(selected_scaled):.3f} "
          f"vs naive {naive:.3f}, coverage {inside_80 / evaluated_hours:.2f}/{inside_95 / evaluated_hours:.2f}",
          file=sys.stderr)
    return {
        "key": key, "horizon": horizon, "origins": len(selected_scaled), "evaluated_hours": evaluated_hours,
        "naive_mase": naive,
        "model_ratio": {name: float(np.mean(scores)) / naive if np.all(np.isfinite(scores)) else None
                        for name, scores in model_scaled.items()},
        "selected_mase": float(np.mean(selected_scaled)), "selected_ratio": float(np.mean(selected_scaled)) / naive,
        "selections": dict(selections.most_common()),
        "inside_80": inside_80, "inside_95": inside_95,
        "coverage_80": inside_80 / evaluated_hours, "coverage_95": inside_95 / evaluated_hours,
        "seconds_per_fit": float(np.mean(fit_seconds)), "chart": chart,
    }


def build_fleet(series: dict[str, np.ndarray]) -> tuple[list[np.ndarray], str]:
    """Return ``FLEET_SIZE`` histories cut from the shipped series, and a sentence saying how.

    Series ``i`` is a window of 4 to 5 weeks of shipped series ``i mod 5``, capped at the
    source's length, at a seeded random offset. Gaussian noise of 5 % of the source's standard
    deviation is added, the sum is multiplied by a seeded factor between 0.5 and 2, and the
    result is clipped at 0. Outage hours stay NaN.
    """
    rng = np.random.default_rng(FLEET_SEED)
    sources = list(series.values())
    fleet = []
    for index in range(FLEET_SIZE):
        source = sources[index % len(sources)]
        length = min(int(rng.integers(4 * 168, 5 * 168 + 1)), source.size)
        offset = int(rng.integers(0, source.size - length + 1))
        window = source[offset:offset + length]
        noise = rng.normal(0.0, 0.05 * np.nanstd(source), size=length)
        fleet.append(np.maximum((window + noise) * rng.uniform(0.5, 2.0), 0.0))
    description = (f"{FLEET_SIZE} series. Series i is a window of 4 to 5 weeks (capped at the source's length) "
                   f"of shipped series i mod {len(sources)} at a random offset. Gaussian noise of 5 % of the "
                   f"source's standard deviation is added, and the sum is multiplied by a random factor from 0.5 "
                   f"to 2 (seed {FLEET_SEED}). Outage hours stay missing")
    return fleet, description


def time_fleet(fleet: list[np.ndarray]) -> dict:
    """Time ``forecast_many`` on ``fleet`` with one worker process per CPU."""
    started = time.perf_counter()
    results = forecast_many(fleet, horizon=FLEET_HORIZON, season=SEASON)
    seconds = time.perf_counter() - started
    print(f"fleet: {len(fleet)} series in {seconds:.1f} s", file=sys.stderr)
    return {
        "series": len(fleet), "fleet_seconds": seconds, "seconds_per_series": seconds / len(fleet),
        "workers": os.cpu_count(), "statuses": dict(Counter(result.status for result in results)),
        "models": dict(Counter(result.model for result in results).most_common()),
    }


def summarize(rows: list[dict], fleet: dict) -> dict:
    """Return the headline figures: mean per-series MASE ratios, pooled coverage, fleet timing."""
    summary = {}
    for horizon in EVALUATION:
        ratios = [row["selected_ratio"] for row in rows if row["horizon"] == horizon]
        summary[f"mase_ratio_{horizon}h"] = round(float(np.mean(ratios)), 3)
    hours = sum(row["evaluated_hours"] for row in rows)
    summary["coverage_80"] = round(sum(row["inside_80"] for row in rows) / hours, 3)
    summary["coverage_95"] = round(sum(row["inside_95"] for row in rows) / hours, 3)
    for horizon in EVALUATION:
        subset = [row for row in rows if row["horizon"] == horizon]
        hours = sum(row["evaluated_hours"] for row in subset)
        summary[f"coverage_95_{horizon}h"] = round(sum(row["inside_95"] for row in subset) / hours, 3)
    summary["seconds_per_series"] = round(fleet["seconds_per_series"], 3)
    summary["fleet_seconds"] = round(fleet["fleet_seconds"], 1)
    return summary


def scale_points(values: np.ndarray, low: float, high: float, top: float, bottom: float) -> np.ndarray:
    return bottom - (values - low) / (high - low) * (bottom - top)


def render_chart(actual: np.ndarray, origin_index: int, result, unit: str, title: str) -> str:
    """Return an SVG line chart: actual demand, the point forecast and its 80 % and 95 % bands.

    ``actual`` covers the context hours before the origin and the forecast hours after it;
    ``origin_index`` is the position of the first forecast hour in ``actual``. Missing actual
    hours break the actual line.
    """
    width, height, left, right, top, bottom = 760, 320, 56, 16, 36, 280
    horizon = result.point.size
    hours = actual.size
    x = left + np.arange(hours) / (hours - 1) * (width - left - right)
    forecast_x = x[origin_index:origin_index + horizon]
    finite = actual[np.isfinite(actual)]
    low = 0.0
    high = float(max(finite.max(), result.upper_95.max())) * 1.05

    def y(values):
        return scale_points(np.asarray(values, dtype=float), low, high, top, bottom)

    def band(lower, upper, colour):
        outline = np.concatenate([np.column_stack([forecast_x, y(upper)]),
                                  np.column_stack([forecast_x[::-1], y(lower)[::-1]])])
        points = " ".join(f"{px:.1f},{py:.1f}" for px, py in outline)
        return f'<polygon points="{points}" fill="{colour}" stroke="none"/>'

    def line(xs, values, colour, dash=""):
        points = " ".join(f"{px:.1f},{py:.1f}" for px, py in zip(xs, y(values)))
        dash_attribute = f' stroke-dasharray="{dash}"' if dash else ""
        return f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.6"{dash_attribute}/>'

    actual_segments = []
    segment = []
    for index in range(hours):
        if np.isfinite(actual[index]):
            segment.append(index)
        elif segment:
            actual_segments.append(segment)
            segment = []
    if segment:
        actual_segments.append(segment)

    ticks = []
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        value = low + fraction * (high - low)
        ty = float(y([value])[0])
        ticks.append(f'<line x1="{left}" y1="{ty:.1f}" x2="{width - right}" y2="{ty:.1f}" stroke="#e5e5e5"/>'
                     f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end">{value:.0f}</text>')
    for hour in range(0, hours, 24):
        tx = float(x[hour])
        ticks.append(f'<text x="{tx:.1f}" y="{bottom + 16}" text-anchor="middle">{hour - origin_index:+d} h</text>')

    origin_x = float(x[origin_index])
    legend = [("#c6dbef", "95 % interval"), ("#6baed6", "80 % interval"), ("#08519c", "forecast"), ("#222222", "actual")]
    legend_items = "".join(
        f'<rect x="{left + 150 * i}" y="10" width="14" height="10" fill="{colour}"/>'
        f'<text x="{left + 150 * i + 20}" y="19">{label}</text>'
        for i, (colour, label) in enumerate(legend)
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-family="sans-serif" font-size="11">',
        f"<title>{title}</title>",
        '<rect width="100%" height="100%" fill="white"/>',
        *ticks,
        band(result.lower_95, result.upper_95, "#c6dbef"),
        band(result.lower_80, result.upper_80, "#6baed6"),
        line(forecast_x, result.point, "#08519c"),
        *[line(x[segment], actual[segment], "#222222") for segment in actual_segments],
        f'<line x1="{origin_x:.1f}" y1="{top}" x2="{origin_x:.1f}" y2="{bottom}" stroke="#888888" stroke-dasharray="4 3"/>',
        f'<text x="{left}" y="{height - 6}">{unit} per hour; hours relative to the forecast origin</text>',
        legend_items,
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def write_chart(values: dict[str, np.ndarray], rows: list[dict]) -> str:
    """Draw the last 168-hour evaluation window of the Helios all-cluster series; return its caption."""
    row = next(row for row in rows if row["key"] == "helios-earth" and row["horizon"] == 168)
    origin, result = row["chart"]
    start = origin - CHART_CONTEXT_HOURS
    actual = values["helios-earth"][start:origin + result.point.size]
    dataset = DATASETS["helios-earth"]
    title = f"{dataset.label}: {result.model} forecast from hour {origin} against actual demand"
    CHART_PATH.write_text(render_chart(actual, CHART_CONTEXT_HOURS, result, dataset.unit, title))
    return (f"{dataset.label}, the last 168-hour evaluation window (origin at hour {origin} of {values['helios-earth'].size}), "
            f"selected model `{result.model}`, with {CHART_CONTEXT_HOURS} hours of history before the origin.")


def ratio_cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def render(rows: list[dict], fleet: dict, fleet_description: str, summary: dict, chart_caption: str,
           total_seconds: float) -> str:
    model_columns = [name for name in MODEL_NAMES if name != "seasonal_naive"]
    accuracy = "\n".join(
        f"| {row['key']} | {row['horizon']} | {row['origins']} | {row['naive_mase']:.3f} | "
        + " | ".join(ratio_cell(row["model_ratio"][name]) for name in model_columns)
        + f" | **{row['selected_ratio']:.2f}** | "
        + ", ".join(f"{name} {count}" for name, count in row["selections"].items()) + " |"
        for row in rows
    )
    coverage = "\n".join(
        f"| {row['key']} | {row['horizon']} | {row['evaluated_hours']} | {row['coverage_80']:.1%} | "
        f"{row['coverage_95']:.1%} | {row['seconds_per_fit']:.2f} |"
        for row in rows
    )
    series_list = "\n".join(
        f"- `{key}`: {dataset.label}, {dataset.unit}, `{dataset.path.relative_to(REPO_ROOT)}`"
        for key, dataset in DATASETS.items()
    )
    evaluation = "; ".join(f"{horizon} h: {count} origins {spacing} h apart" for horizon, (count, spacing) in EVALUATION.items())
    selection = "; ".join(f"{horizon} h: up to {origin_count(horizon)} origins {origin_spacing(horizon)} h apart"
                          for horizon in EVALUATION)
    return f"""## Demand forecasting

Measured by `make bench-forecast`, which runs

    python -m bench.forecast --output docs/benchmarks.md

on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, on {machine_description()}. The whole run took
{total_seconds:.0f} s. Timings are wall-clock on a shared machine.

Series (outage and no-data hours are missing, as each data README lists):

{series_list}

### Protocol

Nested rolling origin. The evaluation origins are the last ones of each series, counted back
from its final hour ({evaluation}). At each evaluation origin `forecast_series` gets only the
hours before it. Its internal backtest is the selection block ({selection}). It selects the model
by MASE and calibrates the intervals on test windows that end by the evaluation origin, each
origin's errors coming from the model selected on the other origins (leave one origin out). The
combination is selected unless its MASE exceeds another model's by more than
{COMBINATION_MARGIN * 100:.0f} %. The errors and coverage below come from the evaluation windows only.

MASE divides each window's mean absolute error by the mean absolute 24-hour difference of the
training data before its origin (at most {DEFAULT_MAX_TRAIN_HOURS} hours, over hours observed on
both sides), and is averaged over origins. A ratio is a model's MASE over seasonal naive's on
the same origins, so below 1 beats seasonal naive. Every candidate is also fitted at each
evaluation origin for its own column; n/a marks a model that could not be fitted at some origin
(`ets_weekly` needs two whole weeks). The 168-hour windows of neighbouring origins overlap, so
their errors are correlated. The backtest origin counts, the combination margin and the held-out calibration were chosen
after looking at results on these same series, so the selected-model figures are somewhat
optimistic. The per-model columns do not depend on those choices.

### Accuracy: MASE ratio to seasonal naive on the evaluation windows

| series | horizon (h) | origins | seasonal naive MASE | {' | '.join(model_columns)} | selected | models selected |
|---|---:|---:|---:|{'---:|' * len(model_columns)}---:|---|
{accuracy}

### Interval coverage and fit time

Coverage is the share of observed evaluation hours inside the interval. Fit time is the
wall-clock time of one `forecast_series` call (backtest, selection and final fit) in one process.

| series | horizon (h) | evaluated hours | 80 % coverage | 95 % coverage | seconds per fit |
|---|---:|---:|---:|---:|---:|
{coverage}

### Fleet timing

`forecast_many` at horizon {FLEET_HORIZON} h with {fleet['workers']} worker processes on {fleet_description}.
It took **{fleet['fleet_seconds']:.1f} s**, {fleet['seconds_per_series']:.2f} s per series (target: 100 series in
60 s or less). Statuses: `{json.dumps(fleet['statuses'])}`; models selected: `{json.dumps(fleet['models'])}`.

### Summary

| figure | value | target |
|---|---:|---|
| MASE ratio at 24 h, mean of the per-series ratios of the selected model | {summary['mase_ratio_24h']:.3f} | 0.8 or less |
| MASE ratio at 168 h, same definition | {summary['mase_ratio_168h']:.3f} | |
| 80 % interval coverage, pooled over all series, horizons and evaluated hours | {summary['coverage_80']:.1%} | near 80 % |
| 95 % interval coverage, same pooling | {summary['coverage_95']:.1%} | 90 % to 98 % |
| 95 % interval coverage at 24 h only | {summary['coverage_95_24h']:.1%} | |
| 95 % interval coverage at 168 h only | {summary['coverage_95_168h']:.1%} | |
| fleet seconds for {fleet['series']} series | {summary['fleet_seconds']:.1f} | 60 or less |

### Forecast against actual

![Forecast against actual demand]({CHART_PATH.relative_to(REPO_ROOT / 'docs')})

{chart_caption}
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="Markdown file whose forecast section is replaced with the results")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()

    values = {key: dataset.load().to_numpy(dtype=float) for key, dataset in DATASETS.items()}
    rows = [evaluate_series(key, series, horizon) for horizon in EVALUATION for key, series in values.items()]
    fleet_series, fleet_description = build_fleet(values)
    fleet = time_fleet(fleet_series)
    summary = summarize(rows, fleet)

    if arguments.output:
        caption = write_chart(values, rows)
        markdown = render(rows, fleet, fleet_description, summary, caption, time.perf_counter() - started)
        write_section(arguments.output, "forecast", markdown)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
