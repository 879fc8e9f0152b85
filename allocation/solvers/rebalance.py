"""Choose the few migrations that most improve the placement, gain weighed against disruption.

A candidate move takes one reservation from its node to another. Its gain, in points, adds:

- ``FRAGMENT_POINTS_PER_GPU`` per GPU of fragmentation removed from the two nodes together
  (FGD's measure against the target workload, so moves that leave whole GPUs and whole nodes for
  large requests score high);
- ``DEGRADED_POINTS_PER_GPU`` per GPU of the reservation that sits on a degraded or failed GPU;
- ``SAVING_POINTS_PER_UNIT`` per unit of currency the customer saves over the window.

Its disruption adds ``MOVE_POINTS`` for any move and ``RUNNING_POINTS_PER_HOUR`` per hour of work
that a restart would lose. A reservation whose customer set do-not-migrate is never moved.
``choose_moves`` takes the best moves by gain minus disruption, at most one per reservation and
per node, so the gains of the chosen moves do not depend on each other.
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

    Each reservation, and each node as a source or a target, appears in at most one chosen move.
    Ties go to the lower reservation id. Raises ``ValueError`` for a negative ``limit``.
    """
    if limit < 0:
        raise ValueError(f"limit is {limit}; pass 0 or more moves.")
    chosen, used_reservations, used_nodes = [], set(), set()
    for move in sorted(candidates, key=lambda move: (-move.score, move.reservation_id, move.to_node_id)):
        if len(chosen) == limit:
            break
        if move.do_not_migrate or move.score <= 0:
            continue
        if move.reservation_id in used_reservations or {move.from_node_id, move.to_node_id} & used_nodes:
            continue
        chosen.append(move)
        used_reservations.add(move.reservation_id)
        used_nodes.update((move.from_node_id, move.to_node_id))
    return chosen
