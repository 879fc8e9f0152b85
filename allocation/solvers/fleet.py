"""The fleet as numpy arrays, so a policy scores every node for a request in a few vector operations.

``Fleet`` contains what is free on each node for one window. The reservation service builds one from
a shortlist of ``NodeState`` rows; the placement benchmark builds one for the whole trace fleet and
updates it after every placement with ``Fleet.take``.

Units: CPU in millicores, memory in MiB, GPU capacity in milli (1000 = one GPU). GPUs are columns
``0 .. gpu_count - 1`` of each row. The columns past a node's GPU count contain 0 free milli, which
no request with a GPU can use.
"""

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .base import GPU_MILLI_PER_GPU, NodeState, PlacementRequest


@dataclass
class Fleet:
    """Free capacity of ``n`` nodes with up to ``width`` GPUs each; the arrays are updated in place."""

    cpu_capacity: np.ndarray
    """(n,) CPU millicores of each node."""
    cpu_free: np.ndarray
    memory_free: np.ndarray
    gpu_count: np.ndarray
    gpu_free: np.ndarray
    """(n, width) free milli per GPU; 0 in the columns past ``gpu_count``."""
    model: np.ndarray
    """(n,) index into ``model_names``."""
    model_names: tuple[str, ...]
    price: np.ndarray
    """(n,) price per GPU-hour, in the nodes' currency."""
    node_ids: np.ndarray
    gpu_ids: np.ndarray
    """(n, width) the GPUs' ids, -1 in the columns past ``gpu_count``."""
    failure_probability: np.ndarray | None = None
    """(n,) the learned chance that each node fails in the next period; None when unknown."""

    @classmethod
    def build(cls, *, cpu: Sequence[int], memory: Sequence[int], gpu_count: Sequence[int], models: Sequence[str],
              price: Sequence[float] | None = None, node_ids: Sequence[int] | None = None) -> "Fleet":
        """Return an idle fleet: every node's CPU, memory and GPUs free."""
        count = np.asarray(gpu_count, dtype=np.int64)
        size = len(count)
        lengths = {"cpu": len(cpu), "memory": len(memory), "gpu_count": size, "models": len(models)}
        if price is not None:
            lengths["price"] = len(price)
        if node_ids is not None:
            lengths["node_ids"] = len(node_ids)
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Fleet lists differ in length ({lengths}); pass one entry per node in each.")
        width = max(int(count.max()) if size else 1, 1)
        columns = np.arange(width)
        exists = columns[None, :] < count[:, None]
        names = tuple(sorted(set(models)))
        index = {name: position for position, name in enumerate(names)}
        ids = np.asarray(node_ids if node_ids is not None else np.arange(size), dtype=np.int64)
        fleet = cls(
            cpu_capacity=np.asarray(cpu, dtype=np.int64).copy(),
            cpu_free=np.asarray(cpu, dtype=np.int64).copy(),
            memory_free=np.asarray(memory, dtype=np.int64).copy(),
            gpu_count=count,
            gpu_free=np.where(exists, GPU_MILLI_PER_GPU, 0).astype(np.int64),
            model=np.array([index[name] for name in models], dtype=np.int64),
            model_names=names,
            price=np.asarray(price if price is not None else np.zeros(size), dtype=float),
            node_ids=ids,
            gpu_ids=np.where(exists, ids[:, None] * width + columns[None, :], -1),
        )
        fleet.check()
        return fleet

    @classmethod
    def from_states(cls, nodes: Sequence[NodeState]) -> "Fleet":
        """Return the fleet of ``nodes`` as they are: free capacity and GPU ids from each ``NodeState``."""
        size = len(nodes)
        width = max([len(node.gpu_free_milli) for node in nodes] + [1])
        gpu_free = np.zeros((size, width), dtype=np.int64)
        gpu_ids = np.full((size, width), -1, dtype=np.int64)
        for row, node in enumerate(nodes):
            for column, (gpu_id, free) in enumerate(node.gpu_free_milli):
                gpu_free[row, column] = free
                gpu_ids[row, column] = gpu_id
        names = tuple(sorted({node.gpu_model for node in nodes}))
        index = {name: position for position, name in enumerate(names)}
        fleet = cls(
            cpu_capacity=np.array([node.cpu_capacity_millicores for node in nodes], dtype=np.int64),
            cpu_free=np.array([node.cpu_free_millicores for node in nodes], dtype=np.int64),
            memory_free=np.array([node.memory_free_mib for node in nodes], dtype=np.int64),
            gpu_count=np.array([len(node.gpu_free_milli) for node in nodes], dtype=np.int64),
            gpu_free=gpu_free,
            model=np.array([index[node.gpu_model] for node in nodes], dtype=np.int64),
            model_names=names,
            price=np.array([node.price_per_gpu_hour for node in nodes], dtype=float),
            node_ids=np.array([node.node_id for node in nodes], dtype=np.int64),
            gpu_ids=gpu_ids,
        )
        fleet.check()
        return fleet

    def check(self) -> None:
        """Raise ``ValueError`` for duplicate node ids, negative capacity, or a price that is negative or not finite."""
        if len(np.unique(self.node_ids)) != self.size:
            raise ValueError("Fleet node ids repeat; give each node its own id.")
        if (self.cpu_free < 0).any() or (self.memory_free < 0).any() or (self.gpu_count < 0).any():
            raise ValueError("A fleet node has negative CPU, memory or GPU count; capacities are 0 or more.")
        if not np.isfinite(self.price).all() or (self.price < 0).any():
            raise ValueError("A fleet node's price is negative or not a finite number; prices are 0 or more.")

    def copy(self) -> "Fleet":
        """Return an independent copy, whose arrays can change without touching this fleet."""
        return Fleet(**{name: value.copy() if isinstance(value, np.ndarray) else value for name, value in vars(self).items()})

    @property
    def size(self) -> int:
        return len(self.cpu_free)

    @property
    def width(self) -> int:
        return self.gpu_free.shape[1]

    def model_mask(self, allowed: Sequence[str] | None) -> np.ndarray:
        """Return (n,) True where the node's GPU model is in ``allowed``; None or empty allows every model."""
        if not allowed:
            return np.ones(self.size, dtype=bool)
        wanted = [position for position, name in enumerate(self.model_names) if name in set(allowed)]
        return np.isin(self.model, wanted)

    def feasible(self, request: PlacementRequest, allowed: np.ndarray | None = None) -> np.ndarray:
        """Return the row indices of the nodes that can hold ``request`` now, in row order."""
        fits = (self.cpu_free >= request.cpu_millicores) & (self.memory_free >= request.memory_mib)
        if allowed is not None:
            fits &= allowed
        if request.gpu_count > 0:
            fitting = (self.gpu_free >= request.gpu_milli_per_gpu).sum(axis=1)
            fits &= fitting >= request.gpu_count
        return np.flatnonzero(fits)

    def take(self, row: int, columns: np.ndarray, request: PlacementRequest) -> None:
        """Subtract ``request`` from node ``row``, taking its per-GPU milli from each GPU in ``columns``."""
        self.cpu_free[row] -= request.cpu_millicores
        self.memory_free[row] -= request.memory_mib
        self.gpu_free[row, np.asarray(columns, dtype=np.int64)] -= request.gpu_milli_per_gpu
