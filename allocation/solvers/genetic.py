"""A seeded genetic algorithm for batch placement with several objectives at once.

Where CP-SAT (``batch.py``) optimises one weighted objective, this search keeps a population of
plans and returns the plans that no other plan beats on every objective (the Pareto front):

- placed value, priority-weighted GPU milli as in ``batch.py`` (higher is better);
- price per hour in hundredths of the currency (lower);
- the fragmentation proxy of ``batch.py``: whole GPUs and idle nodes newly used (lower);
- concentration: the largest share of the placed GPU milli on any one provider (lower), so
  that one provider's outage hits less of the batch.

A plan is a gene per request: which of its candidate nodes to try first, or none. Candidate 0 is
the node of the online policy's one-by-one plan, and the others are its best few on the starting state. Decoding
walks the requests in order on a scratch copy of the free capacity; a request whose chosen node
no longer fits tries its other candidates, best first, so every decoded plan is feasible. The
search is NSGA-II in outline: tournament selection on front rank and crowding distance, uniform
crossover, per-gene mutation, and elitist survival. The same seed gives the same plans.
"""

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .batch import (
    OPENED_GPU_COST, OPENED_NODE_COST, PLACED_WEIGHT, BatchRequest, allowed_rows, greedy_plan, placed_value, price_cents,
)
from .fleet import Fleet
from .online import OnlinePolicy

logger = logging.getLogger(__name__)

OBJECTIVES = ("value", "price_cents", "opened", "concentration")
"""Objective names in the order of ``GeneticPlan.objectives``; the first is maximised, the others minimised."""


@dataclass
class GeneticPlan:
    """One plan of the front: ``assignments`` as in ``BatchPlan`` and its objective values."""

    assignments: dict[int, tuple[int, tuple[int, ...]]]
    objectives: tuple[float, float, float, float]

    def weighted(self) -> float:
        """Return the plan's score under ``batch.py``'s weights, for comparison with CP-SAT."""
        value, price, opened, _concentration = self.objectives
        return PLACED_WEIGHT * value - price - opened


@dataclass
class GeneticResult:
    front: list[GeneticPlan]
    generations: int
    wall_seconds: float
    stopped_by_time: bool = False
    """True when the time limit, not the generation count, ended the search."""

    def best_weighted(self) -> GeneticPlan:
        """Return the front's plan with the best ``batch.py`` score."""
        return max(self.front, key=lambda plan: plan.weighted())


class _Decoder:
    """A decoder of genes into feasible assignments, on a copy of the starting free capacity."""

    def __init__(self, fleet: Fleet, requests: Sequence[BatchRequest], candidates: list[list[int]],
                 provider: np.ndarray):
        self.fleet, self.requests, self.candidates, self.provider = fleet, requests, candidates, provider
        self.cpu = fleet.cpu_free.tolist()
        self.memory = fleet.memory_free.tolist()
        self.gpus = fleet.gpu_free.tolist()
        self.whole = (fleet.gpu_free == 1000).tolist()
        self.idle = ((fleet.gpu_free == 1000).sum(axis=1) == fleet.gpu_count) & (fleet.cpu_free == fleet.cpu_capacity)

    def decode(self, genes: np.ndarray) -> GeneticPlan:
        cpu, memory, gpus = {}, {}, {}
        assignments = {}
        for index, gene in enumerate(genes.tolist()):
            options = self.candidates[index]
            if gene < 0 or not options:
                continue
            request = self.requests[index].request
            for row in [options[gene]] + [option for option in options if option != options[gene]]:
                columns = self._fit(row, request, cpu, memory, gpus)
                if columns is not None:
                    assignments[index] = (row, columns)
                    break
        return GeneticPlan(assignments=assignments, objectives=self._objectives(assignments))

    def _fit(self, row, request, cpu, memory, gpus):
        free_cpu = cpu.get(row, self.cpu[row])
        free_memory = memory.get(row, self.memory[row])
        if free_cpu < request.cpu_millicores or free_memory < request.memory_mib:
            return None
        free = gpus.get(row)
        if free is None:
            free = list(self.gpus[row])
        fitting = sorted((milli, column) for column, milli in enumerate(free) if milli >= request.gpu_milli_per_gpu)
        if request.gpu_count and len(fitting) < request.gpu_count:
            return None
        columns = tuple(sorted(column for _, column in fitting[: request.gpu_count])) if request.gpu_count else ()
        for column in columns:
            free[column] -= request.gpu_milli_per_gpu
        gpus[row] = free
        cpu[row] = free_cpu - request.cpu_millicores
        memory[row] = free_memory - request.memory_mib
        return columns

    def _objectives(self, assignments) -> tuple[float, float, float, float]:
        return plan_objectives(self.fleet, self.requests, assignments, self.provider, whole=self.whole,
                               idle=self.idle)


