"""The `paxq` command."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from paxq.broker.sim import SimResult, SimSettings, replay_command, report, run_seed, sweep
from paxq.ops.config import EXPORTERS


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


def _node(args: argparse.Namespace) -> int:
    from .config import KEYS, ConfigError, load
    from .run_node import run

    flags = {k: getattr(args, k) for k in KEYS}
    try:
        config = load(flags, file=args.config)
    except (ConfigError, ValueError) as error:
        print(f"paxq node: {error}", file=sys.stderr)
        return 2
    return run(config, bootstrap=args.bootstrap)


def _traces(args: argparse.Namespace) -> int:
    from .span_files import read, render, traces

    try:
        found = traces(read(args.files))
    except OSError as error:
        print(f"paxq traces: {error}", file=sys.stderr)
        return 2
    chosen = [
        (trace_id, roots)
        for trace_id, roots in found.items()
        if (args.trace is None or trace_id == args.trace.lower().removeprefix("0x"))
        and (args.contains is None or _contains(roots, args.contains))
    ]
    if args.last is not None:
        chosen = chosen[-args.last :] if args.last > 0 else []
    if not chosen:
        print("no trace found", file=sys.stderr)
        return 1
    for trace_id, roots in chosen:
        print("\n".join(render(trace_id, roots)))
    return 0


def _contains(roots: list, name: str) -> bool:
    from .span_files import depth_first

    return any(span.name == name for _, span in depth_first(roots))


def _dev(args: argparse.Namespace) -> int:
    from .dev import DevError, control, run

    if args.action is not None:
        try:
            print(control(Path(args.data), args.action, args.node))
        except DevError as error:
            print(f"paxq dev {args.action}: {error}", file=sys.stderr)
            return 1
        return 0

    flags = ("--tracing", args.tracing)
    if args.trace_sample is not None and not 0.0 <= args.trace_sample <= 1.0:
        print("paxq dev: --trace-sample is between 0 and 1", file=sys.stderr)
        return 2
    if args.trace_sample is not None:
        flags += ("--trace-sample", str(args.trace_sample))
    return run(Path(args.data), args.peer_port, args.client_port, args.metrics_port, flags)


def _addresses(args: argparse.Namespace) -> list[tuple[str, int]]:
    from paxq.client.connection import parse_address

    from .client_commands import seeds

    return [parse_address(seed) for seed in seeds(args)]


def _status(args: argparse.Namespace) -> int:
    from .admin import print_status

    return print_status(_addresses(args), args.json)


def _top(args: argparse.Namespace) -> int:
    from .admin import top
    from .client_commands import seeds

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(top, _addresses(args), seeds(args), args.every_s)
    return 0


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

    node = commands.add_parser(
        "node",
        help="run one node",
        description="Run one node until SIGINT/SIGTERM. Settings from flags, PAXQ_* variables "
        "or a TOML file (--config); flags win.",
    )
    node.add_argument("--config", type=Path, help="a TOML file of settings")
    node.add_argument(
        "--bootstrap",
        action="store_true",
        help="the first start of a new cluster: a node whose data directory is created now "
        "votes at once. Without it, a node that finds no data learns from its peers and "
        "votes only once it has caught up (it may have lost promises it made). Has no "
        "effect on an existing data directory",
    )
    node.add_argument("--cluster", help="the cluster's name (default paxq-dev)")
    node.add_argument("--id", type=int, help="this node's id")
    node.add_argument("--data", help="this node's data directory")
    node.add_argument("--listen", help="peer address host:port (default: its entry in --peers)")
    node.add_argument("--client", help="client address host:port (default: its --clients entry)")
    node.add_argument("--peers", help="every member's peer address: 0=host:port,1=...")
    node.add_argument("--clients", help="every member's client address: 0=host:port,1=...")
    node.add_argument("--tick-ms", dest="tick_ms", type=int, help="tick length (default 20)")
    node.add_argument(
        "--snapshot-every",
        dest="snapshot_every",
        type=int,
        help="applied slots between snapshots of the machine; 0 never (default 2048)",
    )
    node.add_argument(
        "--batch-max", dest="batch_max", type=int, help="commands per slot at most (1024)"
    )
    node.add_argument("--window", dest="window", type=int, help="slots in flight at most (32)")
    node.add_argument(
        "--metrics", help="host:port of a Prometheus scrape endpoint (GET /metrics); default none"
    )
    node.add_argument(
        "--tracing",
        choices=EXPORTERS,
        help="span exporter (default none: tracing off); otlp reads OTEL_EXPORTER_OTLP_*",
    )
    node.add_argument(
        "--trace-sample",
        dest="trace_sample",
        type=float,
        help="ratio of new traces the node starts (default 0.01); traced requests follow "
        "their client's decision",
    )
    node.add_argument(
        "--clock-offset-ms-max",
        dest="clock_offset_ms_max",
        type=int,
        help="refuse to lead while this node's clock is further than this from a majority's "
        "(default 500; 0: no bound). Leases are stamped with the leader's clock",
    )
    node.add_argument(
        "--snapshot-keep",
        dest="snapshot_keep",
        type=int,
        help="slots of log kept behind a snapshot for peers that lag a little (default 256)",
    )
    node.set_defaults(run=_node)

    dev = commands.add_parser(
        "dev",
        help="run a local 3-node cluster",
        description="Start 3 nodes as child processes with data under --data; Ctrl-C stops "
        "them all; running it again resumes from the same data.",
    )
    dev.add_argument("--data", default=".paxq-dev", help="data folder (default .paxq-dev)")
    dev.add_argument("--peer-port", type=int, default=7401)
    dev.add_argument("--client-port", type=int, default=7411)
    dev.add_argument(
        "--metrics-port", type=int, default=7421, help="first scrape port (/metrics); 0: none"
    )
    dev.add_argument(
        "--tracing",
        choices=EXPORTERS,
        default="none",
        help="every node's span exporter (console: into its log, for paxq traces)",
    )
    dev.add_argument(
        "--trace-sample",
        dest="trace_sample",
        type=float,
        help="ratio of new traces each node starts (default 0.01)",
    )
    dev.set_defaults(run=_dev, action=None)
    one_node = dev.add_subparsers(
        dest="action",
        metavar="{stop,start,restart} N",
        description="With one of these, ask the paxq dev running on --data to stop, start or "
        "restart node N (and wait until it has); without, start the cluster.",
    )
    for action in ("stop", "start", "restart"):
        sub = one_node.add_parser(
            action,
            help=f"{action} one node of the running paxq dev",
            epilog=f"example: paxq dev {action} 1",
        )
        sub.add_argument("node", type=int, help="the node's id (0, 1 or 2)")
        # SUPPRESS: a --data given before the action is not overwritten by this default.
        sub.add_argument("--data", default=argparse.SUPPRESS, help="its data folder")

    nodes_help = "client addresses host:port,... (default: PAXQ_NODES, else the paxq dev nodes)"
    status = commands.add_parser("status", help="show every node's role, ballot, commit, lag")
    status.add_argument("--nodes", help=nodes_help)
    status.add_argument("--json", action="store_true", help="one JSON object per node")
    status.set_defaults(run=_status)

    top = commands.add_parser("top", help="the status table and every queue's depth, live")
    top.add_argument("--nodes", help=nodes_help)
    top.add_argument("--every-s", dest="every_s", type=float, default=1.0)
    top.set_defaults(run=_top)

    spans = commands.add_parser(
        "traces",
        help="print the traces in files of console spans as trees",
        description="Gather the spans that --tracing console wrote (node logs, a client's "
        "span file) and print each trace as a tree: start and duration in ms, service.",
    )
    spans.add_argument("files", nargs="+", type=Path, help="files holding console spans")
    spans.add_argument("--trace", help="only this trace id (hex)")
    spans.add_argument("--last", type=int, help="only the last N traces to start")
    spans.add_argument("--contains", help="only traces with a span of this name")
    spans.set_defaults(run=_traces)

    from .client_commands import add_commands

    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "sim":
        if args.nodes < 1 or args.steps < 1:
            parser.error("--nodes and --steps must be positive")
        if args.seeds is not None and args.seeds < 1:
            parser.error("--seeds must be positive")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
