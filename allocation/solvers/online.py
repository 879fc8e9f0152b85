"""Online scoring policies: score every feasible node for one request, higher is better.

Each policy scores on a 0-100 scale, as Kubernetes scheduler plugins do, and chooses the GPUs it
would take on each node. The reservation service calls ``rank`` on a shortlist of ``NodeState``
rows. The placement benchmark calls ``evaluate`` on the whole fleet, and keeps per-fleet state
(FGD's fragmentation counts) between decisions through ``prepare`` and ``placed``.

Policies, from their published definitions:

- ``random``: a uniformly random feasible node.
- ``best_fit``: the least leftover, 0.5 * (CPU free - request) / largest CPU capacity
  + 0.5 * (GPU free - request) / largest GPU capacity.
- ``dot_product``: Tetris alignment, the node whose free CPU and GPU vector has the smallest dot
  product with the request's.
- ``gpu_packing``: partly used GPUs first (fullest first), then free GPUs on used nodes, then
  empty nodes.
- ``fgd``: fragmentation gradient descent, the placement that most reduces (or least grows) the
  node's fragmentation against the target workload, scored sigmoid(drop / 1000) * 100.
- ``fgd_best_fit`` (ours): FGD's integer score, with best fit's score breaking its ties.
- ``gap_squares`` (ours): ``fgd_best_fit`` with a penalty for GPUs left without CPU, and shares
  of one GPU packed by the sum of squared counts of each gap size.
- ``gap_squares_waste`` (ours): ``gap_squares`` with a cost for the milli of a gap that no sum of
  typical shares can fill.
"""

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .base import GPU_MILLI_PER_GPU, NodeState, Placement, PlacementRequest
from .fleet import Fleet
from .fragmentation import FragmentationTracker, TargetWorkload

@dataclass
class Evaluation:
    """Scores of the feasible rows (higher is better) and the GPU columns each would take, shape (k, gpu_count)."""

    rows: np.ndarray
    scores: np.ndarray
    columns: np.ndarray


def tightest_columns(fleet: Fleet, rows: np.ndarray, request: PlacementRequest) -> np.ndarray:
    """Return (k, gpu_count): on each row, the fitting GPUs with the least free milli, lower column on ties."""
    if request.gpu_count == 0:
        return np.zeros((len(rows), 0), dtype=np.int64)
    free = fleet.gpu_free[rows]
    masked = np.where(free >= request.gpu_milli_per_gpu, free, np.iinfo(np.int64).max)
    return np.argsort(masked, axis=1, kind="stable")[:, : request.gpu_count]