def plan_objectives(fleet: Fleet, requests: Sequence[BatchRequest], assignments: dict, provider: np.ndarray, *,
                    whole=None, idle=None) -> tuple[float, float, float, float]:
    """Return a plan's objectives in ``OBJECTIVES`` order, so plans of any solver are measured alike.

    ``whole`` and ``idle`` (which GPUs and nodes were free at the start) are derived from ``fleet``
    unless a caller that scores many plans passes them in.
    """
    if whole is None:
        whole = (fleet.gpu_free == 1000).tolist()
    if idle is None:
        idle = ((fleet.gpu_free == 1000).sum(axis=1) == fleet.gpu_count) & (fleet.cpu_free == fleet.cpu_capacity)
    value = price = 0
    opened_gpus, opened_nodes, by_provider = set(), set(), {}
    for index, (row, columns) in assignments.items():
        item = requests[index]
        value += placed_value(item)
        price += price_cents(fleet, row, item)
        opened_gpus.update((row, column) for column in columns if whole[row][column])
        if idle[row]:
            opened_nodes.add(row)
        owner = int(provider[row])
        by_provider[owner] = by_provider.get(owner, 0) + item.request.gpu_milli_total

    placed = sum(by_provider.values())
    concentration = max(by_provider.values()) / placed if placed else 0.0
    opened = OPENED_GPU_COST * len(opened_gpus) + OPENED_NODE_COST * len(opened_nodes)
    return float(value), float(price), float(opened), float(concentration)


def _signed(objectives: np.ndarray) -> np.ndarray:
    """Return the objectives with every column to be minimised."""
    signed = objectives.copy()
    signed[:, 0] = -signed[:, 0]
    return signed


def pareto_ranks(objectives: np.ndarray) -> np.ndarray:
    """Return each row's non-dominated front number, 0 for the best front (all columns minimised)."""
    count = len(objectives)
    ranks = np.full(count, -1)
    remaining = np.arange(count)
    front = 0
    while remaining.size:
        block = objectives[remaining]
        dominated = np.zeros(remaining.size, dtype=bool)
        for position in range(remaining.size):
            better_or_equal = (block <= block[position]).all(axis=1)
            strictly_better = (block < block[position]).any(axis=1)
            dominated[position] = (better_or_equal & strictly_better).any()
        ranks[remaining[~dominated]] = front
        remaining = remaining[dominated]
        front += 1
    return ranks


def crowding(objectives: np.ndarray) -> np.ndarray:
    """Return each row's crowding distance within its set; the extremes get infinity."""
    count, width = objectives.shape
    distance = np.zeros(count)
    for column in range(width):
        order = np.argsort(objectives[:, column], kind="stable")
        span = objectives[order[-1], column] - objectives[order[0], column]
        distance[order[0]] = distance[order[-1]] = np.inf
        if span > 0 and count > 2:
            distance[order[1:-1]] += (objectives[order[2:], column] - objectives[order[:-2], column]) / span
    return distance


