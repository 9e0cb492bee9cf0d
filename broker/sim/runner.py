"""Run one seed (and print how to replay it) or sweep many seeds across processes."""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from .cluster import SimResult, run_seed
from .settings import SimSettings


def replay_command(settings: SimSettings) -> str:
    return f"paxq sim --seed {settings.seed} --nodes {settings.nodes} --steps {settings.steps}"


def report(result: SimResult) -> str:
    """What a person needs after one run: the outcome, the figures, and on failure the trace."""
    s = result.stats
    lines = [
        f"{'ok' if result.ok else 'VIOLATION'}: seed {result.settings.seed}: "
        f"{s.deliveries} deliveries, {s.events} events, {s.elections} elections, "
        f"{s.crashes} crashes, {s.partitions} partitions, {s.slots_chosen} slots, "
        f"{s.snapshots_taken} snapshots taken, {s.snapshots_installed} installed, "
        f"{s.commands_acked}/{s.commands_issued} commands acknowledged "
        f"({s.commands_abandoned} abandoned, {s.commands_refused} refused), "
        f"{s.sim_ms / 1000:.1f} s simulated, "
        f"{s.wall_s:.2f} s wall, {s.deliveries_per_s:,.0f} deliveries/s",
    ]
    if result.violation is not None:
        lines.append(f"  {result.violation}")
        lines.append(f"  last {len(result.trace)} events before it:")
        lines.extend(f"    {line}" for line in result.trace)
        lines.append(f"  replay: {replay_command(result.settings)}")
    return "\n".join(lines)


@dataclass
class Sweep:
    seeds: int = 0
    failures: list[SimResult] = field(default_factory=list)
    deliveries: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        rate = self.deliveries / self.cpu_s if self.cpu_s else 0.0
        lines = [
            f"{self.seeds} seeds, {len(self.failures)} with a violation; "
            f"{self.deliveries:,} deliveries in {self.wall_s:.1f} s wall "
            f"({rate:,.0f} deliveries/s per process)"
        ]
        for failure in self.failures:
            lines.append(f"  seed {failure.settings.seed}: {failure.violation}")
            lines.append(f"    replay: {replay_command(failure.settings)}")
        return "\n".join(lines)


def _run(settings: SimSettings) -> SimResult:
    result = run_seed(settings)
    result.trace = result.trace if not result.ok else []
    return result


def sweep(settings: Iterable[SimSettings], jobs: int = 1, on_result=None) -> Sweep:
    """Run every setting; `jobs` processes share the work (the simulation is CPU-bound)."""
    outcome = Sweep()
    started = time.perf_counter()
    items = list(settings)
    if jobs <= 1:
        results = map(_run, items)
    else:
        pool = ProcessPoolExecutor(max_workers=jobs)
        results = pool.map(_run, items, chunksize=4)
    try:
        for result in results:
            outcome.seeds += 1
            outcome.deliveries += result.stats.deliveries
            outcome.cpu_s += result.stats.wall_s
            if not result.ok:
                outcome.failures.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        if jobs > 1:
            pool.shutdown(cancel_futures=True)
    outcome.wall_s = time.perf_counter() - started
    return outcome
