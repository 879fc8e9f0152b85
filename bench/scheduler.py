"""Scheduling-cycle benchmark: 10,000 waiting requests on the trace fleet, preemption search included.

Setup, per seed: the 1,213 GPU nodes of the Alibaba trace run work drawn from the trace's pod list
until 85 % of their GPU milli is taken (priorities low 50 %, standard 40 %, high 10 %; a third of
it interruptible, so it may be preempted; each piece of work ends 1 to 24 hours from now and has
run 0 to 6 hours). Then 10,000 requests drawn from the same pod list wait (low 40 %, standard
45 %, high 15 %, runs of 1 to 12 hours, 20 organizations with random recent usage); standard and
high may preempt. One cycle of ``scheduler.core.run_cycle`` decides them all with the default
online policy (``fgd_best_fit``), the preemption search, estimated starts for the first 100
blocked requests, and no limit on placements per cycle. CP-SAT is on as in the product, but each
priority has thousands of ready requests, above its 100-request limit, so the cycle places in order.

Reported per seed and as the median: the cycle's wall time, placements per second of cycle
time, preemptions proposed, and priority inversions (a waiting request that a lower-priority
request placed in the same cycle could have made room for). Run with ``make bench-scheduler``.
"""

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from allocation.solvers.base import PlacementRequest
from allocation.solvers.online import policy_by_name
from bench.placement import load_fleet, load_tasks, target_workload
from bench.report import machine_description, write_section
from scheduler.core import Booking, CycleConfig, Running, Timeline, Waiting, priority_inversions, run_cycle

SEEDS = (1, 2, 3)
WAITING = 10_000
RUNNING_SHARE = 0.85
ORGANIZATIONS = 20
HOUR = 3600.0
PRIORITIES = {"low": 100, "standard": 500, "high": 1000}
TARGET_SECONDS = 2.0
DEFAULT_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"

logger = logging.getLogger("bench.scheduler")


def scenario(seed: int):
    """Return the timeline, running work and waiting requests of one seed."""
    random = np.random.default_rng(seed)
    fleet = load_fleet()
    tasks = load_tasks()
    capacity_milli = int(fleet.gpu_free.sum())
    scratch = fleet.copy()
    policy = policy_by_name("best_fit")
    running, taken, key = [], 0, 1_000_000
    while taken < RUNNING_SHARE * capacity_milli:
        task = tasks[int(random.integers(len(tasks)))]
        request = task.request
        rows = scratch.feasible(request)
        if rows.size == 0:
            break
        evaluation = policy.evaluate(scratch, None, request, rows)
        best = int(np.argmax(evaluation.scores))
        row, columns = int(evaluation.rows[best]), tuple(int(c) for c in evaluation.columns[best])
        scratch.take(row, columns, request)
        taken += request.gpu_milli_total
        priority = random.choice(list(PRIORITIES.values()), p=[0.5, 0.4, 0.1])
        elapsed = float(random.uniform(0, 6 * HOUR))
        booking = Booking(key=key, row=row, columns=columns, gpu_milli_per_gpu=task.gpu_milli if columns else 0,
                          cpu_millicores=task.cpu, memory_mib=task.memory, start=-elapsed,
                          end=float(random.uniform(1, 24)) * HOUR)
        running.append(Running(booking=booking, organization=int(random.integers(ORGANIZATIONS)),
                               priority=int(priority), preemptible=bool(random.random() < 1 / 3) and priority < 1000,
                               elapsed=elapsed, protected_for=float(random.choice([0.0, 0.0, 600.0])) - elapsed))
        key += 1

    waiting = []
    for index in range(WAITING):
        task = tasks[int(random.integers(len(tasks)))]
        priority = int(random.choice(list(PRIORITIES.values()), p=[0.4, 0.45, 0.15]))
        waiting.append(Waiting(
            key=index, organization=int(random.integers(ORGANIZATIONS)),
            request=PlacementRequest(gpu_count=task.gpu_count, gpu_milli_per_gpu=task.gpu_milli,
                                     cpu_millicores=task.cpu, memory_mib=task.memory),
            duration=float(random.integers(1, 13)) * HOUR, priority=priority, submitted=float(index),
            can_preempt=priority >= PRIORITIES["standard"],
        ))
    usage = {org: tuple(float(x) for x in random.uniform(0, 1, size=3) * [2e5, 2e6, 8e6])
             for org in range(ORGANIZATIONS)}
    return fleet, running, waiting, usage, tasks


