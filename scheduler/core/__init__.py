"""The scheduling cycle's decisions as plain Python and numpy, with no Django imports.

``run_cycle`` orders the waiting requests (priority, then fair share, then submission time),
places what fits now without delaying any request ahead of it, gives blocked requests an
estimated start and a held slot, and proposes preemptions. The Django services in
``scheduler/cycle.py`` build its inputs from the database and apply its result.
"""

from .cycle import CycleConfig, CycleResult, Placed, Running, Waiting, WaitingDecision, priority_inversions, run_cycle
from .preemption import PreemptionPlan
from .timeline import Booking, Timeline

__all__ = [
    "Booking", "CycleConfig", "CycleResult", "Placed", "PreemptionPlan", "Running", "Timeline", "Waiting",
    "WaitingDecision", "priority_inversions", "run_cycle",
]
