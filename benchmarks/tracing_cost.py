"""What tracing costs on the commit path, against tracing off, in the same run.

Two clusters of 3 `paxq node` processes (synced RocksDB, loopback) run side by side, one with
`--tracing none` and one with `--tracing drop` (spans made, batched by the SDK's
BatchSpanProcessor and thrown away: the cost of tracing itself, not of a collector). Each
setting has its own Client with `--callers` concurrent publishers:

- off:       the `none` cluster, a client without a tracer: no tracing code runs anywhere;
- untraced:  the `drop` cluster, a client without a tracer (what tracing costs while no
             request is sampled: one check a command on the node);
- 1%, 100%:  the `drop` cluster, a client tracing 1% / every request (`trace_sample`).

The settings take turns in short windows, each round starting one later in the list, so that
the drift of a shared machine (fsync latency above all) hits them alike; each figure is the
median of its windows, and each ratio the median of its window's ratio to the off (or the
untraced) window of the same round, with a 90% bootstrap interval in brackets. Clusters
differ a little from one another (which node leads, how their files landed): `--pairs` fresh
pairs share that out.

    .venv/bin/python benchmarks/tracing_cost.py [--seconds 1] [--rounds 24] [--pairs 2]
"""

from __future__ import annotations

import argparse
import random
import statistics
from contextlib import AsyncExitStack

import trio
from client_throughput import BODY, publish_for
from commit import paxq_cluster
from provenance import git_commit

from paxq.client import Client
from paxq.ops.tracing import tracer_provider

#: setting -> (cluster, the client's trace sample or None for no tracer)
SETTINGS = {
    "off": ("none", None),
    "untraced": ("drop", None),
    "1%": ("drop", 0.01),
    "100%": ("drop", 1.0),
}


async def measure(
    seeds: dict[str, list[str]], callers: int, seconds: float, rounds: int
) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
    async with AsyncExitStack() as stack:
        clients = {}
        for name, (cluster, sample) in SETTINGS.items():
            options: dict = {}
            if sample is not None:
                traces = tracer_provider(f"bench-{name}", "drop", 1.0)
                stack.callback(traces.shutdown)
                options = {"tracer": traces.get_tracer("bench"), "trace_sample": sample}
            client = await stack.enter_async_context(Client(seeds[cluster], **options))
            await publish_for(client, callers, 0.5)  # connected, leader known, warm
            clients[name] = client
        names = list(clients)
        for round_ in range(rounds):
            line = []
            # Each round starts one later in the list: no setting always goes first, or
            # always follows the same one (a cluster idle for a while, a 100% window).
            turn = round_ % len(names)
            for name in names[turn:] + names[:turn]:
                rate = await publish_for(clients[name], callers, seconds)
                rates[name].append(rate)
                line.append(f"{name} {rate:7,.0f}")
            print(f"  round {round_ + 1:2}: " + "   ".join(line), flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--pairs", type=int, default=2, help="fresh pairs of clusters")
    parser.add_argument("--callers", type=int, default=64)
    args = parser.parse_args()
    print(
        f"commit {git_commit()}; 2 clusters of 3 nodes, synced RocksDB, {len(BODY)}-byte "
        f"bodies, {args.callers} publishing callers, {args.seconds:g} s windows x "
        f"{args.rounds} rounds x {args.pairs} pairs of clusters"
    )
    rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for pair in range(args.pairs):
        print(f" clusters {pair + 1} of {args.pairs}", flush=True)
        with (
            paxq_cluster(extra=("--tracing", "none")) as (_, _, plain, _),
            paxq_cluster(extra=("--tracing", "drop", "--trace-sample", "0")) as (_, _, traced, _),
        ):
            seeds = {
                "none": [f"{h}:{p}" for h, p in plain],
                "drop": [f"{h}:{p}" for h, p in traced],
            }
            measured = trio.run(measure, seeds, args.callers, args.seconds, args.rounds)
        for name, figures in measured.items():
            rates[name].extend(figures)
    for name, figures in rates.items():
        if name == "off":
            print(f"tracing {name:>8}: {statistics.median(figures):7,.0f} msg/s (median)")
            continue
        line = f"{ratio(figures, rates['off'])} of off"
        if name != "untraced":
            line += f"   {ratio(figures, rates['untraced'])} of untraced"
        print(f"tracing {name:>8}: {statistics.median(figures):7,.0f} msg/s (median)  {line}")


def ratio(figures: list[float], base: list[float], resamples: int = 2000) -> str:
    """The median of a setting's windows each divided by the base's window of its round,
    with a 90% bootstrap interval (rounds drawn again with replacement): how far the noise
    of a shared machine leaves the figure uncertain."""
    ratios = [r / b for r, b in zip(figures, base, strict=True)]
    draw = random.Random(0)
    medians = sorted(
        statistics.median(draw.choices(ratios, k=len(ratios))) for _ in range(resamples)
    )
    low, high = medians[resamples // 20], medians[resamples - 1 - resamples // 20]
    return f"{statistics.median(ratios):.3f}x [{low:.3f}, {high:.3f}]"


if __name__ == "__main__":
    main()
