"""Best-fit scoring: prefer the node that the request leaves with the least free capacity.

For node n and request r the score is the mean leftover fraction over CPU and GPU:

    score(n) = 0.5 * (cpu_free - cpu_request) / cpu_capacity
             + 0.5 * (gpu_free_milli - gpu_request_milli) / (gpu_count * 1000)

Lower is better; ties go to the cheaper node, then the lower node id. Within the chosen node the
request takes the GPUs with the least free milli that still fit, so whole GPUs stay whole.
"""

from typing import Sequence

from .base import GPU_MILLI_PER_GPU, NodeState, Placement, PlacementRequest


class BestFitPolicy:
    name = "best_fit"

    def rank(self, request: PlacementRequest, nodes: Sequence[NodeState]) -> list[Placement]:
        ranked: list[tuple[float, float, int, Placement]] = []
        for node in nodes:
            if not node.can_hold(request):
                continue
            score = self.score(request, node)
            shares = choose_tightest_gpus(request, node)
            placement = Placement(node_id=node.node_id, gpu_shares=shares, score=score)
            ranked.append((score, node.price_per_gpu_hour, node.node_id, placement))

        ranked.sort(key=lambda item: item[:3])
        return [item[3] for item in ranked]

    @staticmethod
    def score(request: PlacementRequest, node: NodeState) -> float:
        """Return the mean leftover fraction of CPU and GPU after placing ``request`` on ``node``."""
        cpu_left = (node.cpu_free_millicores - request.cpu_millicores) / node.cpu_capacity_millicores
        gpu_capacity = max(node.gpu_count, 1) * GPU_MILLI_PER_GPU
        gpu_free = sum(free for _, free in node.gpu_free_milli)
        gpu_left = (gpu_free - request.gpu_milli_total) / gpu_capacity
        return 0.5 * cpu_left + 0.5 * gpu_left


def choose_tightest_gpus(request: PlacementRequest, node: NodeState) -> tuple[tuple[int, int], ...]:
    """Pick ``request.gpu_count`` GPUs with the least free milli that fits, as ``(gpu_id, milli)``."""
    if request.gpu_count == 0:
        return ()
    fitting = node.fitting_gpus(request.gpu_milli_per_gpu)
    fitting.sort(key=lambda pair: pair[1])
    chosen = fitting[: request.gpu_count]
    return tuple(sorted((gpu_id, request.gpu_milli_per_gpu) for gpu_id, _ in chosen))
