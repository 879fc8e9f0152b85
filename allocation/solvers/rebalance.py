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

from .base import PlacementRequest

FRAGMENT_POINTS_PER_GPU = 10.0
DEGRADED_POINTS_PER_GPU = 50.0
SAVING_POINTS_PER_UNIT = 1.0
MOVE_POINTS = 2.0
RUNNING_POINTS_PER_HOUR = 5.0


@dataclass(frozen=True)
class TargetFree:
    """A target node's free capacity: milli on each GPU, CPU millicores and memory in MiB."""

    gpu_milli: tuple[int, ...]
    cpu_millicores: int
    memory_mib: int


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
    request: PlacementRequest | None = None
    """The reservation's shape; None allows only this move into the target."""
    target_free: TargetFree | None = None
    """The target's free capacity over the reservation's window when the move was scored."""

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
    chain. A target takes several moves while they fit what it had free, GPU by GPU, tightest GPU
    first, with CPU and memory; a move without ``request`` or ``target_free`` is the only one into
    its target. Moves into one target may have different windows, so the fit is an estimate; a
    reservation whose best target is full may still take its next-best one. Ties go to the lower
    reservation id. Raises ``ValueError`` for a negative ``limit``.
    """
    if limit < 0:
        raise ValueError(f"limit is {limit}; pass 0 or more moves.")
    chosen, moved, sources = [], set(), set()
    room: dict[int, list | None] = {}
    for move in sorted(candidates, key=lambda move: (-_finite(move.score), move.reservation_id, move.to_node_id)):
        if len(chosen) == limit:
            break
        if move.do_not_migrate or not _finite(move.score) > 0 or move.reservation_id in moved:
            continue
        if move.from_node_id in room or move.to_node_id in sources:
            continue
        if not _take_room(room, move):
            continue
        chosen.append(move)
        moved.add(move.reservation_id)
        sources.add(move.from_node_id)
    return chosen


def _take_room(room: dict, move: MoveCandidate) -> bool:
    """Subtract ``move``'s request from what its target has left; return False when it does not fit."""
    if move.request is None or move.target_free is None:
        if move.to_node_id in room:
            return False
        room[move.to_node_id] = None
        return True
    if move.to_node_id in room and room[move.to_node_id] is None:
        return False
    free = room.get(move.to_node_id) or [list(move.target_free.gpu_milli), move.target_free.cpu_millicores,
                                         move.target_free.memory_mib]
    gpus, cpu, memory = free
    request = move.request
    if cpu < request.cpu_millicores or memory < request.memory_mib:
        return False
    fitting = sorted((milli, index) for index, milli in enumerate(gpus) if milli >= request.gpu_milli_per_gpu)
    if len(fitting) < request.gpu_count:
        return False
    for _, index in fitting[: request.gpu_count]:
        gpus[index] -= request.gpu_milli_per_gpu
    room[move.to_node_id] = [gpus, cpu - request.cpu_millicores, memory - request.memory_mib]
    return True


def _finite(value: float) -> float:
    """Return ``value``, or minus infinity for NaN, so a broken score never ranks first."""
    return value if value == value else float("-inf")
