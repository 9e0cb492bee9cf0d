"""The `paxq` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from paxq.broker.sim import SimResult, SimSettings, replay_command, report, run_seed, sweep


def _sim(args: argparse.Namespace) -> int:
    faults = not args.no_faults
    if args.seeds is None:
        settings = SimSettings.from_seed(args.seed, args.nodes, args.steps, faults=faults)
        print(f"settings: {settings.describe()}", flush=True)
        print(f"replay:   {replay_command(settings)}", flush=True)
        result = run_seed(settings)
        print(report(result))
        return 0 if result.ok else 1

    first = args.seed
    jobs = args.jobs or min(2, os.cpu_count() or 1)
    print(
        f"settings: seeds {first}..{first + args.seeds - 1} nodes={args.nodes} "
        f"steps={args.steps} faults={'on' if faults else 'off'} jobs={jobs} "
        "(each seed derives the rest; a failure prints how to replay it)",
        flush=True,
    )
    done = 0

    def progress(result: SimResult) -> None:
        nonlocal done
        done += 1
        if not result.ok or args.verbose:
            print(report(result), flush=True)
        elif done % 100 == 0:
            print(f"  {done} seeds done", flush=True)

    settings = (
        SimSettings.from_seed(seed, args.nodes, args.steps, faults=faults)
        for seed in range(first, first + args.seeds)
    )
    outcome = sweep(settings, jobs=jobs, on_result=progress)
    print(outcome.summary())
    return 0 if outcome.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paxq", description="paxq: a Multi-Paxos queue broker")
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser(
        "sim",
        help="run the deterministic cluster simulator",
        description=(
            "Run the whole cluster in one process under faults and check its invariants. "
            "One seed derives every setting. With --seeds N, run N seeds from --seed on and "
            "summarize. Exit status 1 on any violation."
        ),
    )
    sim.add_argument("--seed", type=int, default=0, help="the seed (the first one with --seeds)")
    sim.add_argument("--nodes", type=int, default=5, help="replicas in the cluster (default 5)")
    sim.add_argument(
        "--steps", type=int, default=20_000, help="events in the safety phase (default 20000)"
    )
    sim.add_argument("--seeds", type=int, help="run this many seeds and summarize")
    sim.add_argument("--jobs", type=int, help="processes for --seeds (default: up to 2)")
    sim.add_argument("--no-faults", action="store_true", help="a calm network, no crashes")
    sim.add_argument("-v", "--verbose", action="store_true", help="report every seed")
    sim.set_defaults(run=_sim)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "nodes", 1) < 1 or getattr(args, "steps", 1) < 1:
        parser.error("--nodes and --steps must be positive")
    if getattr(args, "seeds", None) is not None and args.seeds < 1:
        parser.error("--seeds must be positive")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
