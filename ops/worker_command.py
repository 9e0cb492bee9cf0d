"""`paxq worker`: task workers or a plain handler, until SIGINT or SIGTERM."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys

import anyio
import click

from paxq.client import Client, Tasks, WorkerPool

from .client_run import LEASE_S, client_options, emit, outage_option, run
from .options import seeds


@click.command(epilog="Example: paxq worker myapp.tasks:tasks --concurrency 16")
@click.argument("target")
@click.option("--queue", "queues", multiple=True, help="a queue to work [default: all of Tasks]")
@click.option("--concurrency", type=click.IntRange(1), default=8, help="handlers per queue")
@click.option(
    "--prefetch",
    type=click.IntRange(1, 1000),
    help="deliveries held ahead per queue [default: twice --concurrency]",
)
@click.option("--lease-s", type=LEASE_S, default=30.0, help="each lease, kept extended")
@click.option(
    "--grace-s",
    type=click.FloatRange(0),
    default=30.0,
    help="on SIGTERM, how long running handlers may finish before they are cancelled",
)
@click.option(
    "--log-level",
    type=click.Choice(("debug", "info", "warning", "error")),
    default="info",
    help="what the worker logs to stderr: failed runs are warnings, dead letters errors",
)
@outage_option
@client_options
def worker(
    target, queues, concurrency, prefetch, lease_s, grace_s, log_level, outage_s, nodes, timeout_s
) -> int:
    """Run task workers: TARGET is MODULE:NAME of a Tasks registry (NAME default tasks) or of
    an async handler of one delivery. Runs until SIGINT or SIGTERM, then stops gracefully."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    found = _import(target)
    if not isinstance(found, Tasks) and not queues:
        raise click.UsageError("a plain handler needs --queue (a Tasks registry names its own)")

    async def body(client: Client) -> None:
        options = {
            "concurrency": concurrency,
            "lease_s": lease_s,
            "grace_s": grace_s,
            "prefetch": prefetch,
        }
        if isinstance(found, Tasks):
            for queue in queues or found.queues:
                await client.create_queue(queue, exist_ok=True)
            pools = found.pools(client, list(queues) or None, **options)
        else:
            pools = [WorkerPool(client, q, found, **options) for q in queues]
        names = sorted(found.tasks) if isinstance(found, Tasks) else [target]
        click.echo(
            f"paxq worker: {', '.join(names)} on {', '.join(p.topic for p in pools)}, "
            f"{concurrency} at a time per queue, through {', '.join(seeds(nodes))}; "
            f"Ctrl-C or SIGTERM stops it after what runs (up to {grace_s:g} s)",
            err=True,
        )
        async with anyio.create_task_group() as group:
            for pool in pools:
                group.start_soon(pool.run)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    click.echo("paxq worker: stopping (finishing what runs)", err=True)
                    for pool in pools:
                        pool.stop()
                    break
        emit(
            {
                pool.topic: {"done": pool.done, "failed": pool.failed, "rejected": pool.rejected}
                for pool in pools
            }
        )

    return run("worker", nodes, timeout_s, body, outage_s)


def _import(target: str) -> object:
    module_name, _, attribute = target.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError) as error:  # (ValueError: an empty module name)
        raise click.BadParameter(
            f"cannot import {module_name!r}: {error}", param_hint="TARGET"
        ) from None
    found = getattr(module, attribute or "tasks", None)
    if found is None:
        raise click.BadParameter(
            f"{module_name} has no {attribute or 'tasks'!r}", param_hint="TARGET"
        )
    return found
