"""`paxq create`, `subscribe`, `unsubscribe`, `delete`, `list`, `describe`, `purge` and
`redrive`: the topics, queues and subscriptions of the cluster."""

from __future__ import annotations

from collections.abc import Callable

import click

from paxq.client import Client

from .client_run import client_options, emit, run
from .message_commands import start_value

_SUBSCRIPTION_OPTIONS = ("max_deliveries", "dead_letter", "key_ordered", "backoff_base_ms")


def subscription_options(f: Callable) -> Callable:
    for option in reversed(
        [
            click.option(
                "--max-deliveries",
                type=click.IntRange(0),
                help="deliveries before the dead letters; 0 no limit [default: 10]",
            ),
            click.option("--dead-letter", help="dead-letter topic [default: NAME.dlq]"),
            click.option(
                "--key-ordered", is_flag=True, default=None, help="one message per key out"
            ),
            click.option(
                "--backoff-base-ms",
                type=click.IntRange(0),
                help="the first redelivery's delay, doubling each time [default: 1000]",
            ),
        ]
    ):
        f = option(f)
    return f


def _given(options: dict, names: tuple[str, ...]) -> dict:
    return {name: options[name] for name in names if options.get(name) is not None}


@click.command(epilog="Examples: paxq create orders --queue --max-deliveries 5; paxq create prices")
@click.argument("name")
@click.option("--queue", is_flag=True, help="a work queue (one shared reader), not a topic")
@click.option("--exist-ok", is_flag=True, help="no error if it exists")
@click.option("--max-messages", type=click.IntRange(1), help="retained at most (a queue: refuses)")
@click.option("--max-bytes", type=click.IntRange(1), help="retained bytes at most")
@click.option("--max-age-s", type=click.FloatRange(0), help="retention by age (a topic: 7 days)")
@subscription_options
@client_options
def create(name: str, queue: bool, exist_ok: bool, nodes, timeout_s, **options) -> int:
    """Create a topic (a retained log for subscriptions and tails), or a queue with --queue."""
    retention = _given(options, ("max_messages", "max_bytes"))
    if options["max_age_s"] is not None:
        retention["max_age_ms"] = round(options["max_age_s"] * 1000)
    subscription = _given(options, _SUBSCRIPTION_OPTIONS)
    if subscription and not queue:
        flags = ", ".join("--" + k.replace("_", "-") for k in subscription)
        raise click.UsageError(
            f"{flags}: for a queue (add --queue) or a topic's subscription (paxq subscribe)"
        )

    async def body(client: Client) -> None:
        if queue:
            made = await client.create_queue(name, exist_ok=exist_ok, **retention, **subscription)
        else:
            made = await client.create_topic(name, exist_ok=exist_ok, **retention)
        emit({"topic": name, "kind": "queue" if queue else "topic", "created": made})

    return run("create", nodes, timeout_s, body)


@click.command(epilog="Example: paxq subscribe signups welcome-mail --start earliest")
@click.argument("topic")
@click.argument("subscription")
@click.option(
    "--start", default="latest", callback=start_value, help="earliest, latest or an offset"
)
@click.option("--exist-ok", is_flag=True, help="no error if it exists")
@subscription_options
@client_options
def subscribe(topic: str, subscription: str, start, exist_ok, nodes, timeout_s, **options) -> int:
    """Create a durable shared subscription on a topic (its readers share its messages)."""

    async def body(client: Client) -> None:
        made = await client.subscribe(
            topic, subscription, start=start, exist_ok=exist_ok, **_given(options, tuple(options))
        )
        emit({"topic": topic, "subscription": subscription, "created": made})

    return run("subscribe", nodes, timeout_s, body)


@click.command(epilog="Example: paxq unsubscribe signups welcome-mail")
@click.argument("topic")
@click.argument("subscription")
@client_options
def unsubscribe(topic: str, subscription: str, nodes, timeout_s) -> int:
    """Delete a subscription and its state."""

    async def body(client: Client) -> None:
        emit(await client.unsubscribe(topic, subscription))

    return run("unsubscribe", nodes, timeout_s, body)


@click.command(epilog="Example: paxq delete prices")
@click.argument("topic")
@client_options
def delete(topic: str, nodes, timeout_s) -> int:
    """Delete a topic or queue and all it holds."""

    async def body(client: Client) -> None:
        emit(await client.delete(topic))

    return run("delete", nodes, timeout_s, body)


@click.command("list", epilog="Example: paxq list | jq -r .topic")
@client_options
def list_(nodes, timeout_s) -> int:
    """Every topic and queue, one JSON object each."""

    async def body(client: Client) -> None:
        for entry in await client.topics():
            emit(entry)

    return run("list", nodes, timeout_s, body)


@click.command(epilog="Example: paxq describe orders")
@click.argument("topic")
@client_options
def describe(topic: str, nodes, timeout_s) -> int:
    """A topic's offsets and retention, and each subscription's depth and counters."""

    async def body(client: Client) -> None:
        emit(await client.describe(topic))

    return run("describe", nodes, timeout_s, body)


@click.command(epilog="Example: paxq purge orders")
@click.argument("topic")
@click.option("--subscription", help="only this subscription's backlog")
@client_options
def purge(topic: str, subscription: str | None, nodes, timeout_s) -> int:
    """Drop every message of a queue, or of a subscription's backlog."""

    async def body(client: Client) -> None:
        emit({"purged": await client.purge(topic, subscription)})

    return run("purge", nodes, timeout_s, body)


@click.command(epilog="Examples: paxq redrive orders.dlq; paxq redrive signups.audit.dlq --to q")
@click.argument("dead_letters")
@click.option("--to", help="where they go [default: where each died; needed for a subscription's]")
@click.option("--max", "max_", type=click.IntRange(1), help="move this many [default: all]")
@client_options
def redrive(dead_letters: str, to: str | None, max_: int | None, nodes, timeout_s) -> int:
    """Move dead letters back to where they died (as first deliveries, without their x-death
    headers), or to --to; prints how many moved."""

    async def body(client: Client) -> None:
        emit({"moved": await client.redrive(dead_letters, to=to, max=max_)})

    return run("redrive", nodes, timeout_s, body)
