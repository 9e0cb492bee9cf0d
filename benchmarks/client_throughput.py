"""What the client library costs and buys, against the bare protocol in the same run.

A real cluster (3 `paxq node` processes, synced RocksDB journals, loopback TCP). Figures:

- publish, bare protocol: one process, `--depth` single-message publishes outstanding on one
  connection (commit.py's closed loop): the baseline;
- publish, Client: `--callers` concurrent `client.publish` calls (the batching publisher,
  sequenced, retried), and one caller alone (every publish waits for its commit);
- consume, bare protocol: claim `--batch` messages, ack them all in one request, repeat;
- consume, WorkerPool: `--concurrency` handlers that do nothing, each delivery acked.

    .venv/bin/python benchmarks/client_throughput.py [--seconds 5] [--messages 20000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import time

import trio
from commit import TOPIC, _exchange, paxq_client, paxq_cluster
from provenance import git_commit

from paxq.client import Client, WorkerPool
from paxq.client.wire import FrameDecoder
from paxq.client.wire.protocol import HELLO

BODY = b"x" * 100


def bare_publish(address, depth: int, seconds: float) -> float:
    out: mp.Queue = mp.Queue()
    proc = mp.Process(target=paxq_client, args=(address, len(BODY), depth, 1.0, seconds, out))
    proc.start()
    count, _, _ = out.get()
    proc.join()
    return count / seconds


async def client_publish(
    seeds: list[str], callers: int, seconds: float, **client_options: object
) -> float:
    """Publishes per second from `callers` concurrent callers of one Client."""
    async with Client(seeds, **client_options) as client:
        await client.publish(TOPIC, BODY)  # connected, leader known
        return await publish_for(client, callers, seconds)


async def publish_for(client: Client, callers: int, seconds: float) -> float:
    """Publishes per second from `callers` concurrent callers of `client` for `seconds`."""
    count = 0
    end = trio.current_time() + seconds

    async def caller() -> None:
        nonlocal count
        while trio.current_time() < end:
            await client.publish(TOPIC, BODY)
            count += 1

    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(caller)
    return count / seconds


def fill(seeds: list[str], queue: str, messages: int) -> None:
    async def run() -> None:
        async with Client(seeds) as client:
            await client.create_queue(queue)
            await client.publish_many(queue, [BODY] * messages)

    trio.run(run)


def bare_consume(address, queue: str, messages: int, batch: int) -> float:
    sock = socket.create_connection(address)
    decoder = FrameDecoder()
    _exchange(sock, decoder, HELLO)
    done, rid = 0, 0
    started = time.perf_counter()
    while done < messages:
        rid += 1
        claimed = _exchange(sock, decoder, {"id": rid, "op": "claim", "topic": queue, "max": batch})
        result = claimed["result"]
        leases = [list(pair) for pair in zip(result["offsets"], result["tokens"], strict=True)]
        rid += 1
        acked = _exchange(sock, decoder, {"id": rid, "op": "ack", "topic": queue, "leases": leases})
        assert acked["ok"], acked
        done += len(leases)
    sock.close()
    return messages / (time.perf_counter() - started)


async def pool_consume(seeds: list[str], queue: str, messages: int, concurrency: int) -> float:
    async with Client(seeds) as client:

        async def handler(delivery) -> None:
            return None

        pool = WorkerPool(client, queue, handler, concurrency=concurrency, prefetch=2 * concurrency)
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run)
            while pool.done < messages:
                await trio.sleep(0.01)
            elapsed = trio.current_time() - started
            pool.stop()
        return messages / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    print(
        f"commit {git_commit()}; 3 nodes, synced RocksDB, {len(BODY)}-byte bodies; "
        f"{args.seconds:g} s windows; depth {args.depth}, callers {args.callers}, "
        f"{args.messages} messages to consume, bare claim batch {args.batch}, "
        f"pool concurrency {args.concurrency}"
    )
    with paxq_cluster() as (_, _, addresses, leader):
        seeds = [f"{h}:{p}" for h, p in addresses]
        base = bare_publish(addresses[leader], args.depth, args.seconds)
        print(f"publish, bare protocol, depth {args.depth:<4} {base:>9,.0f} msg/s   1.00x")
        batched = trio.run(client_publish, seeds, args.callers, args.seconds)
        print(
            f"publish, Client, {args.callers} callers      {batched:>9,.0f} msg/s   "
            f"{batched / base:.2f}x"
        )
        alone = trio.run(client_publish, seeds, 1, args.seconds)
        print(f"publish, Client, 1 caller        {alone:>9,.0f} msg/s   {alone / base:.2f}x")
        fill(seeds, "bare", args.messages)
        bare = bare_consume(addresses[leader], "bare", args.messages, args.batch)
        print(f"consume, bare claim+ack          {bare:>9,.0f} msg/s   1.00x")
        fill(seeds, "pool", args.messages)
        pooled = trio.run(pool_consume, seeds, "pool", args.messages, args.concurrency)
        print(
            f"consume, WorkerPool x{args.concurrency:<3}          {pooled:>9,.0f} msg/s   "
            f"{pooled / bare:.2f}x"
        )


if __name__ == "__main__":
    main()
