"""`make bench-placement`: the FGD paper's packing protocol on the bundled Alibaba trace, for every online policy.

The protocol replays the 1,213 GPU nodes and the default pod list, sorted by name and shuffled
with seeds 42 to 51. Pods are resampled uniformly and appended until the next one would pass
130 % of GPU capacity. Each task gets one attempt, in order, and tasks never leave.

As in the scheduler framework behind the published runs, scores are cut to integers (best fit's
then rescaled to 0-100 over the feasible nodes) and the highest wins. Ties go to the first
feasible node in node-list order. With that rule the reimplemented baselines land within a point
of the published means, while random ties leave FGD at about 10 % unallocated
(``--random-ties`` shows it).

The run writes the table beside the published figures into ``docs/benchmarks.md``, a chart of
unallocated GPU against arrived workload to ``docs/placement-unallocated.svg``, and a JSON line.

    python -m bench.placement --output docs/benchmarks.md
"""

import argparse
import json
import logging
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy.optimize import linprog

from allocation.solvers.base import PlacementRequest
from allocation.solvers.batch import BatchRequest, batch_place, greedy_plan, plan_prices
from allocation.solvers.fleet import Fleet
from allocation.solvers.genetic import GeneticPlan, genetic_place, plan_objectives
from allocation.solvers.fragmentation import FragmentationTracker, TargetWorkload, TaskShape
from allocation.solvers.online import ONLINE_POLICIES, OnlinePolicy, policy_by_name
from allocation.trace import NODES_CSV, TASKS_CSV
from allocation.trace.csv_reader import read_nodes, read_tasks
from allocation.trace.overlay import place_nodes
from bench.reliability import reliability_effect, render_reliability
from bench.report import machine_description, write_section

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART_PATH = REPO_ROOT / "docs" / "placement-unallocated.svg"
SEEDS = tuple(range(42, 52))
INFLATION = 1.3
REPORTED_ARRIVED = (50, 80, 90, 95, 100, 130)
CHART_ARRIVED = tuple(range(80, 131))
COMPARE_LOADS = (50, 80, 95)
"""GPU allocation (% of capacity) of the fleet before the batch in the solver comparison."""
POLICIES = ("random", "dot_product", "gpu_packing", "best_fit", "fgd", "fgd_best_fit", "gap_squares",
            "gap_squares_waste")
OURS = ("fgd_best_fit", "gap_squares", "gap_squares_waste")
"""Our own policies, each built on the one before it."""
BEST_ONLINE = "gap_squares_waste"
"""Our best online policy: the batch solvers' hint and fallback, and the baseline of their comparison."""
PUBLISHED = {
    "random": {"at_100": 13.70, "at_130": 12.62, "fragment_at_90": 14.49},
    "dot_product": {"at_100": 9.38, "at_130": 9.20, "fragment_at_90": 9.45},
    "gpu_packing": {"at_100": 8.22, "at_130": 7.94, "fragment_at_90": 8.33},
    "best_fit": {"at_100": 7.14, "at_130": 6.89, "fragment_at_90": 7.35},
    "fgd": {"at_100": 4.77, "at_130": 4.60, "fragment_at_90": 5.01},
}
"""Figures from the result files of the FGD authors' simulator, default trace, seeds 42-51.

``at_100`` is the mean unallocated GPU % at 100 % arrived. ``at_130`` and ``fragment_at_90`` are
medians: unallocated GPU % at 130 % and fragment % of capacity at 90 %.
"""
VALIDATED = ("random", "dot_product", "best_fit", "fgd")
"""Policies whose reimplementation must land within one point of the published mean."""

logger = logging.getLogger("bench.placement")


@dataclass(frozen=True)
class Task:
    cpu: int
    memory: int
    gpu_count: int
    gpu_milli: int

    @property
    def request(self) -> PlacementRequest:
        return PlacementRequest(gpu_count=self.gpu_count, gpu_milli_per_gpu=self.gpu_milli,
                                cpu_millicores=self.cpu, memory_mib=self.memory)

    @property
    def gpu_total(self) -> int:
        return self.gpu_count * self.gpu_milli


