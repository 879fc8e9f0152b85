"""The placement problem model shared by every policy.

Units: CPU in millicores, memory in MiB, GPU capacity in milli (1000 = one GPU), prices in the
node's currency per GPU-hour.
"""

from dataclasses import dataclass
from typing import Protocol, Sequence

GPU_MILLI_PER_GPU = 1000


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """The shape of one reservation: ``gpu_count`` GPUs with ``gpu_milli_per_gpu`` free on each."""

    gpu_count: int
    gpu_milli_per_gpu: int
    cpu_millicores: int
    memory_mib: int

    def __post_init__(self) -> None:
        if self.gpu_count < 0 or self.cpu_millicores < 0 or self.memory_mib < 0:
            raise ValueError(f"{self} has a negative amount; GPU count, CPU and memory are 0 or more.")
        if self.gpu_count > 0 and not 1 <= self.gpu_milli_per_gpu <= GPU_MILLI_PER_GPU:
            raise ValueError(f"{self} asks for GPUs with {self.gpu_milli_per_gpu} milli each; use 1 to 1000.")

    @property
    def gpu_milli_total(self) -> int:
        return self.gpu_count * self.gpu_milli_per_gpu


@dataclass(frozen=True, slots=True)
class NodeState:
    """A node's capacity and what is free on it for the request's window.

    ``gpu_free_milli`` lists ``(gpu_id, free_milli)`` for each schedulable GPU, in GPU index order.
    """

    node_id: int
    gpu_model: str
    gpu_count: int
    cpu_capacity_millicores: int
    cpu_free_millicores: int
    memory_capacity_mib: int
    memory_free_mib: int
    gpu_free_milli: tuple[tuple[int, int], ...]
    price_per_gpu_hour: float
    hostname: str = ""

    def fitting_gpus(self, gpu_milli_per_gpu: int) -> list[tuple[int, int]]:
        """Return the ``(gpu_id, free_milli)`` pairs with at least ``gpu_milli_per_gpu`` free."""
        return [(gpu_id, free) for gpu_id, free in self.gpu_free_milli if free >= gpu_milli_per_gpu]

    def can_hold(self, request: PlacementRequest) -> bool:
        """Return whether CPU, memory and enough GPUs are free for ``request``."""
        if self.cpu_free_millicores < request.cpu_millicores or self.memory_free_mib < request.memory_mib:
            return False
        if request.gpu_count == 0:
            return True
        return len(self.fitting_gpus(request.gpu_milli_per_gpu)) >= request.gpu_count


@dataclass(frozen=True, slots=True)
class Placement:
    """A policy's choice: the node and the milli to take from each of its GPUs; lower score is better."""

    node_id: int
    gpu_shares: tuple[tuple[int, int], ...]
    score: float


class PlacementPolicy(Protocol):
    """An online policy: rank the feasible nodes for one request, best first."""

    name: str

    def rank(self, request: PlacementRequest, nodes: Sequence[NodeState]) -> list[Placement]:
        """Return a placement for every node that can hold ``request``, best first.

        Nodes that cannot hold the request are left out; an empty list means none can.
        """
        ...
