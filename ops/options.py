"""What the `paxq` commands share: `--nodes` (before or after the command, or PAXQ_NODES),
the command group that lists commands in the order they are defined, and checked values
that name the flag a user typed."""

from __future__ import annotations

import os
from collections.abc import Callable

import click

from paxq.client.connection import default_seeds, parse_address
from paxq.client.errors import InvalidArgument

Address = tuple[str, int]

#: exit statuses, as docs/cli.md lists them
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

NODES_HELP = (
    "client addresses host:port,... of some or all nodes (before or after the command) "
    "[default: PAXQ_NODES, else the paxq dev nodes]"
)


class Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # as defined: the everyday ones first


def _nodes(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The command's --nodes, else the one given before the command, else PAXQ_NODES; each
    part checked. (Not click's envvar: the variable would hide a --nodes given before the
    command.)"""
    source = "--nodes"
    if value is None and ctx.parent is not None:
        value = ctx.find_root().params.get("nodes")
    leaf = ctx.parent is not None  # (the variable is the command's to read, not the group's)
    if value is None and leaf and os.environ.get("PAXQ_NODES", "").strip():
        value, source = os.environ["PAXQ_NODES"], "PAXQ_NODES"
    if value is not None:
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if not parts:
            raise click.BadParameter(f"{source}: no address given", ctx, param)
        for part in parts:
            try:
                parse_address(part, source)
            except InvalidArgument as error:
                message = error.message.removeprefix("--nodes: ")  # (the flag is named)
                raise click.BadParameter(message, ctx, param) from None
    return value


def nodes_option(f: Callable) -> Callable:
    return click.option(
        "--nodes",
        metavar="HOST:PORT,...",
        callback=_nodes,
        show_default=False,
        help=NODES_HELP,
    )(f)


def seeds(nodes: str | None) -> list[str]:
    if nodes:
        return [part.strip() for part in nodes.split(",") if part.strip()]
    return default_seeds()


def addresses(nodes: str | None) -> list[Address]:
    return [parse_address(seed) for seed in seeds(nodes)]
