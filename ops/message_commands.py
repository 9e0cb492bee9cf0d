"""`paxq publish`, `claim`, `ack`, `nack`, `release`, `reject`, `consume`, `tail` and
`read`: messages in and out."""

from __future__ import annotations

import base64
import binascii
import sys

import anyio
import click

from paxq.client import Client, Delivery, Message, Offset

from .client_run import DELAY_S, LEASE_S, client_options, emit, outage_option, run

#: what a delivery and a message print as
DELIVERY_FIELDS = ("topic", "subscription", "offset", "body", "key", "headers", "deliveries",
                   "token", "published_ms")  # fmt: skip
MESSAGE_FIELDS = ("topic", "offset", "body", "key", "headers")


def _delivery(d: Delivery) -> dict:
    return {name: getattr(d, name) for name in DELIVERY_FIELDS}


def _message(m: Message) -> dict:
    return {name: getattr(m, name) for name in MESSAGE_FIELDS}


def start_value(ctx: click.Context, param: click.Parameter, text: str) -> str | int:
    if text in ("earliest", "latest"):
        return text
    if text.isdigit():
        return int(text)
    raise click.BadParameter(f"{text!r}: earliest, latest or an offset (an integer from 0)")


def _headers(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict:
    headers = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{value!r}: expected NAME=VALUE")
        headers[name] = text
    return headers


@click.command(
    epilog="Examples: paxq publish orders '{\"id\": 7}' --key 7; "
    "seq 100 | paxq publish numbers; paxq publish images --file cat.png"
)
@click.argument("topic")
@click.argument("data", nargs=-1)
@click.option("--file", "files", multiple=True, type=click.File("rb"), help="a body from a file")
@click.option("--base64", "b64", is_flag=True, help="DATA and stdin lines are base64")
@click.option("--key", help="the message key (text)")
@click.option(
    "--header", "headers", multiple=True, callback=_headers, help="NAME=VALUE, repeatable"
)
@click.option("--delay-s", type=DELAY_S, help="not deliverable before this many seconds")
@click.option("--message-id", help="deduplication id: a second one within 2 minutes is not stored")
@client_options
def publish(
    topic: str,
    data: tuple[str, ...],
    files: tuple,
    b64: bool,
    key: str | None,
    headers: dict,
    delay_s: float | None,
    message_id: str | None,
    nodes,
    timeout_s,
) -> int:
    """Publish messages: each DATA argument, each --file, else one per line of stdin (bytes as
    they are, sent concurrently). Prints each one's offset; a duplicate is marked."""
    if message_id and len(data) + len(files) != 1:
        raise click.UsageError("--message-id names one message: give one DATA or one --file")

    def decoded(text: bytes) -> bytes:
        if not b64:
            return text
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error as error:
            raise click.BadParameter(f"not base64 ({error})", param_hint="--base64") from None

    bodies = [decoded(d.encode()) for d in data] + [f.read() for f in files]
    options = {"key": key, "headers": headers or None, "delay_s": delay_s}

    def printed(offset: Offset, line: int | None = None) -> None:
        out: dict = {} if line is None else {"line": line}
        out["offset"] = int(offset)
        if offset.duplicate:
            out["duplicate"] = True
        emit(out)

    async def body(client: Client) -> None:
        async def one(payload: bytes, line: int) -> None:
            printed(await client.publish(topic, payload, **options), line)

        if bodies:  # in order, in as few requests as their sizes allow
            messages = [{"body": b, "message_id": message_id, **options} for b in bodies]
            for offset in await client.publish_many(topic, messages):
                printed(offset)
            return
        # One message per line of stdin, sent concurrently (batched), bounded in flight.
        limit = anyio.Semaphore(256)
        lines = 0
        async with anyio.create_task_group() as group:
            # Lines are read in a thread: a pipe that pauses (tail -f) must not hold back
            # the publishes already read.
            while line := await anyio.to_thread.run_sync(sys.stdin.buffer.readline):
                lines += 1
                payload = decoded(line.rstrip(b"\r\n") if b64 else line.rstrip(b"\n"))
                await limit.acquire()

                async def send(payload: bytes = payload, number: int = lines) -> None:
                    try:
                        await one(payload, number)
                    finally:
                        limit.release()

                group.start_soon(send)

    return run("publish", nodes, timeout_s, body)


@click.command(epilog="Example: paxq claim orders --max 10 --lease-s 60")
@click.argument("topic")
@click.option("--subscription", help="a topic's subscription (not for a queue)")
@click.option("--max", "max_", type=click.IntRange(1, 1000), default=1, help="messages at most")
@click.option("--lease-s", type=LEASE_S, default=30.0, help="how long they are held")
@click.option(
    "--wait-s", type=click.FloatRange(0), default=0.0, help="wait this long for a first one"
)
@client_options
def claim(topic, subscription, max_, lease_s, wait_s, nodes, timeout_s) -> int:
    """Lease messages of a queue or subscription (JSON lines with offset and token, for ack,
    nack, release and reject)."""

    async def body(client: Client) -> None:
        taken = await client.claim(topic, subscription, max=max_, lease_s=lease_s, wait_s=wait_s)
        for d in taken:
            emit(_delivery(d))

    return run("claim", nodes, timeout_s, body)


def _settle(op: str, text: str) -> click.Command:
    @click.command(op, help=text, epilog=f"Example: paxq {op} orders 17 3 (offset, token)")
    @click.argument("topic")
    @click.argument("offset", type=click.IntRange(0))
    @click.argument("token", type=click.IntRange(0))
    @click.option("--subscription", help="a topic's subscription (not for a queue)")
    @client_options
    def command(topic, offset, token, subscription, nodes, timeout_s, **options) -> int:
        async def body(client: Client) -> None:
            fields: dict = {"leases": [[offset, token]]}
            if subscription:
                fields["subscription"] = subscription
            if options.get("delay_s") is not None:
                fields["delay_ms"] = round(options["delay_s"] * 1000)
            if options.get("error"):
                fields["error"] = options["error"][:512]
            emit(await client.sequenced(op, topic, fields))

        return run(op, nodes, timeout_s, body)

    if op == "nack":
        command = click.option(
            "--delay-s", type=DELAY_S, help="redelivered after this [default: the backoff]"
        )(command)
    if op in ("nack", "reject"):
        command = click.option("--error", help="why, kept in a dead letter's x-death-error")(
            command
        )
    return command


SETTLES = [
    _settle("ack", "Ack a claimed message by offset and token: done, never delivered again."),
    _settle("nack", "Nack a claimed message: redelivered after --delay-s or the backoff, counted."),
    _settle("release", "Hand a claimed message back at once, its delivery not counted."),
    _settle("reject", "Dead-letter a claimed message at once (no retry can mend it)."),
]


@click.command(epilog="Example: paxq consume orders --count 10; paxq consume signups -s audit")
@click.argument("topic")
@click.option("-s", "--subscription", help="a topic's subscription (not for a queue)")
@click.option("--count", type=click.IntRange(1), help="stop after this many")
@click.option(
    "--idle-s", type=click.FloatRange(0, min_open=True), help="stop after this long with none"
)
@click.option("--prefetch", type=click.IntRange(1, 1000), default=16, help="leases held ahead")
@click.option("--lease-s", type=LEASE_S, default=30.0, help="each lease, kept extended")
@click.option("--no-ack", is_flag=True, help="print only: they come back after the lease")
@outage_option
@client_options
def consume(
    topic, subscription, count, idle_s, prefetch, lease_s, no_ack, outage_s, nodes, timeout_s
) -> int:
    """Print each delivery of a queue or subscription as JSON, then ack it (at least once: a
    crash between the two prints it again on the next run)."""

    async def body(client: Client) -> None:
        done = 0
        async with client.consume(
            topic, subscription, prefetch=prefetch, lease_s=lease_s
        ) as deliveries:
            while count is None or done < count:
                with anyio.move_on_after(idle_s if idle_s is not None else float("inf")):
                    delivery = await anext(deliveries, None)
                    if delivery is None:
                        return
                    emit(_delivery(delivery))
                    if not no_ack:
                        await delivery.ack()
                    done += 1
                    continue
                return  # idle

    return run("consume", nodes, timeout_s, body, outage_s)


@click.command(epilog="Example: paxq tail prices --from earliest --count 5")
@click.argument("topic")
@click.option(
    "--from", "start", default="latest", callback=start_value, help="earliest, latest or an offset"
)
@click.option("--count", type=click.IntRange(1), help="stop after this many")
@outage_option
@client_options
def tail(topic, start, count, outage_s, nodes, timeout_s) -> int:
    """Follow a topic's messages as they come (JSON lines); no state on the server."""

    async def body(client: Client) -> None:
        seen = 0
        async for message in client.tail(topic, start):
            emit(_message(message))
            seen += 1
            if count is not None and seen >= count:
                return

    return run("tail", nodes, timeout_s, body, outage_s)


@click.command(epilog="Example: paxq read prices --from 100 --limit 10")
@click.argument("topic")
@click.option("--from", "start", type=click.IntRange(0), default=0, help="the first offset")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, help="messages at most")
@client_options
def read(topic, start, limit, nodes, timeout_s) -> int:
    """Read retained messages of a topic (JSON lines)."""

    async def body(client: Client) -> None:
        messages, _ = await client.read(topic, start, limit=limit)
        for message in messages:
            emit(_message(message))

    return run("read", nodes, timeout_s, body)
