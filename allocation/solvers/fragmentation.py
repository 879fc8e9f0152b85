"""GPU fragmentation against a target workload, as defined for fragmentation gradient descent (FGD).

A node's free GPU capacity is a fragment for a task shape when that shape cannot use it. Against a
shape ``m`` (CPU, GPU count, milli per GPU, GPU model) a node's fragment F_n(m), in milli, is:

- when the node can hold ``m`` (its model is allowed, CPU fits, and at least ``count`` GPUs have
  ``milli`` free): the free milli on the GPUs with less than ``milli`` free;
- otherwise, and for shapes without GPUs: all of the node's free GPU milli.

The target workload M is the set of typical shapes with their frequencies p_m, and
F_n(M) = sum over m of p_m * F_n(m). ``FragmentationTracker`` keeps, per node and shape, the
counts that F_n(m) needs, so the fragment after a hypothetical placement costs a few vector
operations instead of a full recount. That keeps an FGD decision on the 1,213-node trace fleet
at about 0.3 ms (``make bench-placement``).
"""

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .fleet import Fleet

TYPICAL_COVERAGE = 0.95
"""Share of tasks that the typical shapes must cover, most frequent shapes first."""


@dataclass(frozen=True)
class TaskShape:
    """A request shape: CPU millicores, GPU count, milli per GPU, and the allowed GPU model ("" for any)."""

    cpu_millicores: int
    gpu_count: int
    gpu_milli_per_gpu: int
    gpu_model: str = ""


@dataclass(frozen=True)
class TargetWorkload:
    """Typical task shapes and their frequencies, which sum to 1."""

    shapes: tuple[TaskShape, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.shapes) != len(self.weights) or not self.shapes:
            raise ValueError(f"The target workload has {len(self.shapes)} shapes and {len(self.weights)} weights; "
                             f"pass one weight per shape, and at least one shape.")
        if not all(weight >= 0 and weight == weight for weight in self.weights) or sum(self.weights) <= 0:
            raise ValueError("Target workload weights must be 0 or more, not NaN, with a positive sum.")

    @classmethod
    def typical(cls, tasks: Iterable[TaskShape], coverage: float = TYPICAL_COVERAGE) -> "TargetWorkload":
        """Return the most frequent shapes of ``tasks`` that together cover ``coverage`` of them, renormalised.

        Ties in frequency go to the shape seen first. Raises ``ValueError`` for an empty task list.
        """
        counts = Counter(tasks)
        total = sum(counts.values())
        if total == 0:
            raise ValueError("The target workload needs at least one task shape; pass the recent requests.")
        chosen, covered = [], 0
        for shape, count in sorted(counts.items(), key=lambda item: -item[1]):
            chosen.append((shape, count))
            covered += count
            if covered >= coverage * total:
                break
        kept = sum(count for _, count in chosen)
        return cls(shapes=tuple(shape for shape, _ in chosen), weights=tuple(count / kept for _, count in chosen))


class FragmentationTracker:
    """Per-node fragmentation of a ``Fleet`` against a ``TargetWorkload``, kept current with ``refresh``.

    Call ``refresh(row)`` after every change to that node's free capacity.
    """

    def __init__(self, fleet: Fleet, workload: TargetWorkload):
        self.fleet = fleet
        shapes = workload.shapes
        self.weights = np.array(workload.weights, dtype=float)
        self.shape_cpu = np.array([shape.cpu_millicores for shape in shapes], dtype=np.int64)
        self.shape_count = np.array([shape.gpu_count for shape in shapes], dtype=np.int64)
        # A shape without GPUs never makes any GPU usable; its milli is irrelevant.
        self.shape_milli = np.array([max(shape.gpu_milli_per_gpu, 1) for shape in shapes], dtype=np.int64)
        self.uses_gpu = self.shape_count > 0
        # Most shapes allow any model, so each distinct model's mask is computed once.
        masks = {name: fleet.model_mask([name] if name else None) for name in {shape.gpu_model for shape in shapes}}
        self.model_ok = (np.stack([masks[shape.gpu_model] for shape in shapes], axis=1) if shapes
                         else np.zeros((fleet.size, 0), dtype=bool))

        self.fitting_count = np.zeros((fleet.size, len(shapes)), dtype=np.int64)
        """(n, M) GPUs with at least the shape's milli free."""
        self.small_free = np.zeros((fleet.size, len(shapes)), dtype=np.int64)
        """(n, M) free milli on the GPUs with less than the shape's milli free."""
        self.total_free = np.zeros(fleet.size, dtype=np.int64)
        self.node_fragment = np.zeros(fleet.size, dtype=float)
        """(n,) F_n(M) in milli."""
        self.refresh(slice(None))

    def refresh(self, rows) -> None:
        """Recompute the cached counts of ``rows`` (an index, an index array or a slice) from the fleet."""
        free = self.fleet.gpu_free[rows]
        single = free.ndim == 1
        if single:
            free = free[None, :]
        at_least = free[:, :, None] >= self.shape_milli[None, None, :]
        fitting = at_least.sum(axis=1)
        small = np.where(at_least, 0, free[:, :, None]).sum(axis=1)
        total = free.sum(axis=1)
        cpu = np.atleast_1d(self.fleet.cpu_free[rows])
        satisfied = self._satisfied(cpu, np.atleast_2d(self.model_ok[rows]), fitting)
        fragment = np.where(satisfied, small, total[:, None]) @ self.weights
        if single:
            fitting, small, total, fragment = fitting[0], small[0], total[0], fragment[0]
        self.fitting_count[rows] = fitting
        self.small_free[rows] = small
        self.total_free[rows] = total
        self.node_fragment[rows] = fragment

    def _satisfied(self, cpu_free: np.ndarray, model_ok: np.ndarray, fitting: np.ndarray) -> np.ndarray:
        """Return (k, M) whether each node can hold each shape, from its free CPU and fitting GPU counts."""
        return (self.uses_gpu[None, :] & model_ok & (cpu_free[:, None] >= self.shape_cpu[None, :])
                & (fitting >= self.shape_count[None, :]))

    def fragment_after(self, rows: np.ndarray, cpu_taken: int, gpu_before: np.ndarray, gpu_taken: int) -> np.ndarray:
        """Return F_n(M) of each node in ``rows`` after a hypothetical placement on it.

        ``gpu_before`` is (k, j): the free milli, before the placement, of the j GPUs that it takes
        ``gpu_taken`` milli from on each row (j may be 0). ``cpu_taken`` millicores leave each row.
        """
        fitting = self.fitting_count[rows].copy()
        small = self.small_free[rows].copy()
        milli = self.shape_milli[None, :]
        for column in range(gpu_before.shape[1]):
            before = gpu_before[:, column][:, None]
            after = before - gpu_taken
            fitting += (after >= milli).astype(np.int64) - (before >= milli)
            small += np.where(after < milli, after, 0) - np.where(before < milli, before, 0)
        total = self.total_free[rows] - gpu_taken * gpu_before.shape[1]
        satisfied = self._satisfied(self.fleet.cpu_free[rows] - cpu_taken, self.model_ok[rows], fitting)
        return np.where(satisfied, small, total[:, None]) @ self.weights

    def cluster_fragment(self) -> float:
        """Return the sum of F_n(M) over all nodes, in milli."""
        return float(self.node_fragment.sum())