def genetic_place(
    fleet: Fleet, requests: Sequence[BatchRequest], policy: OnlinePolicy, *, seed: int = 0,
    population: int = 40, generations: int = 60, time_limit_seconds: float | None = None,
    candidates_per_request: int = 8, mutation_rate: float | None = None, provider: np.ndarray | None = None,
) -> GeneticResult:
    """Search plans for ``requests`` and return the Pareto front; ``fleet`` is not changed.

    ``provider`` gives each fleet row's provider index (every node its own provider when None).
    The search stops after ``generations`` or ``time_limit_seconds``, whichever comes first. The
    first generation contains the online policy's one-by-one plan, which survives unless beaten. Raises
    ``ValueError`` for a population under 4 or a negative generation count.
    """
    if population < 4 or generations < 0:
        raise ValueError(f"population is {population} and generations {generations}; use at least 4 and 0.")
    if time_limit_seconds is not None and not 0 < time_limit_seconds < float("inf"):
        raise ValueError(f"time_limit_seconds is {time_limit_seconds}; pass a positive, finite number or None.")
    if provider is not None and len(provider) != fleet.size:
        raise ValueError(f"provider has {len(provider)} entries for {fleet.size} nodes; pass one per fleet row.")
    for index, item in enumerate(requests):
        if item.priority < 1:
            raise ValueError(f"Request {index} has priority {item.priority}; priorities are positive integers.")
    started = time.perf_counter()
    random = np.random.default_rng(seed)
    provider = np.arange(fleet.size) if provider is None else np.asarray(provider)

    greedy = greedy_plan(fleet, requests, policy)
    state = policy.prepare(fleet)
    candidates = []
    for index, item in enumerate(requests):
        rows = fleet.feasible(item.request, allowed_rows(fleet, item))
        if rows.size == 0:
            candidates.append([])
            continue
        scores = policy.evaluate(fleet, state, item.request, rows).scores
        ranked = rows[np.argsort(-scores, kind="stable")[:candidates_per_request]].tolist()
        first = [greedy[index][0]] if index in greedy else []
        candidates.append(first + [row for row in ranked if row not in first])
    decoder = _Decoder(fleet, requests, candidates, provider)
    sizes = np.array([len(options) for options in candidates])
    rate = mutation_rate if mutation_rate is not None else 1.0 / max(len(requests), 1)

    # Gene 0 is the node of the policy's one-by-one plan, so the all-zero genome decodes to that plan.
    genomes = [np.zeros(len(requests), dtype=np.int64)]
    while len(genomes) < population:
        genomes.append(_random_genes(random, sizes))
    plans = [decoder.decode(genes) for genes in genomes]

    generation, stopped_by_time = 0, False
    if not sizes.any():
        generations = 0  # no request fits anywhere, so every plan is the empty plan
    while generation < generations:
        if time_limit_seconds is not None and time.perf_counter() - started > time_limit_seconds:
            stopped_by_time = True
            break
        objectives = _signed(np.array([plan.objectives for plan in plans]))
        ranks, distance = pareto_ranks(objectives), crowding(objectives)
        children = []
        while len(children) < population:
            first = _tournament(random, ranks, distance)
            second = _tournament(random, ranks, distance)
            mask = random.random(len(requests)) < 0.5
            child = np.where(mask, genomes[first], genomes[second])
            mutate = random.random(len(requests)) < rate
            child = np.where(mutate, _random_genes(random, sizes), child)
            children.append(child)
        genomes, plans = _survivors(genomes + children, plans + [decoder.decode(child) for child in children],
                                    population)
        generation += 1

    objectives = _signed(np.array([plan.objectives for plan in plans]))
    ranks = pareto_ranks(objectives)
    front, seen = [], set()
    for position in np.flatnonzero(ranks == 0):
        key = tuple(sorted(plans[position].assignments.items()))
        if key not in seen:
            seen.add(key)
            front.append(plans[position])
    result = GeneticResult(front=front, generations=generation, wall_seconds=time.perf_counter() - started,
                           stopped_by_time=stopped_by_time)
    logger.info("Genetic placement of %d requests: %d generations, %d plans on the front, %.2f s", len(requests),
                generation, len(front), result.wall_seconds)
    return result


def _random_genes(random: np.random.Generator, sizes: np.ndarray) -> np.ndarray:
    """Return a random gene per request: a candidate index, or -1 (leave out) one time in ten."""
    genes = np.floor(random.random(sizes.size) * np.maximum(sizes, 1)).astype(np.int64)
    genes[random.random(sizes.size) < 0.1] = -1
    return genes


def _tournament(random: np.random.Generator, ranks: np.ndarray, distance: np.ndarray) -> int:
    first, second = random.integers(len(ranks), size=2)
    if ranks[first] != ranks[second]:
        return int(first if ranks[first] < ranks[second] else second)
    return int(first if distance[first] >= distance[second] else second)


def _survivors(genomes: list, plans: list, population: int) -> tuple[list, list]:
    """Keep the best ``population`` by front rank, then crowding distance within the last front taken."""
    objectives = _signed(np.array([plan.objectives for plan in plans]))
    ranks = pareto_ranks(objectives)
    chosen = []
    for front in range(int(ranks.max()) + 1):
        members = np.flatnonzero(ranks == front)
        if len(chosen) + members.size <= population:
            chosen.extend(members.tolist())
            continue
        distance = crowding(objectives[members])
        order = members[np.argsort(-distance, kind="stable")]
        chosen.extend(order[: population - len(chosen)].tolist())
        break
    return [genomes[index] for index in chosen], [plans[index] for index in chosen]
