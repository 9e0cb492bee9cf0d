"""Deterministic simulator: the whole cluster in one process, seeded, with faults and checkers.

It drives the same `paxos` code production runs. One seed derives every setting; a failure
prints the seed, the settings and the last events, and `paxq sim --seed S` replays it.
"""

from .checkers import History, Violation
from .cluster import ReplicaFactory, SimResult, SimStats, Simulation, run_seed
from .runner import Sweep, replay_command, report, sweep
from .settings import Faults, SimSettings

__all__ = [
    "Faults",
    "History",
    "ReplicaFactory",
    "SimResult",
    "SimSettings",
    "SimStats",
    "Simulation",
    "Sweep",
    "Violation",
    "replay_command",
    "report",
    "run_seed",
    "sweep",
]