def run(seed: int) -> dict:
    fleet, running, waiting, usage, tasks = scenario(seed)
    policy = policy_by_name("fgd_best_fit", workload=target_workload(tasks))
    started = time.perf_counter()
    timeline = Timeline(fleet, [work.booking for work in running])
    build_seconds = time.perf_counter() - started
    config = CycleConfig(reserve_depth=100, max_preemptions=10, batch_solver=True, batch_max_requests=100)
    result = run_cycle(timeline, waiting, running, policy, usage=usage, config=config)
    cycle_seconds = build_seconds + result.seconds
    inversions = priority_inversions(result.placed, result.waiting, waiting, timeline)
    negative = int((timeline.gpu_free < 0).sum() + (timeline.cpu_free < 0).sum() + (timeline.memory_free < 0).sum())
    codes = {}
    for decision in result.waiting:
        codes[decision.reason_code] = codes.get(decision.reason_code, 0) + 1
    summary = {
        "seed": seed, "running": len(running), "timeline_rows": timeline.rows, "cycle_seconds": round(cycle_seconds, 3),
        "timeline_seconds": round(build_seconds, 3), "placed": len(result.placed),
        "backfilled": sum(1 for placed in result.placed if placed.backfilled),
        "placements_per_second": round(len(result.placed) / cycle_seconds, 1),
        "preemptions": len(result.preemptions), "priority_inversions": inversions, "overcommitted_cells": negative,
        "waiting_reasons": codes,
    }
    logger.info("seed %d: %s", seed, json.dumps(summary))
    return summary


def render(results: list[dict], database: dict | None = None) -> str:
    median = lambda key: statistics.median(result[key] for result in results)  # noqa: E731
    lines = [
        "## Scheduling cycle",
        "",
        f"Command: `make bench-scheduler` (`python -m bench.scheduler --output docs/benchmarks.md`). "
        f"Machine: {machine_description()}.",
        "",
        "One cycle of `scheduler.core.run_cycle` over 10,000 waiting requests drawn from the Alibaba pod list, on "
        "the trace's 1,213 GPU nodes with 85 % of their GPU milli held by running work of mixed priorities. It "
        "includes building the timeline, ordering by priority and fair share, placing with `fgd_best_fit`, "
        "holding estimated starts for the first 100 blocked requests, backfill and the preemption search "
        "(at most 10 proposals). It excludes the database: reading the queue and writing the decisions.",
        "",
        "| seed | running | cycle (s) | placed | backfilled | placements/s | preemptions | priority inversions |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        lines.append(f"| {result['seed']} | {result['running']} | {result['cycle_seconds']:.3f} | {result['placed']} | "
                     f"{result['backfilled']} | {result['placements_per_second']:.0f} | {result['preemptions']} | "
                     f"{result['priority_inversions']} |")
    lines += [
        "",
        f"Median cycle: {median('cycle_seconds'):.3f} s (target: {TARGET_SECONDS:.0f} s or less); "
        f"priority inversions: {sum(r['priority_inversions'] for r in results)} in all (target: 0). "
        f"Why the last seed's requests wait: {json.dumps(results[-1]['waiting_reasons'])}.",
    ]
    if database:
        from bench.scheduler_database import WAITING as DATABASE_WAITING

        lines += [
            "",
            f"End to end on PostgreSQL (`--database`): the same fleet with {database['running']} running reservations "
            f"and {DATABASE_WAITING:,} queued ones. Each call of `scheduling_cycle` reads the queue, the fleet and "
            "the bookings, decides, places at most 200 reservations through the reservation service's quota, budget "
            "and placement checks, and writes every waiting reservation's position, reason and estimated start, in "
            "one transaction.",
            "",
            "| cycle | waiting | placed | preemptions | decisions (s) | whole cycle (s) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for number, cycle in enumerate(database["cycles"], start=1):
            lines.append(f"| {number} | {cycle['waiting']} | {cycle['placed']} | {cycle['preemptions']} | "
                         f"{cycle['decide_seconds']:.3f} | {cycle['seconds']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="Markdown file whose scheduler section is replaced with the results")
    parser.add_argument("--seeds", type=int, nargs="*", default=list(SEEDS))
    parser.add_argument("--database", nargs="?", const=DEFAULT_ADMIN_URL, default=None, metavar="ADMIN_URL",
                        help="Also time the cycle end to end on PostgreSQL; ADMIN_URL may create databases "
                             f"(default {DEFAULT_ADMIN_URL}).")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    results = [run(seed) for seed in arguments.seeds]
    database = None
    if arguments.database:
        from bench.scheduler_database import run as run_on_database

        database = run_on_database(arguments.database)
        logger.info("database: %s", json.dumps(database))
    if arguments.output:
        write_section(arguments.output, "scheduler", render(results, database))
    print(json.dumps({
        "cycle_seconds": statistics.median(result["cycle_seconds"] for result in results),
        "placements_per_second": statistics.median(result["placements_per_second"] for result in results),
        "priority_inversions": sum(result["priority_inversions"] for result in results),
        "preemptions": statistics.median(result["preemptions"] for result in results),
        "placed": statistics.median(result["placed"] for result in results),
        "waiting": WAITING,
        "nodes": 1213,
        **({"database": database} if database else {}),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