def load_fleet() -> Fleet:
    """Return the trace's 1,213 GPU nodes, idle, in node-list order."""
    nodes = read_nodes(NODES_CSV)
    return Fleet.build(cpu=[node.cpu_millicores for node in nodes], memory=[node.memory_mib for node in nodes],
                       gpu_count=[node.gpu_count for node in nodes], models=[node.gpu_model for node in nodes])


def load_tasks() -> list[Task]:
    """Return the default pod list sorted by name."""
    tasks = sorted(read_tasks(TASKS_CSV), key=lambda task: task.name)
    return [Task(task.cpu_millicores, task.memory_mib, task.gpu_count, task.gpu_milli) for task in tasks]


def target_workload(tasks: list[Task]) -> TargetWorkload:
    """Return the typical shapes of the whole pod list, as FGD's target workload."""
    return TargetWorkload.typical(TaskShape(task.cpu, task.gpu_count, task.gpu_milli) for task in tasks)


def arrival_order(tasks: list[Task], seed: int, capacity_milli: int) -> list[Task]:
    """Shuffle ``tasks`` with ``seed``, then append uniform resamples until the next would pass 130 % of capacity."""
    random = np.random.default_rng(seed)
    order = [tasks[index] for index in random.permutation(len(tasks))]
    requested = sum(task.gpu_total for task in order)
    while True:
        extra = tasks[int(random.integers(len(tasks)))]
        if requested + extra.gpu_total > INFLATION * capacity_milli:
            return order
        order.append(extra)
        requested += extra.gpu_total


def framework_pick(policy: OnlinePolicy, scores: np.ndarray, random: np.random.Generator | None) -> int:
    """Return the position the scheduler framework would choose: integer scores, the first best or a random best.

    ``random`` None gives ties to the first feasible node in node-list order.
    """
    if not policy.integer_scores:
        return int(np.argmax(scores))
    integer = np.floor(scores).astype(np.int64)
    if policy.normalizes:
        low, high = integer.min(), integer.max()
        integer = (integer - low) * 100 // (high - low) if high > low else np.zeros_like(integer)
    best = np.flatnonzero(integer == integer.max())
    if random is None or best.size == 1:
        return int(best[0])
    return int(best[random.integers(best.size)])


def run(policy_name: str, seed: int, random_ties: bool = False) -> dict:
    """Replay one arrival order with one policy; return unallocated and fragment % of capacity after each task."""
    fleet = load_fleet()
    tasks = load_tasks()
    workload = target_workload(tasks)
    policy = policy_by_name(policy_name, workload=workload, seed=seed)
    state = policy.prepare(fleet)
    meter = FragmentationTracker(fleet, workload)
    capacity = int(fleet.gpu_count.sum()) * 1000
    tie_random = np.random.default_rng(seed + 1000) if random_ties else None

    arrived = allocated = failed = 0
    arrived_pct, unallocated_pct, fragment_pct = [], [], []
    decision_seconds = 0.0
    for task in arrival_order(tasks, seed, capacity):
        request = task.request
        started = time.perf_counter()
        rows = fleet.feasible(request)
        row = None
        if rows.size:
            evaluation = policy.evaluate(fleet, state, request, rows)
            position = framework_pick(policy, evaluation.scores, tie_random)
            row = int(evaluation.rows[position])
            fleet.take(row, evaluation.columns[position], request)
            policy.placed(state, row)
        decision_seconds += time.perf_counter() - started

        if row is None:
            failed += 1
        else:
            allocated += task.gpu_total
            meter.refresh(row)
        arrived += task.gpu_total
        arrived_pct.append(100 * arrived / capacity)
        unallocated_pct.append(100 - 100 * allocated / capacity)
        fragment_pct.append(100 * meter.cluster_fragment() / capacity)

    logger.info("%s seed %d: %d tasks, %d failed, %.3f ms per decision", policy_name, seed, len(arrived_pct), failed,
                1000 * decision_seconds / len(arrived_pct))
    return {
        "policy": policy_name, "seed": seed, "decisions": len(arrived_pct), "failed": failed,
        "ms_per_decision": 1000 * decision_seconds / len(arrived_pct),
        "arrived": arrived_pct, "unallocated": unallocated_pct, "fragment": fragment_pct,
    }


