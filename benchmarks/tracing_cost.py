"""What tracing costs on the commit path, against tracing off, in the same run.

For each setting, a fresh cluster of 3 `paxq node` processes (synced RocksDB, loopback) and a
Client with `--callers` concurrent publishers for `--seconds`:

- off:  nodes `--tracing none`, client without a tracer (no tracing code runs);
- 1%:   nodes `--tracing drop`, client tracing 1% of its publishes (`trace_sample`; spans are
        made, batched and dropped: the cost of tracing itself, not of a collector);
- 100%: the same, every publish sampled.

Settings run in rounds (off, 1%, 100%, off, 1%, 100%, ...) so drift hits them alike; the
figure is the median of the rounds.

    .venv/bin/python benchmarks/tracing_cost.py [--seconds 5] [--rounds 3] [--callers 64]
"""

from __future__ import annotations

import argparse
import statistics

import trio
from client_throughput import BODY, client_publish
from commit import paxq_cluster
from provenance import git_commit

from paxq.ops.tracing import tracer_provider

SETTINGS = {"off": None, "1%": 0.01, "100%": 1.0}


async def load(seeds: list[str], sample: float | None, callers: int, seconds: float) -> float:
    traces = tracer_provider("bench-client", "drop", 1.0) if sample is not None else None
    tracer = traces.get_tracer("bench") if traces is not None else None
    try:
        return await client_publish(
            seeds, callers, seconds, tracer=tracer, trace_sample=sample or 0.0
        )
    finally:
        if traces is not None:
            traces.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callers", type=int, default=64)
    args = parser.parse_args()
    print(
        f"commit {git_commit()}; 3 nodes, synced RocksDB, {len(BODY)}-byte bodies, "
        f"{args.callers} publishing callers, {args.seconds:g} s x {args.rounds} rounds"
    )
    figures: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for round_ in range(args.rounds):
        for name, sample in SETTINGS.items():
            extra = ("--tracing", "none") if sample is None else ("--tracing", "drop")
            with paxq_cluster(extra=(*extra, "--trace-sample", "0")) as (_, _, addresses, _):
                seeds = [f"{h}:{p}" for h, p in addresses]
                rate = trio.run(load, seeds, sample, args.callers, args.seconds)
            figures[name].append(rate)
            print(f"  round {round_ + 1} {name:>4}: {rate:9,.0f} msg/s", flush=True)
    base = statistics.median(figures["off"])
    for name, rates in figures.items():
        median = statistics.median(rates)
        print(f"tracing {name:>4}: {median:9,.0f} msg/s   {median / base:.3f}x of off")


if __name__ == "__main__":
    main()