def distinct_free_columns(fleet: Fleet, rows: np.ndarray, milli: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the GPUs of ``rows`` that can take a ``milli`` share, one per (row, free milli) pair.

    GPUs of one node with the same free milli are equivalent for a one-GPU share, so only the
    lowest such column is kept. Returns (position in ``rows``, column, free milli), sorted by
    position and then free milli.
    """
    free = fleet.gpu_free[rows]
    position, column = np.nonzero(free >= milli)
    before = free[position, column]
    _, first = np.unique(position * (2 * GPU_MILLI_PER_GPU + 1) + before, return_index=True)
    return position[first], column[first], before[first]


class OnlinePolicy:
    """Base of the scoring policies; subclasses implement ``evaluate``."""

    name = ""
    normalizes = False
    """Whether the Kubernetes plugin rescales its integer scores to 0-100 over the feasible nodes."""
    integer_scores = True
    """Whether the scheduler framework cuts the score to an integer; the benchmark's protocol mode applies it."""

    def prepare(self, fleet: Fleet) -> Any:
        """Return the state this policy keeps for ``fleet`` between decisions (None by default)."""
        return None

    def placed(self, state: Any, row: int) -> None:
        """Update ``state`` after the fleet's node ``row`` changed."""

    def evaluate(self, fleet: Fleet, state: Any, request: PlacementRequest, rows: np.ndarray) -> Evaluation:
        raise NotImplementedError

    def rank(self, request: PlacementRequest, nodes: Sequence[NodeState]) -> list[Placement]:
        """Return a placement on every node that can hold ``request``, best first.

        Ties go to the cheaper node, then the lower node id. ``Placement.score`` is the negated
        policy score, so lower is better as the service expects.
        """
        if not nodes:
            return []
        fleet = Fleet.from_states(nodes)
        rows = fleet.feasible(request)
        if rows.size == 0:
            return []
        evaluation = self.evaluate(fleet, self.prepare(fleet), request, rows)
        order = np.lexsort((fleet.node_ids[evaluation.rows], fleet.price[evaluation.rows], -evaluation.scores))
        placements = []
        for position in order:
            row = int(evaluation.rows[position])
            shares = tuple(sorted(
                (int(fleet.gpu_ids[row, column]), request.gpu_milli_per_gpu) for column in evaluation.columns[position]
            ))
            placements.append(Placement(node_id=int(fleet.node_ids[row]), gpu_shares=shares,
                                        score=-float(evaluation.scores[position])))
        return placements


class RandomPolicy(OnlinePolicy):
    name = "random"
    integer_scores = False

    def __init__(self, seed: int | None = None):
        self.random = np.random.default_rng(seed)

    def evaluate(self, fleet, state, request, rows):
        return Evaluation(rows, self.random.random(len(rows)) * 100, tightest_columns(fleet, rows, request))


def leftover_fraction(fleet: Fleet, request: PlacementRequest, rows: np.ndarray) -> np.ndarray:
    """Return best fit's leftover, in [0, 1]: CPU and GPU left after placing, over the largest capacities."""
    largest_cpu = max(int(fleet.cpu_capacity.max()), 1)
    largest_gpu = fleet.width * GPU_MILLI_PER_GPU
    cpu_left = (fleet.cpu_free[rows] - request.cpu_millicores) / largest_cpu
    gpu_left = (fleet.gpu_free[rows].sum(axis=1) - request.gpu_milli_total) / largest_gpu
    return 0.5 * cpu_left + 0.5 * gpu_left


class BestFitPolicy(OnlinePolicy):
    name = "best_fit"
    normalizes = True

    def evaluate(self, fleet, state, request, rows):
        scores = (1.0 - leftover_fraction(fleet, request, rows)) * 100
        return Evaluation(rows, scores, tightest_columns(fleet, rows, request))


class DotProductPolicy(OnlinePolicy):
    name = "dot_product"

    def evaluate(self, fleet, state, request, rows):
        columns = tightest_columns(fleet, rows, request)
        largest_cpu = max(int(fleet.cpu_capacity.max()), 1)
        largest_gpu = fleet.width * GPU_MILLI_PER_GPU
        cpu = (fleet.cpu_free[rows] / largest_cpu) * (request.cpu_millicores / largest_cpu)
        gpu = (fleet.gpu_free[rows].sum(axis=1) / largest_gpu) * (request.gpu_milli_total / largest_gpu)
        scores = (1.0 - (cpu + gpu) / 2) * 100
        return Evaluation(rows, scores, columns)


class GpuPackingPolicy(OnlinePolicy):
    name = "gpu_packing"

    def evaluate(self, fleet, state, request, rows):
        columns = tightest_columns(fleet, rows, request)
        free = fleet.gpu_free[rows]
        exists = np.arange(fleet.width)[None, :] < fleet.gpu_count[rows][:, None]
        whole = ((free == GPU_MILLI_PER_GPU) & exists).sum(axis=1)
        count = np.maximum(fleet.gpu_count[rows], 1)
        used_node = (whole < fleet.gpu_count[rows]) | (fleet.cpu_free[rows] < fleet.cpu_capacity[rows])

        third = 100 / 3
        scores = np.where(used_node, third + third * (1 - whole / count), third * (1 - count / fleet.width))
        if request.gpu_count == 1 and request.gpu_milli_per_gpu < GPU_MILLI_PER_GPU:
            chosen_free = np.take_along_axis(free, columns, axis=1)[:, 0]
            partial = chosen_free < GPU_MILLI_PER_GPU
            fullness = 1 - chosen_free / GPU_MILLI_PER_GPU
            scores = np.where(partial, 2 * third + third * fullness, scores)
        return Evaluation(rows, scores, columns)


class FgdPolicy(OnlinePolicy):
    """Fragmentation gradient descent against a target workload of typical shapes."""

    name = "fgd"

    def __init__(self, workload: TargetWorkload):
        self.workload = workload

    def prepare(self, fleet):
        return FragmentationTracker(fleet, self.workload)

    def placed(self, state, row):
        state.refresh(row)

    def fragment_drop(self, fleet: Fleet, tracker: FragmentationTracker, request: PlacementRequest,
                      rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return each row's best drop of F_n(M) in milli and the columns that achieve it.

        A share may go on any GPU that fits; GPUs of one node with the same free milli are
        equivalent, so each (node, free milli) pair is evaluated once and ties go to the lower column.
        """
        if request.gpu_count == 1 and request.gpu_milli_per_gpu < GPU_MILLI_PER_GPU:
            position, column, before = distinct_free_columns(fleet, rows, request.gpu_milli_per_gpu)
            after = tracker.fragment_after(rows[position], request.cpu_millicores, before[:, None],
                                           request.gpu_milli_per_gpu)
            drop = tracker.node_fragment[rows[position]] - after
            order = np.lexsort((column, -drop, position))
            best = order[np.r_[True, position[order][1:] != position[order][:-1]]]
            return drop[best], column[best][:, None]

        columns = tightest_columns(fleet, rows, request)
        before = np.take_along_axis(fleet.gpu_free[rows], columns, axis=1)
        after = tracker.fragment_after(rows, request.cpu_millicores, before, request.gpu_milli_per_gpu)
        return tracker.node_fragment[rows] - after, columns

    def evaluate(self, fleet, state, request, rows):
        drop, columns = self.fragment_drop(fleet, state, request, rows)
        scores = 100 / (1 + np.exp(-drop / GPU_MILLI_PER_GPU))
        return Evaluation(rows, scores, columns)


class FgdBestFitPolicy(FgdPolicy):
    """Ours: FGD's integer score first, best fit's score breaking its ties.

    FGD's score, sigmoid(drop / 1000) * 100 cut to an integer, treats drops within about 40 milli
    of each other as equal. Among those near-equal nodes the scheduler framework takes the first
    one it meets; here the node that best fit prefers wins. On the FGD protocol this
    leaves fewer GPUs unallocated than FGD (``make bench-placement``). Ranking on the unrounded
    drop instead does much worse (about 11 % unallocated at 100 % arrived on seed 42): the
    rounding is what lets a packing tie-breaker act, so it is kept on purpose.
    """

    name = "fgd_best_fit"
    integer_scores = False

    def evaluate(self, fleet, state, request, rows):
        drop, columns = self.fragment_drop(fleet, state, request, rows)
        fgd_score = np.floor(100 / (1 + np.exp(-drop / GPU_MILLI_PER_GPU)))
        best_fit_score = (1.0 - leftover_fraction(fleet, request, rows)) * 100
        return Evaluation(rows, fgd_score * 1000 + best_fit_score, columns)


class GapCounts:
    """FGD's fragmentation tracker plus how many GPUs of the fleet have each amount of free milli.

    ``counts[g]`` is the number of GPUs with exactly ``g`` milli free, 0 to 1000. The columns past
    a node's GPU count are not GPUs and are left out.
    """

    def __init__(self, fleet: Fleet, workload: TargetWorkload):
        self.fleet = fleet
        self.tracker = FragmentationTracker(fleet, workload)
        self.exists = np.arange(fleet.width)[None, :] < fleet.gpu_count[:, None]
        self.counted_free = fleet.gpu_free.copy()
        self.counts = np.bincount(fleet.gpu_free[self.exists], minlength=GPU_MILLI_PER_GPU + 1).astype(np.int64)

    def refresh(self, row: int) -> None:
        """Recount node ``row`` after a change to its free capacity."""
        self.tracker.refresh(row)
        exists = self.exists[row]
        np.subtract.at(self.counts, self.counted_free[row][exists], 1)
        self.counted_free[row] = self.fleet.gpu_free[row]
        np.add.at(self.counts, self.counted_free[row][exists], 1)


class GapSquaresPolicy(FgdPolicy):
    """Ours: FGD with a CPU stranding penalty, and one-GPU shares packed by a sum of squared gap counts.

    Two changes to ``fgd_best_fit``, each aimed at what it leaves unallocated at 100 % arrived:

    - CPU strands GPUs. GPU tasks of the target workload request about ``cpu_per_gpu`` millicores
      per whole GPU (11 cores on the bundled trace), and the bundled pod list requests 80 % of
      the fleet's CPU. A node whose free CPU falls short of its free GPUs times ``cpu_per_gpu`` has
      GPUs that few tasks can use. For every request, the increase of that shortfall, in GPUs,
      times 1000 is taken off FGD's drop before the sigmoid, so placements that strand GPUs lose.
    - Shares of one GPU (less than 1000 milli) are packed as bins of size 1000. A gap is the free
      milli of a partly used GPU, counted when a typical share could still use it (at least the
      smallest typical share, below 1000). Among the GPUs that can take the share, the one that
      least increases the sum over gap sizes of the squared number of GPUs with that gap wins.
      That fills common gaps first and avoids creating gaps that are already plentiful, such as
      the 190 milli that each 810-milli share leaves. FGD's integer score (with the penalty)
      breaks ties, then best fit.

    Requests of whole GPUs and CPU-only requests are ranked like ``fgd_best_fit``, with the penalty.
    On the FGD protocol (``python -m bench.placement``, seeds 42-51) this leaves 4.11 %
    unallocated at 100 % arrived and 4.01 % at 130 %, against 4.78 % and 4.60 % for
    ``fgd_best_fit``. The penalty alone leaves 4.23 % at 100 %. Counting only gaps on nodes with
    CPU left for a share did worse (4.26 % against 4.11 % on seeds 42-46).

    NOTE: the gap counts are statistics of the fleet that ``prepare`` gets. The benchmark passes
    the whole fleet; the reservation service's ``rank`` passes a shortlist of about 30 nodes, so
    there the counts cover only the shortlist. The service's default stays ``fgd_best_fit`` until
    this policy is measured in that setting.
    """

    name = "gap_squares"
    integer_scores = False

    def __init__(self, workload: TargetWorkload):
        super().__init__(workload)
        gpu_shapes = [(shape, weight) for shape, weight in zip(workload.shapes, workload.weights)
                      if shape.gpu_count > 0]
        gpu_volume = sum(weight * shape.gpu_count * shape.gpu_milli_per_gpu for shape, weight in gpu_shapes)
        cpu = sum(weight * shape.cpu_millicores for shape, weight in gpu_shapes)
        self.cpu_per_gpu = cpu * GPU_MILLI_PER_GPU / gpu_volume if gpu_volume > 0 and cpu > 0 else None
        """Millicores that the target workload's GPU tasks request per whole GPU, or None to disable the penalty."""
        shares = [shape.gpu_milli_per_gpu for shape, _ in gpu_shapes
                  if shape.gpu_count == 1 and shape.gpu_milli_per_gpu < GPU_MILLI_PER_GPU]
        self.smallest_share = min(shares, default=GPU_MILLI_PER_GPU)
        """Free milli below this is a closed gap that no typical share can use."""

    def prepare(self, fleet):
        return GapCounts(fleet, self.workload)

    def placed(self, state, row):
        state.refresh(row)

    def stranded_increase(self, fleet: Fleet, rows: np.ndarray, request: PlacementRequest) -> np.ndarray:
        """Return, per row, how much the node's CPU shortfall grows when it takes ``request``, in GPUs.

        The shortfall is free GPUs minus free CPU over ``cpu_per_gpu``, or 0 when that is negative.
        Rows must be able to hold the request.
        """
        if self.cpu_per_gpu is None:
            return np.zeros(len(rows))
        gpu_before = fleet.gpu_free[rows].sum(axis=1) / GPU_MILLI_PER_GPU
        gpu_after = gpu_before - request.gpu_milli_total / GPU_MILLI_PER_GPU
        cpu_before = fleet.cpu_free[rows] / self.cpu_per_gpu
        cpu_after = (fleet.cpu_free[rows] - request.cpu_millicores) / self.cpu_per_gpu
        return np.maximum(gpu_after - cpu_after, 0) - np.maximum(gpu_before - cpu_before, 0)

    def squares_increase(self, counts: np.ndarray, before: np.ndarray, milli: int) -> np.ndarray:
        """Return the change of the sum of squared gap counts when a ``milli`` share goes on GPUs with ``before`` free."""
        after = before - milli
        open_before = (before >= self.smallest_share) & (before < GPU_MILLI_PER_GPU)
        open_after = after >= self.smallest_share
        # (N - 1)^2 - N^2 = 1 - 2N for the gap left, (N + 1)^2 - N^2 = 2N + 1 for the gap made.
        return np.where(open_before, 1 - 2 * counts[before], 0) + np.where(open_after, 2 * counts[after] + 1, 0)

    def share_cost(self, state: GapCounts, before: np.ndarray, milli: int) -> np.ndarray:
        """Return the cost, lower is better, of a ``milli`` share on GPUs with ``before`` free: the squares increase."""
        return self.squares_increase(state.counts, before, milli)

    def evaluate(self, fleet, state, request, rows):
        tracker = state.tracker
        best_fit_score = (1.0 - leftover_fraction(fleet, request, rows)) * 100
        penalty = GPU_MILLI_PER_GPU * self.stranded_increase(fleet, rows, request)
        if request.gpu_count != 1 or request.gpu_milli_per_gpu >= GPU_MILLI_PER_GPU:
            drop, columns = self.fragment_drop(fleet, tracker, request, rows)
            fgd_score = np.floor(100 / (1 + np.exp(-(drop - penalty) / GPU_MILLI_PER_GPU)))
            return Evaluation(rows, fgd_score * 1000 + best_fit_score, columns)

        milli = request.gpu_milli_per_gpu
        position, column, before = distinct_free_columns(fleet, rows, milli)
        after = tracker.fragment_after(rows[position], request.cpu_millicores, before[:, None], milli)
        drop = tracker.node_fragment[rows[position]] - after - penalty[position]
        fgd_score = np.floor(100 / (1 + np.exp(-drop / GPU_MILLI_PER_GPU)))
        # fgd_score * 1000 + best fit stays below 10^6, so a cost difference of one unit or more outweighs both.
        scores = -1e6 * self.share_cost(state, before, milli) + fgd_score * 1000 + best_fit_score[position]
        order = np.lexsort((column, -drop, -scores, position))
        best = order[np.r_[True, position[order][1:] != position[order][:-1]]]
        return Evaluation(rows[position[best]], scores[best], column[best][:, None])


def unfillable_milli(shares: Sequence[int]) -> np.ndarray:
    """Return, for each free milli r from 0 to 1000, r minus the largest sum of ``shares`` (repeats allowed) up to r."""
    reachable = np.zeros(GPU_MILLI_PER_GPU + 1, dtype=bool)
    reachable[0] = True
    for milli in range(1, GPU_MILLI_PER_GPU + 1):
        reachable[milli] = any(share <= milli and reachable[milli - share] for share in shares)
    largest_sum = np.maximum.accumulate(np.where(reachable, np.arange(GPU_MILLI_PER_GPU + 1), 0))
    return np.arange(GPU_MILLI_PER_GPU + 1) - largest_sum


class GapSquaresWastePolicy(GapSquaresPolicy):
    """Ours: ``gap_squares``, plus a cost for the part of a gap that the typical shares cannot fill.

    The sum of squared gap counts treats every gap below the smallest typical share as closed and
    free of cost. So closing a 350-milli gap with a 230-milli share (120 left) scores the same as
    closing it with a 320-milli share (30 left). Here a gap of r milli also has an unfillable
    part: r minus the largest sum of typical share sizes, repeats allowed, that fits in r. That
    part is the least the gap can waste when only typical shares arrive. A placement costs the
    growth of the unfillable part of the GPU it uses, weighted against the squares term. The
    squares term grows with the fleet, so the weight is the fleet's GPU count / 40,000 per milli
    (0.155 on the trace's 6,212 GPUs).

    On the FGD protocol (``python -m bench.placement``, seeds 42-51, on a 2-core machine) this
    leaves 3.93 % unallocated at 100 % arrived and 3.81 % at 130 %, at 0.32 ms per decision,
    against 4.11 % and 4.01 % for ``gap_squares``. Fixed weights from 0.1 to 0.3 per milli gave
    3.95-3.97 % at 100 %. Charging only the milli left when a gap closes gave 3.97 % (weight
    0.2), and an expected waste under random filling by the target shares gave 3.98 % (weight
    0.2, seeds 42-46).
    """

    name = "gap_squares_waste"
    GPUS_PER_UNIT_WEIGHT = 40_000
    """Fleet GPU count that gives one milli of unfillable gap the weight of one unit of the squares term."""

    def __init__(self, workload: TargetWorkload):
        super().__init__(workload)
        shares = sorted({shape.gpu_milli_per_gpu for shape in workload.shapes
                         if shape.gpu_count == 1 and 0 < shape.gpu_milli_per_gpu < GPU_MILLI_PER_GPU})
        self.unfillable = unfillable_milli(shares)
        """``unfillable[r]``: the milli of an r-milli gap that no sum of typical share sizes can fill."""

    def share_cost(self, state, before, milli):
        """Return the squares increase plus the weighted growth of the unfillable milli of the GPUs used."""
        weight = float(state.fleet.gpu_count.sum()) / self.GPUS_PER_UNIT_WEIGHT
        growth = self.unfillable[before - milli] - self.unfillable[before]
        return self.squares_increase(state.counts, before, milli) + weight * growth


ONLINE_POLICIES = {
    policy.name: policy
    for policy in (RandomPolicy, BestFitPolicy, DotProductPolicy, GpuPackingPolicy, FgdPolicy, FgdBestFitPolicy,
                   GapSquaresPolicy, GapSquaresWastePolicy)
}
"""Every online policy class by name."""


def policy_by_name(name: str, *, workload: TargetWorkload | None = None, seed: int | None = None) -> OnlinePolicy:
    """Return a new policy called ``name``; FGD policies need ``workload``, and ``random`` takes ``seed``.

    Raises ``KeyError`` naming the valid policies, or ``ValueError`` when an FGD policy gets no workload.
    """
    try:
        policy_class = ONLINE_POLICIES[name]
    except KeyError:
        raise KeyError(f"Unknown placement policy {name!r}. Use one of: {', '.join(sorted(ONLINE_POLICIES))}.") from None
    if issubclass(policy_class, FgdPolicy):
        if workload is None:
            raise ValueError(f"Policy {name!r} needs a target workload of typical request shapes.")
        return policy_class(workload)
    if policy_class is RandomPolicy:
        return RandomPolicy(seed)
    return policy_class()


def needs_workload(name: str) -> bool:
    """Return whether the policy called ``name`` needs a target workload; False for an unknown name."""
    policy_class = ONLINE_POLICIES.get(name)
    return policy_class is not None and issubclass(policy_class, FgdPolicy)