def run_batch(seed: int, window: int, time_limit_seconds: float, policy_name: str = BEST_ONLINE) -> dict:
    """Replay one arrival order placing each window of ``window`` tasks together with CP-SAT.

    A task's outcome is known when its window is solved; the curves record it at the task's own
    arrival, like ``run``. Tasks that the window's plan leaves out fail, as with one attempt.
    """
    fleet = load_fleet()
    tasks = load_tasks()
    workload = target_workload(tasks)
    policy = policy_by_name(policy_name, workload=workload, seed=seed)
    meter = FragmentationTracker(fleet, workload)
    capacity = int(fleet.gpu_count.sum()) * 1000
    order = arrival_order(tasks, seed, capacity)

    arrived = allocated = failed = 0
    arrived_pct, unallocated_pct, fragment_pct, statuses = [], [], [], {}
    solve_seconds = 0.0
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        plan = batch_place(fleet, [BatchRequest(task.request) for task in chunk], policy,
                           time_limit_seconds=time_limit_seconds, seed=seed)
        solve_seconds += plan.wall_seconds
        statuses[plan.status] = statuses.get(plan.status, 0) + 1
        for index, task in enumerate(chunk):
            if index in plan.assignments:
                row, columns = plan.assignments[index]
                fleet.take(row, np.array(columns, dtype=np.int64), task.request)
                meter.refresh(row)
                allocated += task.gpu_total
            else:
                failed += 1
            arrived += task.gpu_total
            arrived_pct.append(100 * arrived / capacity)
            unallocated_pct.append(100 - 100 * allocated / capacity)
            fragment_pct.append(100 * meter.cluster_fragment() / capacity)

    logger.info("batch seed %d: %d tasks, %d failed, %.1f s solving, plans %s", seed, len(order), failed,
                solve_seconds, statuses)
    return {
        "policy": f"cp_sat_window_{window}", "seed": seed, "decisions": len(order), "failed": failed,
        "ms_per_decision": 1000 * solve_seconds / len(order), "statuses": statuses,
        "arrived": arrived_pct, "unallocated": unallocated_pct, "fragment": fragment_pct,
    }


def priced_fleet() -> tuple[Fleet, np.ndarray]:
    """Return the trace fleet with the marketplace overlay's prices, and each node's provider index."""
    nodes = read_nodes(NODES_CSV)
    overlay = place_nodes([node.hostname for node in nodes], [node.gpu_model for node in nodes])
    providers = sorted({placement.provider for placement in overlay})
    fleet = Fleet.build(cpu=[node.cpu_millicores for node in nodes], memory=[node.memory_mib for node in nodes],
                        gpu_count=[node.gpu_count for node in nodes], models=[node.gpu_model for node in nodes],
                        price=[float(placement.price_per_gpu_hour) for placement in overlay])
    return fleet, np.array([providers.index(placement.provider) for placement in overlay])


