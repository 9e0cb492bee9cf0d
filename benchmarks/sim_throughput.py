"""Simulated message deliveries per second of `paxq sim`, single process.

The machine is shared and noisy, so the same run also times a baseline: a bare heap-driven
event loop doing nothing but push and pop, the floor any discrete-event simulator pays per event.
The ratio (simulator deliveries/s over baseline events/s) is the figure to compare across runs.

    .venv/bin/python benchmarks/sim_throughput.py [--seeds 20] [--nodes 5] [--steps 20000]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import time

from provenance import git_commit

from paxq.broker.sim import SimSettings, run_seed


def baseline_events_per_s(events: int = 2_000_000) -> float:
    rng = random.Random(0)
    heap: list[tuple] = []
    seq = itertools.count()
    for _ in range(1000):
        heapq.heappush(heap, (rng.random(), next(seq), 0, 0, None))
    started = time.perf_counter()
    for _ in range(events):
        now, _, kind, target, payload = heapq.heappop(heap)
        heapq.heappush(heap, (now + rng.random(), next(seq), kind, target, payload))
    return events / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20_000)
    args = parser.parse_args()
    commit = git_commit()
    base_before = baseline_events_per_s()
    deliveries = 0
    wall = 0.0
    for seed in range(args.seeds):
        result = run_seed(SimSettings.from_seed(seed, args.nodes, args.steps))
        assert result.ok, result.violation
        deliveries += result.stats.deliveries
        wall += result.stats.wall_s
    base_after = baseline_events_per_s()
    baseline = (base_before + base_after) / 2
    rate = deliveries / wall
    print(
        f"commit {commit}; seeds 0..{args.seeds - 1}, nodes={args.nodes}, steps={args.steps}, "
        "every fault on, one process"
    )
    print(f"simulator: {deliveries:,} deliveries in {wall:.1f} s = {rate:,.0f} deliveries/s")
    print(
        f"baseline (bare heap event loop): {baseline:,.0f} events/s "
        f"(before {base_before:,.0f}, after {base_after:,.0f})"
    )
    print(f"ratio: {rate / baseline:.3f} deliveries per baseline event")


if __name__ == "__main__":
    main()
