"""The command line's client side: produce, consume, tail and administer topics, queues and
subscriptions through `paxq.client.Client`. Results are JSON, one object per line; a body
that is not UTF-8 is printed as `body_base64`."""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

import anyio
import trio

from paxq.client import Client, Delivery, Message, PaxqError, Tasks, WorkerPool
from paxq.client.connection import default_seeds

NODES_HELP = "client addresses host:port,... (default: PAXQ_NODES, else the paxq dev nodes)"


def seeds(args: argparse.Namespace) -> list[str]:
    if args.nodes:
        return [part.strip() for part in args.nodes.split(",") if part.strip()]
    return default_seeds()


def run(args: argparse.Namespace, body: Callable[[Client], Awaitable[int | None]]) -> int:
    """Run `body` with a client of the cluster; a typed error is printed, exit status 1."""

    async def main() -> int:
        options = {"outage_s": args.outage_s} if hasattr(args, "outage_s") else {}
        async with Client(seeds(args), request_timeout_s=args.timeout_s, **options) as client:
            return await body(client) or 0

    try:
        return trio.run(main)
    except (PaxqError, BaseExceptionGroup) as error:
        found = _paxq_error(error)
        if found is None:
            raise
        print(f"paxq {args.command}: {type(found).__name__}: {found}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _paxq_error(error: BaseException) -> PaxqError | None:
    """The PaxqError itself, or the first one inside task groups' exception groups."""
    if isinstance(error, PaxqError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _paxq_error(inner)
            if found is not None:
                return found
    return None


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


def _delivery(d: Delivery) -> dict:
    return {
        "topic": d.topic,
        "subscription": d.subscription,
        "offset": d.offset,
        "body": d.body,
        "key": d.key,
        "headers": d.headers,
        "deliveries": d.deliveries,
        "token": d.token,
        "published_ms": d.published_ms,
    }


def _message(m: Message) -> dict:
    return {
        "topic": m.topic,
        "offset": m.offset,
        "body": m.body,
        "key": m.key,
        "headers": m.headers,
    }


def _start(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def _options(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


_SUBSCRIPTION_OPTIONS = ("max_deliveries", "dead_letter", "key_ordered", "backoff_base_ms")


# ----------------------------------------------------------------------------------- commands


def _create(args: argparse.Namespace) -> int:
    options = _options(args, ("max_messages", "max_bytes"))
    if args.max_age_s is not None:
        options["max_age_ms"] = round(args.max_age_s * 1000)

    async def body(client: Client) -> None:
        if args.queue:
            options.update(_options(args, _SUBSCRIPTION_OPTIONS))
            created = await client.create_queue(args.topic, exist_ok=args.exist_ok, **options)
        else:
            created = await client.create_topic(args.topic, exist_ok=args.exist_ok, **options)
        emit({"topic": args.topic, "kind": "queue" if args.queue else "topic", "created": created})

    return run(args, body)


def _subscribe(args: argparse.Namespace) -> int:
    async def body(client: Client) -> None:
        created = await client.subscribe(
            args.topic,
            args.subscription,
            start=_start(args.start),
            exist_ok=args.exist_ok,
            **_options(args, _SUBSCRIPTION_OPTIONS),
        )
        emit({"topic": args.topic, "subscription": args.subscription, "created": created})

    return run(args, body)


def _simple(method: str, *fields: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        async def body(client: Client) -> None:
            result = await getattr(client, method)(*(getattr(args, f) for f in fields))
            if isinstance(result, list):
                for item in result:
                    emit(item)
            else:
                emit(result if result is not None else {"ok": True})

        return run(args, body)

    return command


def _purge(args: argparse.Namespace) -> int:
    async def body(client: Client) -> None:
        emit({"purged": await client.purge(args.topic, args.subscription)})

    return run(args, body)


def _publish(args: argparse.Namespace) -> int:
    headers = dict(h.split("=", 1) for h in args.header or ())

    async def body(client: Client) -> None:
        async def one(data: str) -> None:
            offset = await client.publish(
                args.topic, data, key=args.key, headers=headers or None, delay_s=args.delay_s
            )
            emit({"offset": offset})

        if args.data:
            for data in args.data:
                await one(data)
            return
        # One message per line of stdin, sent concurrently (batched), bounded in flight.
        limit = anyio.Semaphore(256)
        async with anyio.create_task_group() as group:
            # Lines are read in a thread: a pipe that pauses (tail -f) must not hold back
            # the publishes already read.
            while line := await anyio.to_thread.run_sync(sys.stdin.readline):
                await limit.acquire()

                async def send(text: str = line.rstrip("\n")) -> None:
                    try:
                        await one(text)
                    finally:
                        limit.release()

                group.start_soon(send)

    return run(args, body)


def _claim(args: argparse.Namespace) -> int:
    async def body(client: Client) -> None:
        deliveries = await client.claim(
            args.topic,
            args.subscription,
            max=args.max,
            lease_s=args.lease_s,
            wait_s=args.wait_s,
        )
        for d in deliveries:
            emit(_delivery(d))

    return run(args, body)


def _settle(op: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        async def body(client: Client) -> None:
            fields: dict = {"topic": args.topic, "leases": [[args.offset, args.token]]}
            if args.subscription:
                fields["subscription"] = args.subscription
            if op == "nack" and args.delay_s is not None:
                fields["delay_ms"] = round(args.delay_s * 1000)
            fields.pop("topic")
            emit(await client.sequenced(op, args.topic, fields))

        return run(args, body)

    return command


def _consume(args: argparse.Namespace) -> int:
    """Print each delivery, then ack it (at least once: a crash between the two prints it
    again on the next run). Stops after --count, or when nothing came for --idle-s."""

    async def body(client: Client) -> None:
        count = 0
        async with client.consume(
            args.topic, args.subscription, prefetch=args.prefetch, lease_s=args.lease_s
        ) as deliveries:
            while args.count is None or count < args.count:
                with anyio.move_on_after(args.idle_s if args.idle_s else float("inf")):
                    delivery = await anext(deliveries, None)
                    if delivery is None:
                        return
                    emit(_delivery(delivery))
                    if not args.no_ack:
                        await delivery.ack()
                    count += 1
                    continue
                return  # idle

    return run(args, body)


def _tail(args: argparse.Namespace) -> int:
    async def body(client: Client) -> None:
        count = 0
        async for message in client.tail(args.topic, _start(args.start)):
            emit(_message(message))
            count += 1
            if args.count is not None and count >= args.count:
                return

    return run(args, body)


def _read(args: argparse.Namespace) -> int:
    async def body(client: Client) -> None:
        messages, _ = await client.read(args.topic, args.start, limit=args.limit)
        for message in messages:
            emit(_message(message))

    return run(args, body)


def _worker(args: argparse.Namespace) -> int:
    """Import MODULE:NAME (a Tasks registry, or an async handler of one delivery) and run
    workers until SIGINT or SIGTERM, then stop gracefully."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    module_name, _, attribute = args.target.partition(":")
    sys.path.insert(0, os.getcwd())
    target = getattr(importlib.import_module(module_name), attribute or "tasks")

    async def body(client: Client) -> None:
        options = {"concurrency": args.concurrency, "lease_s": args.lease_s}
        if isinstance(target, Tasks):
            for queue in args.queue or target.queues:
                await client.create_queue(queue, exist_ok=True)
            pools = target.pools(client, args.queue, **options)
        else:
            if not args.queue:
                raise SystemExit("paxq worker: give --queue for a plain handler")
            pools = [WorkerPool(client, q, target, **options) for q in args.queue]
        names = sorted(target.tasks) if isinstance(target, Tasks) else [args.target]
        print(
            f"paxq worker: {', '.join(names)} on {', '.join(p.topic for p in pools)}, "
            f"{args.concurrency} at a time per queue, through {', '.join(seeds(args))}; "
            "Ctrl-C or SIGTERM stops it after what runs",
            file=sys.stderr,
            flush=True,
        )
        async with anyio.create_task_group() as group:
            for pool in pools:
                group.start_soon(pool.run)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    print("paxq worker: stopping (finishing what runs)", file=sys.stderr)
                    for pool in pools:
                        pool.stop()
                    break
        emit({pool.topic: {"done": pool.done, "failed": pool.failed} for pool in pools})

    return run(args, body)


# ------------------------------------------------------------------------------------ parsers


def outage(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--outage-s",
        dest="outage_s",
        type=float,
        default=300.0,
        help="how long to keep trying while the cluster answers nothing, from the first "
        "unanswered request, saying so every 10 s (default 300; inf: for ever); then exit 1",
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    def parser(name: str, help: str, run: Callable[[argparse.Namespace], int]):
        p = commands.add_parser(name, help=help, description=help)
        p.add_argument("--nodes", help=NODES_HELP)
        p.add_argument(
            "--timeout-s",
            dest="timeout_s",
            type=float,
            default=30.0,
            help="how long to keep retrying across leader changes (default 30)",
        )
        p.set_defaults(run=run)
        return p

    def subscription_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--max-deliveries", dest="max_deliveries", type=int)
        p.add_argument("--dead-letter", dest="dead_letter", help="dead-letter topic")
        p.add_argument("--key-ordered", dest="key_ordered", action="store_true", default=None)
        p.add_argument("--backoff-base-ms", dest="backoff_base_ms", type=int)

    p = parser("create", "create a topic, or a work queue with --queue", _create)
    p.add_argument("topic")
    p.add_argument("--queue", action="store_true", help="a work queue (one shared reader)")
    p.add_argument("--exist-ok", dest="exist_ok", action="store_true")
    p.add_argument("--max-messages", dest="max_messages", type=int)
    p.add_argument("--max-bytes", dest="max_bytes", type=int)
    p.add_argument("--max-age-s", dest="max_age_s", type=float)
    subscription_options(p)

    p = parser("subscribe", "create a durable shared subscription on a topic", _subscribe)
    p.add_argument("topic")
    p.add_argument("subscription")
    p.add_argument("--start", default="latest", help="earliest, latest or an offset")
    p.add_argument("--exist-ok", dest="exist_ok", action="store_true")
    subscription_options(p)

    p = parser("unsubscribe", "delete a subscription", _simple("unsubscribe", "topic", "name"))
    p.add_argument("topic")
    p.add_argument("name")
    p = parser("delete", "delete a topic or queue and all it holds", _simple("delete", "topic"))
    p.add_argument("topic")
    parser("list", "every topic and queue (JSON lines)", _simple("topics"))
    p = parser(
        "describe", "a topic's offsets and its subscriptions' stats", _simple("describe", "topic")
    )
    p.add_argument("topic")
    p = parser("purge", "drop every message of a topic, queue or subscription", _purge)
    p.add_argument("topic")
    p.add_argument("--subscription")

    p = parser("publish", "publish messages (arguments, else one per stdin line)", _publish)
    p.add_argument("topic")
    p.add_argument("data", nargs="*", help="message bodies (text)")
    p.add_argument("--key", help="the message key (text)")
    p.add_argument("--header", action="append", help="name=value (repeatable)")
    p.add_argument("--delay-s", dest="delay_s", type=float, help="not deliverable before")

    p = parser("claim", "lease messages of a queue or subscription (JSON lines)", _claim)
    p.add_argument("topic")
    p.add_argument("--subscription")
    p.add_argument("--max", type=int, default=1)
    p.add_argument("--lease-s", dest="lease_s", type=float, default=30.0)
    p.add_argument("--wait-s", dest="wait_s", type=float, default=0.0, help="long-poll this long")

    settles = {
        "ack": "ack a claimed message by offset and token",
        "nack": "nack a claimed message (redelivered after --delay-s or the backoff; counted)",
        "release": "hand a claimed message back at once, its delivery not counted",
    }
    for op, text in settles.items():
        p = parser(op, text, _settle(op))
        p.add_argument("topic")
        p.add_argument("offset", type=int)
        p.add_argument("token", type=int)
        p.add_argument("--subscription")
        if op == "nack":
            p.add_argument("--delay-s", dest="delay_s", type=float, help="default: backoff")

    p = parser("consume", "print and ack deliveries of a queue or subscription", _consume)
    outage(p)
    p.add_argument("topic")
    p.add_argument("--subscription")
    p.add_argument("--count", type=int, help="stop after this many")
    p.add_argument("--idle-s", dest="idle_s", type=float, help="stop after this long idle")
    p.add_argument("--prefetch", type=int, default=16)
    p.add_argument("--lease-s", dest="lease_s", type=float, default=30.0)
    p.add_argument("--no-ack", dest="no_ack", action="store_true", help="print only")

    p = parser("tail", "follow a topic's messages as they come (JSON lines)", _tail)
    outage(p)
    p.add_argument("topic")
    p.add_argument("--from", dest="start", default="latest", help="earliest, latest or offset")
    p.add_argument("--count", type=int, help="stop after this many")

    p = parser("read", "read retained messages of a topic (JSON lines)", _read)
    p.add_argument("topic")
    p.add_argument("--from", dest="start", type=int, default=0)
    p.add_argument("--limit", type=int, default=20)

    p = parser("worker", "run task workers: MODULE:NAME of a Tasks or a handler", _worker)
    outage(p)
    p.add_argument("target", help="e.g. myapp.tasks:tasks")
    p.add_argument("--queue", action="append", help="queues to work (default: all of Tasks)")
    p.add_argument("--concurrency", type=int, default=8, help="handlers per queue (default 8)")
    p.add_argument("--lease-s", dest="lease_s", type=float, default=30.0)
    p.add_argument(
        "--log-level",
        dest="log_level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="what the worker logs to stderr: handler failures are warnings (default info)",
    )