def compare_batch_solvers(load_pct: int, seconds: float, seed: int = 42, batch_size: int = 100) -> dict:
    """Fill the priced fleet to ``load_pct`` % with ``BEST_ONLINE``, then place the next batch three ways.

    The three are one-by-one ``BEST_ONLINE``, CP-SAT, and the genetic search (its best plan by
    CP-SAT's weights, and the spread of its front). For each, the result gives what it placed,
    its price, the fragmentation proxy, the largest share on one provider, the weighted objective
    and the time taken. The price is also compared with the cheapest possible: each placed
    request on its cheapest node that could hold it at the start, ignoring the others.
    """
    fleet, provider = priced_fleet()
    tasks = load_tasks()
    workload = target_workload(tasks)
    policy = policy_by_name(BEST_ONLINE, workload=workload)
    state = policy.prepare(fleet)
    capacity = int(fleet.gpu_count.sum()) * 1000
    order = arrival_order(tasks, seed, capacity)
    allocated = position = 0
    while allocated < load_pct / 100 * capacity and position < len(order) - batch_size:
        request = order[position].request
        rows = fleet.feasible(request)
        if rows.size:
            evaluation = policy.evaluate(fleet, state, request, rows)
            best = int(np.argmax(evaluation.scores))
            fleet.take(int(evaluation.rows[best]), evaluation.columns[best], request)
            policy.placed(state, int(evaluation.rows[best]))
            allocated += order[position].gpu_total
        position += 1
    batch = [BatchRequest(task.request) for task in order[position:position + batch_size]]

    def describe(assignments: dict, wall: float, extra: dict | None = None) -> dict:
        plan = GeneticPlan(assignments=assignments,
                           objectives=plan_objectives(fleet, batch, assignments, provider))
        _, cheapest = plan_prices(fleet, batch, assignments)
        placed_milli = sum(batch[index].request.gpu_milli_total for index in assignments)
        return {"placed": len(assignments), "placed_gpu_milli": placed_milli,
                "price_cents_per_hour": plan.objectives[1], "cheapest_cents_per_hour": cheapest,
                "opened": plan.objectives[2], "concentration": round(plan.objectives[3], 3),
                "weighted": plan.weighted(), "seconds": round(wall, 2), **(extra or {})}

    started = time.perf_counter()
    greedy = greedy_plan(fleet, batch, policy)
    rows = {BEST_ONLINE: describe(greedy, time.perf_counter() - started)}
    exact = batch_place(fleet, batch, policy, time_limit_seconds=seconds, seed=seed)
    rows["cp_sat"] = describe(exact.assignments, exact.wall_seconds, {"status": exact.status})
    genetic = genetic_place(fleet, batch, policy, seed=seed, generations=10_000, time_limit_seconds=seconds,
                            provider=provider)
    best = genetic.best_weighted()
    spread = min(genetic.front, key=lambda plan: (plan.objectives[3], -plan.objectives[0]))
    rows["genetic"] = describe(best.assignments, genetic.wall_seconds,
                               {"front": len(genetic.front), "generations": genetic.generations,
                                "front_min_concentration": round(spread.objectives[3], 3),
                                "front_min_concentration_placed": len(spread.assignments)})
    return {"load_pct": load_pct, "batch": len(batch), "rows": rows}


def structural_lower_bound(seed: int) -> float:
    """Return a lower bound on unallocated GPU % at 100 % arrived for ``seed``'s arrival order, whatever the policy.

    A share of more than half a GPU leaves a hole of 1000 minus its milli on its GPU, which only
    shares no larger than the hole can use. A share that fails instead loses more than its hole.
    The bound is the holes' total milli minus the most that the arrived shares of at most 500
    milli could fill, computed as a linear program that may split a share across holes. It ignores
    CPU, memory, GPU models and the shares that need their own GPU, so the true optimum is higher.
    """
    fleet, tasks = load_fleet(), load_tasks()
    capacity = int(fleet.gpu_count.sum()) * 1000
    arrived, holes, smalls = 0, {}, {}
    for task in arrival_order(tasks, seed, capacity):
        if arrived >= capacity:
            break
        arrived += task.gpu_total
        if task.gpu_count == 1 and 500 < task.gpu_milli < 1000:
            hole = 1000 - task.gpu_milli
            holes[hole] = holes.get(hole, 0) + hole
        elif task.gpu_count == 1 and task.gpu_milli <= 500:
            smalls[task.gpu_milli] = smalls.get(task.gpu_milli, 0) + task.gpu_milli

    pairs = [(size, hole) for size in smalls for hole in holes if size <= hole]
    if not pairs:
        return 100 * sum(holes.values()) / capacity
    # Maximise the filled milli: each share size gives at most its volume, each hole size takes at most its total.
    rows, bounds = [], []
    for size, volume in smalls.items():
        rows.append([1.0 if pair[0] == size else 0.0 for pair in pairs])
        bounds.append(volume)
    for hole, volume in holes.items():
        rows.append([1.0 if pair[1] == hole else 0.0 for pair in pairs])
        bounds.append(volume)
    solution = linprog(-np.ones(len(pairs)), A_ub=np.array(rows), b_ub=np.array(bounds), method="highs")
    filled = -solution.fun if solution.success else 0.0
    return 100 * (sum(holes.values()) - filled) / capacity


