"""The `paxq` command, on Click: every command has help with its defaults and an example,
usage mistakes exit 2 with the flag named and no traceback, and results are JSON lines.

Exit status: 0 done; 1 the cluster refused or failed the request (or `paxq sim` found a
violation); 2 a usage mistake; 3 no node could be reached or the cluster stayed unavailable;
130 interrupted."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import click

from .config import EXPORTERS
from .options import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Group,
    addresses,
    nodes_option,
)


def _version() -> str:
    try:
        return version("paxq")
    except PackageNotFoundError:
        return "unknown"


@click.group(
    cls=Group,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
    epilog="Exit status: 0 done, 1 refused or failed, 2 usage mistake, 3 cluster unreachable "
    "or unavailable, 130 interrupted. Example: paxq --nodes 10.0.0.5:7411 status",
)
@click.version_option(_version(), "--version", "-V", prog_name="paxq")
@nodes_option
def cli(nodes: str | None) -> None:
    """paxq: a queue and pub-sub broker replicated by Multi-Paxos."""


# ---------------------------------------------------------------------------------- sim


@cli.command(epilog="Example: paxq sim --seeds 200 --jobs 2")
@click.option("--seed", type=int, default=0, help="the seed (the first one with --seeds)")
@click.option("--nodes", type=click.IntRange(1, 9), default=5, help="replicas in the cluster")
@click.option("--steps", type=click.IntRange(1), default=20_000, help="events of the safety phase")
@click.option("--seeds", type=click.IntRange(1), help="run this many seeds and summarize")
@click.option("--jobs", type=click.IntRange(1), help="processes for --seeds [default: up to 2]")
@click.option("--no-faults", is_flag=True, help="a calm network, no crashes")
@click.option("-v", "--verbose", is_flag=True, help="report every seed")
def sim(
    seed: int,
    nodes: int,
    steps: int,
    seeds: int | None,
    jobs: int | None,
    no_faults: bool,
    verbose: bool,
) -> int:
    """Run the whole cluster in one process under faults and check its invariants.

    One seed derives every setting. With --seeds N, run N seeds from --seed on and
    summarize. Exit status 1 on any violation."""
    from paxq.broker.sim import SimResult, SimSettings, replay_command, report, run_seed, sweep

    faults = not no_faults
    if seeds is None:
        settings = SimSettings.from_seed(seed, nodes, steps, faults=faults)
        print(f"settings: {settings.describe()}", flush=True)
        print(f"replay:   {replay_command(settings)}", flush=True)
        result = run_seed(settings)
        print(report(result))
        return EXIT_OK if result.ok else EXIT_REFUSED

    jobs = jobs or min(2, os.cpu_count() or 1)
    print(
        f"settings: seeds {seed}..{seed + seeds - 1} nodes={nodes} steps={steps} "
        f"faults={'on' if faults else 'off'} jobs={jobs} "
        "(each seed derives the rest; a failure prints how to replay it)",
        flush=True,
    )
    done = 0

    def progress(result: SimResult) -> None:
        nonlocal done
        done += 1
        if not result.ok or verbose:
            print(report(result), flush=True)
        elif done % 100 == 0:
            print(f"  {done} seeds done", flush=True)

    every = (
        SimSettings.from_seed(s, nodes, steps, faults=faults) for s in range(seed, seed + seeds)
    )
    outcome = sweep(every, jobs=jobs, on_result=progress)
    print(outcome.summary())
    return EXIT_OK if outcome.ok else EXIT_REFUSED


# --------------------------------------------------------------------------------- node


@cli.command(epilog="Example: paxq node --config node0.toml --bootstrap")
@click.option("--config", type=click.Path(path_type=Path), help="a TOML file of settings")
@click.option(
    "--bootstrap",
    is_flag=True,
    help="the first start of a new cluster: a node whose data directory is created now votes "
    "at once. Without it, a node that finds no data learns from its peers and votes only once "
    "it has caught up (it may have lost promises it made). No effect on existing data",
)
@click.option("--cluster", help="the cluster's name [default: paxq-dev]")
@click.option("--id", "id_", type=int, help="this node's id")
@click.option("--data", help="this node's data directory")
@click.option("--listen", help="peer address host:port [default: its entry in --peers]")
@click.option("--client", help="client address host:port [default: its --clients entry]")
@click.option("--peers", help="every member's peer address: 0=host:port,1=...")
@click.option("--clients", help="every member's client address: 0=host:port,1=...")
@click.option("--tick-ms", type=int, help="tick length [default: 20]")
@click.option(
    "--snapshot-every", type=int, help="applied slots between snapshots; 0 never [default: 2048]"
)
@click.option(
    "--snapshot-keep", type=int, help="slots of log kept behind a snapshot [default: 256]"
)
@click.option("--batch-max", type=int, help="commands per slot at most [default: 1024]")
@click.option("--window", type=int, help="slots in flight at most [default: 32]")
@click.option("--metrics", help="host:port of a Prometheus endpoint (GET /metrics) [default: none]")
@click.option(
    "--tracing",
    type=click.Choice(EXPORTERS),
    help="span exporter [default: none: off]; otlp reads OTEL_EXPORTER_OTLP_*",
)
@click.option(
    "--trace-sample",
    type=click.FloatRange(0, 1),
    help="ratio of new traces the node starts [default: 0.01]; traced requests follow their "
    "client's decision",
)
@click.option(
    "--clock-offset-ms-max",
    type=int,
    help="refuse to lead while this node's clock is further than this from a majority's "
    "[default: 500; 0: no bound]. Leases are stamped with the leader's clock",
)
def node(config: Path | None, bootstrap: bool, id_: int | None, **flags: object) -> int:
    """Run one node until SIGINT or SIGTERM.

    Settings come from flags, PAXQ_* variables or a TOML file (--config); flags win."""
    from .config import KEYS, ConfigError, load
    from .run_node import run

    flags["id"] = id_
    try:
        loaded = load({k: flags.get(k) for k in KEYS}, file=config)
    except (ConfigError, ValueError) as error:
        raise click.UsageError(str(error)) from None
    return run(loaded, bootstrap=bootstrap)


# ---------------------------------------------------------------------------------- dev


DEV_HELP = "the dev cluster's data folder"


@cli.group(
    invoke_without_command=True,
    epilog="Examples: paxq dev; paxq dev restart 1 (from another terminal)",
)
@click.option("--data", type=click.Path(path_type=Path), default=Path(".paxq-dev"), help=DEV_HELP)
@click.option("--peer-port", type=click.IntRange(1, 65535), default=7401, help="first peer port")
@click.option(
    "--client-port", type=click.IntRange(1, 65535), default=7411, help="first client port"
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=7421,
    help="first /metrics port; 0 none",
)
@click.option(
    "--tracing",
    type=click.Choice(EXPORTERS),
    default="none",
    help="every node's span exporter (console: into its log, for paxq traces)",
)
@click.option(
    "--trace-sample",
    type=click.FloatRange(0, 1),
    help="ratio of new traces each node starts [default: 0.01]",
)
@click.pass_context
def dev(
    ctx: click.Context,
    data: Path,
    peer_port: int,
    client_port: int,
    metrics_port: int,
    tracing: str,
    trace_sample: float | None,
) -> int | None:
    """Run a local 3-node cluster: child processes with data under --data.

    Ctrl-C stops them all; running it again resumes from the same data. With stop, start or
    restart N, ask the paxq dev running on --data to act on node N (and wait until it has)."""
    ctx.obj = data
    if ctx.invoked_subcommand is not None:
        return None
    from .dev import run

    flags: tuple[str, ...] = ("--tracing", tracing)
    if trace_sample is not None:
        flags += ("--trace-sample", str(trace_sample))
    return run(data, peer_port, client_port, metrics_port, flags)


def _dev_action(action: str) -> None:
    @dev.command(
        action, help=f"{action.capitalize()} node N of the running paxq dev.",
        epilog=f"Example: paxq dev {action} 1",
    )  # fmt: skip
    @click.argument("n", type=click.IntRange(0, 2))
    @click.option("--data", type=click.Path(path_type=Path), help=DEV_HELP + " [default: as dev]")
    @click.pass_obj
    def command(parent_data: Path, n: int, data: Path | None) -> int:
        from .dev import DevError, control

        try:
            print(control(data or parent_data, action, n))
        except DevError as error:
            click.echo(f"paxq dev {action}: {error}", err=True)
            return EXIT_REFUSED
        return EXIT_OK


for _action in ("stop", "start", "restart"):
    _dev_action(_action)


# ------------------------------------------------------------------------- status, top


@cli.command(epilog="Example: paxq status --json")
@nodes_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object per node")
def status(nodes: str | None, as_json: bool) -> int:
    """Every node's role, ballot, commit, lag and latencies, asked of each node."""
    from .admin import print_status

    return EXIT_OK if print_status(addresses(nodes), as_json) == 0 else EXIT_UNAVAILABLE


