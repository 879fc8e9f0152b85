"""Choose the few migrations that most improve the placement, gain weighed against disruption.

A candidate move takes one reservation from its node to another. Its gain, in points, adds:

- ``FRAGMENT_POINTS_PER_GPU`` per GPU of fragmentation removed from the two nodes together
  (FGD's measure against the target workload, so moves that leave whole GPUs and whole nodes for
  large requests score high);
- ``DEGRADED_POINTS_PER_GPU`` per GPU of the reservation that sits on a degraded or failed GPU;
- ``SAVING_POINTS_PER_UNIT`` per unit of currency the customer saves over the window.

Its disruption adds ``MOVE_POINTS`` for any move and ``RUNNING_POINTS_PER_HOUR`` per hour of work
that a restart would lose. A reservation whose customer set do-not-migrate is never moved.
``choose_moves`` takes the best moves by gain minus disruption, each reservation at most once and
no node both a source and a target. Each move's gain is computed as if it were the only one, so
the gains of several moves on one node are an estimate.
"""

from dataclasses import dataclass

FRAGMENT_POINTS_PER_GPU = 10.0
DEGRADED_POINTS_PER_GPU = 50.0
SAVING_POINTS_PER_UNIT = 1.0
MOVE_POINTS = 2.0
RUNNING_POINTS_PER_HOUR = 5.0


@dataclass(frozen=True)
class MoveCandidate:
    """One possible move and what it changes; milli and fragment amounts are in GPU milli."""

    reservation_id: int
    from_node_id: int
    to_node_id: int
    gpu_shares: tuple[tuple[int, int], ...]
    """``(gpu_id, milli)`` on the target node."""
    fragment_removed_milli: float
    degraded_milli: int
    saving: float
    running_hours: float
    do_not_migrate: bool = False
    gpu_milli: int = 0
    """GPU milli the reservation holds, which the target must have free."""
    target_free_milli: int | None = None
    """The target's free GPU milli over the reservation's window when proposed; None allows one move to it."""

    @property
    def gain(self) -> float:
        return (FRAGMENT_POINTS_PER_GPU * self.fragment_removed_milli / 1000
                + DEGRADED_POINTS_PER_GPU * self.degraded_milli / 1000
                + SAVING_POINTS_PER_UNIT * self.saving)

    @property
    def disruption(self) -> float:
        return MOVE_POINTS + RUNNING_POINTS_PER_HOUR * self.running_hours

    @property
    def score(self) -> float:
        return self.gain - self.disruption

    def explanation(self) -> str:
        """Return why this move is proposed, in words."""
        reasons = []
        if self.degraded_milli:
            reasons.append(f"moves {self.degraded_milli} milli off degraded or failed GPUs")
        if self.fragment_removed_milli > 0:
            reasons.append(f"removes {self.fragment_removed_milli:.0f} milli of fragmentation")
        if self.saving > 0:
            reasons.append(f"saves the customer {self.saving:.2f}")
        gained = "; ".join(reasons) or "no gain"
        lost = f"{self.running_hours:.1f} h of running work lost" if self.running_hours else "nothing running yet"
        return f"Gain {self.gain:.1f} ({gained}) against disruption {self.disruption:.1f} ({lost})."


def choose_moves(candidates: list[MoveCandidate], limit: int) -> list[MoveCandidate]:
    """Return at most ``limit`` moves with a positive score, best first.

    A reservation moves at most once, and no node is both a source and a target, so moves do not
    chain. A target takes moves while their GPU milli fits its free milli (one move when that is
    unknown); since windows differ this is an estimate, and applying a plan checks each move again.
    Ties go to the lower reservation id. Raises ``ValueError`` for a negative ``limit``.
    """
    if limit < 0:
        raise ValueError(f"limit is {limit}; pass 0 or more moves.")
    chosen, moved, sources = [], set(), set()
    taken: dict[int, int] = {}
    for move in sorted(candidates, key=lambda move: (-_finite(move.score), move.reservation_id, move.to_node_id)):
        if len(chosen) == limit:
            break
        if move.do_not_migrate or not _finite(move.score) > 0 or move.reservation_id in moved:
            continue
        if move.from_node_id in taken or move.to_node_id in sources:
            continue
        room = move.target_free_milli if move.target_free_milli is not None else move.gpu_milli
        if move.to_node_id in taken and move.target_free_milli is None:
            continue
        if taken.get(move.to_node_id, 0) + move.gpu_milli > room:
            continue
        chosen.append(move)
        moved.add(move.reservation_id)
        sources.add(move.from_node_id)
        taken[move.to_node_id] = taken.get(move.to_node_id, 0) + move.gpu_milli
    return chosen


def _finite(value: float) -> float:
    """Return ``value``, or minus infinity for NaN, so a broken score never ranks first."""
    return value if value == value else float("-inf")
