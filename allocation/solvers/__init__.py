"""Placement solvers: plain Python with no Django imports, so they can be tested and benchmarked alone.

``get_policy(name)`` returns an online placement policy, which the reservation service calls to rank
the candidate nodes for one request.
"""

from .base import NodeState, Placement, PlacementPolicy, PlacementRequest
from .best_fit import BestFitPolicy

POLICIES: dict[str, PlacementPolicy] = {
    BestFitPolicy.name: BestFitPolicy(),
}


def get_policy(name: str) -> PlacementPolicy:
    """Return the registered policy called ``name``; raise ``KeyError`` naming the valid ones."""
    try:
        return POLICIES[name]
    except KeyError:
        valid = ", ".join(sorted(POLICIES))
        raise KeyError(f"Unknown placement policy {name!r}. Use one of: {valid}.") from None


__all__ = ["NodeState", "Placement", "PlacementPolicy", "PlacementRequest", "POLICIES", "get_policy"]