@cli.command(epilog="Examples: paxq top; paxq top --once | grep orders")
@nodes_option
@click.option("--every-s", type=click.FloatRange(0.1), default=1.0, help="redraw interval")
@click.option("--once", is_flag=True, help="print one snapshot (rates over --every-s) and exit")
def top(nodes: str | None, every_s: float, once: bool) -> int:
    """The status table and every topic with its subscriptions, depths and rates, live.

    Into a terminal it redraws in place; into a pipe it prints plain tables."""
    import trio

    from .admin import top as run_top
    from .options import seeds

    try:
        return trio.run(run_top, addresses(nodes), seeds(nodes), every_s, once)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


# ------------------------------------------------------------------------------- traces


@cli.command(epilog="Example: paxq traces .paxq-dev/node*.log --contains publish --last 3")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--trace", help="only this trace id (hex)")
@click.option("--last", type=click.IntRange(0), help="only the last N traces to start")
@click.option("--contains", help="only traces with a span of this name")
def traces(files: tuple[Path, ...], trace: str | None, last: int | None, contains: str | None):
    """Print the traces in files of console spans (node logs, a client's span file) as trees:
    start and duration in ms, service."""
    from .span_files import depth_first, read, render
    from .span_files import traces as gather

    try:
        found = gather(read(files))
    except OSError as error:
        raise click.UsageError(str(error)) from None
    chosen = [
        (trace_id, roots)
        for trace_id, roots in found.items()
        if (trace is None or trace_id == trace.lower().removeprefix("0x"))
        and (contains is None or any(s.name == contains for _, s in depth_first(roots)))
    ]
    if last is not None:
        chosen = chosen[-last:] if last > 0 else []
    if not chosen:
        click.echo("no trace found", err=True)
        return EXIT_REFUSED
    for trace_id, roots in chosen:
        print("\n".join(render(trace_id, roots)))
    return EXIT_OK


def _client_commands() -> None:
    from . import admin_commands as admin
    from . import message_commands as messages
    from .worker_command import worker

    for command in (
        admin.create,
        admin.subscribe,
        admin.unsubscribe,
        admin.delete,
        admin.list_,
        admin.describe,
        admin.purge,
        messages.publish,
        messages.claim,
        *messages.SETTLES,
        messages.consume,
        messages.tail,
        messages.read,
        admin.redrive,
        worker,
    ):
        cli.add_command(command)


_client_commands()


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: the exit status, never a traceback for a usage mistake."""
    try:
        result = cli.main(args=argv, prog_name="paxq", standalone_mode=False)
    except click.exceptions.Exit as done:  # --help, --version
        return done.exit_code
    except click.UsageError as error:
        error.show()
        return EXIT_USAGE
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