def at_arrived(result: dict, percent: int, key: str) -> float | None:
    """Return the mean of ``key`` over the tasks after which the arrived workload rounds to ``percent``."""
    values = [value for arrived, value in zip(result["arrived"], result[key]) if round(arrived) == percent]
    return statistics.fmean(values) if values else None


def mean_of(values) -> float | None:
    values = [value for value in values if value is not None]
    return statistics.fmean(values) if values else None


def summarize(results: list[dict]) -> dict:
    """Return per policy: means over seeds of each figure at the reported arrived points, and the chart curve."""
    summary = {}
    for name in dict.fromkeys(result["policy"] for result in results):
        runs = [result for result in results if result["policy"] == name]
        at_100 = [at_arrived(run, 100, "unallocated") for run in runs]
        row = {
            "seeds": len(runs),
            "ms_per_decision": round(statistics.fmean(run["ms_per_decision"] for run in runs), 3),
            "unallocated_sd_at_100": round(statistics.stdev(at_100), 2) if len(runs) > 1 else None,
            "curve": [mean_of(at_arrived(run, percent, "unallocated") for run in runs) for percent in CHART_ARRIVED],
        }
        for percent in REPORTED_ARRIVED:
            unallocated = mean_of(at_arrived(run, percent, "unallocated") for run in runs)
            fragment = mean_of(at_arrived(run, percent, "fragment") for run in runs)
            row[f"unallocated_pct_at_{percent}"] = round(unallocated, 2) if unallocated is not None else None
            row[f"fragment_pct_at_{percent}"] = round(fragment, 2) if fragment is not None else None
            if unallocated and fragment is not None:
                row[f"fragment_rate_at_{percent}"] = round(100 * fragment / unallocated, 1)
        summary[name] = row
    return summary


