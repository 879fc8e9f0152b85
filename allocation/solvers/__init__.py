"""Placement solvers: plain Python and numpy with no Django imports, so they can be tested and benchmarked alone.

``get_policy(name)`` returns an online placement policy, which the reservation service calls to
rank the candidate nodes for one request. The FGD policies need the target workload, the typical
request shapes that placement should keep room for.
"""

from .base import NodeState, Placement, PlacementPolicy, PlacementRequest
from .fragmentation import TargetWorkload, TaskShape
from .online import ONLINE_POLICIES, OnlinePolicy, needs_workload, policy_by_name

POLICIES = tuple(sorted(ONLINE_POLICIES))
"""Names of the online policies."""

get_policy = policy_by_name

__all__ = [
    "NodeState", "OnlinePolicy", "Placement", "PlacementPolicy", "PlacementRequest", "POLICIES", "TargetWorkload",
    "TaskShape", "get_policy", "needs_workload",
]
