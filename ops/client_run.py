"""How a `paxq` client command runs: a Client of the cluster for its body, a typed error
printed with the exit status for its kind, results as JSON lines (a body that is not UTF-8
as `body_base64`), and the options every client command takes."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
import trio

from paxq.client import Client, InvalidArgument, PaxqError, Unavailable
from paxq.client.wire.protocol import DELAY_MS_MAX, LEASE_MS_MAX

from .options import (
    EXIT_INTERRUPTED,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    nodes_option,
    seeds,
)

E = TypeVar("E", bound=BaseException)

LEASE_S = click.FloatRange(0.001, LEASE_MS_MAX / 1000)
DELAY_S = click.FloatRange(0, DELAY_MS_MAX / 1000)


def run(
    name: str,
    nodes: str | None,
    timeout_s: float,
    body: Callable[[Client], Awaitable[int | None]],
    outage_s: float | None = None,
) -> int:
    """Run `body` with a client of the cluster; a typed error is printed, and the exit status
    says which kind (1 refused or failed, 2 a value the client refused, 3 unavailable)."""

    async def main() -> int:
        options = {} if outage_s is None else {"outage_s": outage_s}
        async with Client(seeds(nodes), request_timeout_s=timeout_s, **options) as client:
            return await body(client) or 0

    try:
        return trio.run(main)
    except (PaxqError, BaseExceptionGroup) as error:
        usage = _found(error, click.ClickException)
        if usage is not None:  # a bad line of stdin, found while others were sent
            raise usage from None
        found = _found(error, PaxqError)
        if found is None:
            raise
        if isinstance(found, InvalidArgument):
            click.echo(f"paxq {name}: {type(found).__name__}: {_as_typed(found)}", err=True)
            return EXIT_USAGE
        click.echo(f"paxq {name}: {type(found).__name__}: {found}", err=True)
        return EXIT_UNAVAILABLE if isinstance(found, Unavailable) else EXIT_REFUSED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _found(error: BaseException, kind: type[E]) -> E | None:
    """The error itself if of `kind`, or the first such inside task groups' groups."""
    if isinstance(error, kind):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _found(inner, kind)
            if found is not None:
                return found
    return None


def _as_typed(error: InvalidArgument) -> str:
    """The message, naming the flag a user typed where the argument is one of the
    command's options."""
    ctx = click.get_current_context(silent=True)
    for param in ctx.command.params if ctx is not None else ():
        if param.name == error.argument and param.opts and param.opts[0].startswith("--"):
            return param.opts[0] + error.message.removeprefix(error.argument)
    return error.message


def emit(value: object) -> None:
    print(json.dumps(printable(value)), flush=True)


def printable(value: object) -> object:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(v, bytes):
                try:
                    out[k] = v.decode()
                except UnicodeDecodeError:
                    out[f"{k}_base64"] = base64.b64encode(v).decode()
            else:
                out[k] = printable(v)
        return out
    if isinstance(value, list):
        return [printable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


# ------------------------------------------------------------------------------- options


def client_options(f: Callable) -> Callable:
    f = click.option(
        "--timeout-s",
        type=click.FloatRange(0.1),
        default=30.0,
        help="how long one request keeps retrying across leader changes",
    )(f)
    return nodes_option(f)


def outage_option(f: Callable) -> Callable:
    return click.option(
        "--outage-s",
        type=click.FloatRange(0),
        default=300.0,
        help="how long to keep trying while the cluster answers nothing, from the first "
        "unanswered request, saying so every 10 s (inf: for ever); then exit 3",
    )(f)