def render_chart(summary: dict) -> str:
    """Return an SVG line chart of mean unallocated GPU % against arrived workload, one line per policy."""
    width, height, left, right, top, bottom = 720, 360, 60, 170, 20, 320
    colours = ["#999999", "#e6ab02", "#7570b3", "#1b9e77", "#d95f02", "#e7298a", "#66a61e"]
    low_x, high_x = CHART_ARRIVED[0], CHART_ARRIVED[-1]
    high_y = max(max(v for v in row["curve"] if v is not None) for row in summary.values())
    high_y = float(np.ceil(high_y / 5) * 5)

    def x(value):
        return left + (value - low_x) / (high_x - low_x) * (width - left - right)

    def y(value):
        return bottom - value / high_y * (bottom - top)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20}" '
             f'viewBox="0 0 {width} {height + 20}" font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height + 20}" fill="white"/>']
    for tick in range(0, int(high_y) + 1, 5):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#eeeeee"/>')
        parts.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick}</text>')
    for tick in range(low_x, high_x + 1, 10):
        parts.append(f'<text x="{x(tick):.1f}" y="{bottom + 16}" text-anchor="middle">{tick}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.0f}" y="{bottom + 34}" text-anchor="middle">'
                 f'arrived workload (% of GPU capacity)</text>')
    parts.append(f'<text x="14" y="{(top + bottom) / 2:.0f}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(top + bottom) / 2:.0f})">unallocated GPU (%)</text>')
    for index, (name, row) in enumerate(summary.items()):
        colour = colours[index % len(colours)]
        points = " ".join(f"{x(arrived):.1f},{y(value):.1f}"
                          for arrived, value in zip(CHART_ARRIVED, row["curve"]) if value is not None)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        label_y = top + 16 + index * 18
        parts.append(f'<line x1="{width - right + 12}" x2="{width - right + 32}" y1="{label_y - 4}" '
                     f'y2="{label_y - 4}" stroke="{colour}" stroke-width="3"/>')
        parts.append(f'<text x="{width - right + 38}" y="{label_y}">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def cell(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render(summary: dict, seeds: int, random_ties: bool, seconds: float, bound: float,
           on_batch_seeds: dict[str, float | None] | None = None) -> str:
    """Return the placement section; ``on_batch_seeds`` gives policies' unallocated % at 100 % on the batch run's seeds."""
    on_batch_seeds = on_batch_seeds or {}
    fgd_on_batch_seeds = on_batch_seeds.get("fgd")
    hint_on_batch_seeds = on_batch_seeds.get(BEST_ONLINE)
    ties = "a random best node" if random_ties else "the first best node in node-list order"
    lines = [
        "## Placement policies on the FGD protocol",
        "",
        "Measured by `make bench-placement`, which runs",
        "",
        "    python -m bench.placement --output docs/benchmarks.md",
        "",
        f"on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, on {machine_description()}. The whole run took "
        f"{seconds:.0f} s with {os.cpu_count()} worker processes.",
        "",
        f"The FGD paper's protocol, on the bundled trace: the 1,213 GPU nodes (6,212 GPUs) and the default pod list "
        f"shuffled with {seeds} seed{'s' if seeds > 1 else ''} from 42, with sampled pods appended up to 130 % of GPU "
        f"capacity. Each task gets one attempt, and tasks never leave. Scores are cut to integers as in the scheduler "
        f"framework, and ties go to {ties}. With random ties the reimplemented FGD leaves about 10 % "
        f"unallocated at 100 %, twice the published figure, so the published runs cannot have broken ties at "
        f"random. A figure at x % is the mean over the tasks after which the arrived workload rounds to x, then "
        f"the mean over seeds. *fragment* is FGD's fragmentation measure (free GPU that the typical task shapes "
        f"cannot use) as a share of capacity, and *rate* is that over the unallocated GPU.",
        "",
        "| policy | unallocated at 100 % | published | SD | unallocated at 130 % | published (median) "
        "| fragment at 90 % | published (median) | ms per decision |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in summary.items():
        published = PUBLISHED.get(name, {})
        lines.append(
            f"| {name} | **{cell(row['unallocated_pct_at_100'])}** | {cell(published.get('at_100'))} "
            f"| {cell(row['unallocated_sd_at_100'])} | {cell(row['unallocated_pct_at_130'])} "
            f"| {cell(published.get('at_130'))} | {cell(row['fragment_pct_at_90'])} "
            f"| {cell(published.get('fragment_at_90'))} | {cell(row['ms_per_decision'], 3)} |"
        )
    lines += ["", "Fragmentation rate (% of the unallocated GPU that is fragment) as the workload arrives:", "",
              "| policy | " + " | ".join(f"{percent} %" for percent in REPORTED_ARRIVED) + " |",
              "|---|" + "---:|" * len(REPORTED_ARRIVED)]
    for name, row in summary.items():
        lines.append(f"| {name} | " + " | ".join(cell(row.get(f"fragment_rate_at_{percent}"), 1)
                                             for percent in REPORTED_ARRIVED) + " |")

    validation = [
        f"{name} {summary[name]['unallocated_pct_at_100'] - PUBLISHED[name]['at_100']:+.2f}"
        for name in VALIDATED if name in summary and summary[name]["unallocated_pct_at_100"] is not None
    ]
    ours = {name: summary[name]["unallocated_pct_at_100"] for name in OURS
            if summary.get(name, {}).get("unallocated_pct_at_100") is not None}
    fgd = summary.get("fgd", {}).get("unallocated_pct_at_100")
    lines += [
        "",
        f"Harness check (reimplemented minus published, at 100 %, target within ±1 point): {', '.join(validation)}.",
        "",
        f"Lower bound: whatever the policy, at least **{bound:.2f} %** of the GPUs stay unallocated at 100 % "
        f"arrived (mean over the seeds; `structural_lower_bound` in `bench/placement.py`). Every share of more "
        f"than half a GPU leaves a hole that only smaller shares can fill, and the arrived small shares cannot "
        f"fill them all, even split across holes. The bound ignores CPU, memory and whole-GPU packing, so the "
        f"true optimum is higher.",
    ]
    if ours and fgd is not None:
        best_name = min(ours, key=ours.get)
        best = ours[best_name]
        steps = "; ".join(f"`{name}` {value:.2f} %" for name, value in ours.items())
        lines += [
            "",
            f"Ours, each built on the one before (`allocation/solvers/online.py`): {steps}. `fgd_best_fit` breaks "
            f"FGD's score ties by best fit. `gap_squares` adds a penalty for GPUs left on nodes without the CPU "
            f"that typical tasks need per GPU. It also packs shares of one GPU by the sum of squared counts of "
            f"each gap size. `gap_squares_waste` also charges the part of a gap that no sum of typical share "
            f"sizes can fill. The best, `{best_name}`, leaves {best:.2f} % against FGD's {fgd:.2f} % in this harness "
            f"and 4.77 % published: {fgd - best:.2f} points less, closing "
            f"{100 * (fgd - best) / max(fgd - bound, 1e-9):.0f} % of FGD's gap to the bound. "
            f"Target: 4.0 % or less at 2 ms or less per decision.",
        ]
    batch = next((name for name in summary if name.startswith("cp_sat_window_")), None)
    if batch is not None and fgd is not None:
        runs = summary[batch]
        lines += [
            "",
            f"`{batch}` places each window of {batch.rsplit('_', 1)[1]} arriving tasks together with CP-SAT "
            f"(`allocation/solvers/batch.py`). It maximises placed GPU demand, then minimises price, then newly "
            f"opened GPUs and nodes, with the `{BEST_ONLINE}` plan as hint and fallback and a time limit per window. "
            f"It runs on {runs['seeds']} seed{'s' if runs['seeds'] > 1 else ''} from 42 because it is slower: "
            f"{runs['unallocated_pct_at_100']:.2f} % unallocated at 100 %, against FGD's "
            f"{fgd_on_batch_seeds if fgd_on_batch_seeds is not None else fgd:.2f} % on the same seeds and "
            f"{runs['unallocated_pct_at_100'] - bound:.2f} points above the lower bound, at "
            f"{runs['ms_per_decision']:.1f} ms of solving per task. Time limits make it vary a little from run to run.",
        ]
        if hint_on_batch_seeds is not None:
            verdict = ("better than" if runs["unallocated_pct_at_100"] < hint_on_batch_seeds else "no better than")
            lines[-1] += (
                f" Its hint policy alone leaves {hint_on_batch_seeds:.2f} % on those seeds, so the windows do "
                f"{verdict} the online policy: each window maximises only its own placed demand, and cannot see "
                f"what its choices leave for the windows after it."
            )
    lines += [
        "",
        "`gpu_packing` follows the protocol's description of its preference order, not the published code, and "
        "lands well below the published figure; it is not part of the check.",
        "",
        "![Unallocated GPU against arrived workload](placement-unallocated.svg)",
    ]
    return "\n".join(lines)


def render_comparison(comparisons: list[dict], seconds: float) -> str:
    lines = [
        "### Batch solvers on one batch",
        "",
        f"The trace fleet gets the overlay's prices and providers and is filled to each load with `{BEST_ONLINE}` "
        f"(seed 42). The next 100 tasks then form one batch, placed three ways: one by one with `{BEST_ONLINE}`, "
        f"with CP-SAT, and with the genetic search (NSGA-II outline, seed 42), each of the last two given "
        f"{seconds:.0f} s. *price* is per hour of the placed requests. *cheapest* puts each placed request on the "
        f"cheapest node that could hold it at the start, ignoring the others, so it is a lower bound. *opened* is "
        f"the fragmentation proxy (50 per whole GPU and 200 per idle node newly used). *top provider* is the "
        f"largest share of the placed GPU milli on one provider, and *weighted* is CP-SAT's objective. The genetic "
        f"row is its front's best plan by that objective, and the last column its front's least concentrated plan.",
        "",
        "| load | solver | placed | price ($/h) | cheapest ($/h) | opened | top provider | weighted | seconds "
        "| front: least concentrated |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for item in comparisons:
        for name, row in item["rows"].items():
            front = (f"{row['front_min_concentration']:.2f} with {row['front_min_concentration_placed']} placed "
                     f"({row['front']} plans, {row['generations']} generations)" if "front" in row else "")
            status = f" ({row['status']})" if "status" in row else ""
            lines.append(
                f"| {item['load_pct']} % | {name}{status} | {row['placed']} of {item['batch']} "
                f"| {row['price_cents_per_hour'] / 100:.2f} | {row['cheapest_cents_per_hour'] / 100:.2f} "
                f"| {row['opened']:.0f} | {row['concentration']:.2f} | {row['weighted']:.0f} | {row['seconds']:.2f} "
                f"| {front} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="Markdown file whose placement section is replaced")
    parser.add_argument("--policies", default=",".join(POLICIES), help="Comma-separated policy names")
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="How many of the seeds 42-51 to run")
    parser.add_argument("--random-ties", action="store_true", help="Break score ties at random instead of by node order")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-window", type=int, default=100, help="Tasks per CP-SAT window; 0 skips the batch run")
    parser.add_argument("--batch-seconds", type=float, default=2.0, help="CP-SAT time limit per window")
    parser.add_argument("--batch-seeds", type=int, default=2, help="How many seeds the slower batch run uses")
    parser.add_argument("--compare-seconds", type=float, default=5.0,
                        help="Time limit of CP-SAT and the genetic search in the batch solver comparison; 0 skips it")
    parser.add_argument("--skip-reliability", action="store_true", help="Leave out the simulated reliability study")
    arguments = parser.parse_args(argv)
    policies = arguments.policies.split(",")
    unknown = [name for name in policies if name not in ONLINE_POLICIES]
    if unknown:
        parser.error(f"unknown policies {unknown}; choose from {', '.join(sorted(ONLINE_POLICIES))}")
    if not 1 <= arguments.seeds <= len(SEEDS) or not 0 <= arguments.batch_seeds <= len(SEEDS):
        parser.error(f"--seeds must be 1 to {len(SEEDS)} and --batch-seeds 0 to {len(SEEDS)} (the seeds are 42-51)")
    if arguments.processes < 1 or arguments.batch_window < 0:
        parser.error("--processes must be 1 or more and --batch-window 0 or more")
    if arguments.batch_seconds <= 0 or arguments.compare_seconds < 0:
        parser.error("--batch-seconds must be positive and --compare-seconds 0 or more")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    started = time.perf_counter()
    jobs = [(name, seed, arguments.random_ties)
            for name in policies for seed in SEEDS[:arguments.seeds]]

    seeds = SEEDS[:arguments.seeds]
    with multiprocessing.get_context("spawn").Pool(arguments.processes) as pool:
        results = pool.starmap(run, jobs)
        bound = statistics.fmean(pool.map(structural_lower_bound, seeds))
        if arguments.batch_window and arguments.batch_seeds:
            results += pool.starmap(run_batch, [(seed, arguments.batch_window, arguments.batch_seconds)
                                                for seed in SEEDS[:arguments.batch_seeds]])
        comparisons = (pool.starmap(compare_batch_solvers, [(load, arguments.compare_seconds) for load in COMPARE_LOADS])
                       if arguments.compare_seconds else [])
        effect = pool.apply(reliability_effect) if not arguments.skip_reliability else None
    summary = summarize(results)
    seconds = time.perf_counter() - started
    logger.info("Finished %d runs in %.0f s", len(jobs), seconds)

    if arguments.output:
        CHART_PATH.write_text(render_chart(summary))
        batch_seeds = set(SEEDS[:arguments.batch_seeds])
        on_batch_seeds = {
            name: mean_of(at_arrived(result, 100, "unallocated") for result in results
                          if result["policy"] == name and result["seed"] in batch_seeds)
            for name in ("fgd", BEST_ONLINE)
        }
        markdown = render(summary, arguments.seeds, arguments.random_ties, seconds, bound, on_batch_seeds)
        if comparisons:
            markdown += "\n\n" + render_comparison(comparisons, arguments.compare_seconds)
        if effect is not None:
            markdown += "\n\n" + render_reliability(effect)
        write_section(arguments.output, "placement", markdown)
    figures = {name: {key: row[key] for key in ("unallocated_pct_at_100", "unallocated_pct_at_130", "ms_per_decision")}
               for name, row in summary.items()}
    batch_figures = {f"batch_at_{item['load_pct']}": {name: {key: row[key] for key in ("placed", "weighted", "seconds")}
                                                      for name, row in item["rows"].items()} for item in comparisons}
    reliability = {"reliability": effect["rows"]} if effect is not None else {}
    print(json.dumps({**figures, "lower_bound_pct_at_100": round(bound, 2), **batch_figures, **reliability}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
