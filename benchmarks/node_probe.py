"""Probe of the node's commit path: 3 nodes in ONE process (so one core for all three),
loopback TCP, synced RocksDB journals, `Node.submit` called directly by N concurrent tasks.

Not the cluster benchmark the cluster issue asks for (separate processes, a real client,
PySyncObj beside it); a quick way to see what batching and group commit buy, and to profile.
Baseline, measured in the same run: one synced journal write per 100-byte command.

    .venv/bin/python benchmarks/node_probe.py [--commands 20000] [--concurrency 1 64 512]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import trio
from provenance import git_commit

from paxq.broker.node import Node, NodeSettings, PeerSettings
from paxq.broker.paxos import Config, Role
from paxq.storage import Batch, Identity, RocksJournal


async def _addresses(size: int) -> dict[int, tuple[str, int]]:
    found = {}
    for node in range(size):
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        found[node] = ("127.0.0.1", listener.socket.getsockname()[1])
        await listener.aclose()
    return found


async def probe(concurrency: int, commands: int, size: int) -> tuple[float, int, int]:
    data = Path(tempfile.mkdtemp(prefix="paxq-probe-"))
    addresses = await _addresses(3)
    config = Config(nodes=(0, 1, 2))
    nodes = []
    async with trio.open_nursery() as nursery:
        for i in range(3):
            journal = RocksJournal.open(data / f"n{i}", Identity("probe", i), True)
            node = Node(NodeSettings(PeerSettings("probe", i, addresses), config), journal)
            nodes.append(node)
            await nursery.start(node.run)
        while not any(n.replica.role is Role.LEADER for n in nodes):
            await trio.sleep(0.01)
        leader = next(n for n in nodes if n.replica.role is Role.LEADER)
        payload = b"x" * size
        numbers = iter(range(commands))

        async def worker(w: int) -> None:
            for i in numbers:
                await leader.submit(b"%8d%8d" % (w, i) + payload)

        started = time.perf_counter()
        async with trio.open_nursery() as workers:
            for w in range(concurrency):
                workers.start_soon(worker, w)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    for node in nodes:
        node.journal.close()
    return commands / elapsed, leader.syncs, leader.machine.slots


def synced_writes_per_s(count: int = 300, size: int = 100) -> float:
    journal = RocksJournal.open(Path(tempfile.mkdtemp(prefix="paxq-sync-")), Identity("b", 0))
    started = time.perf_counter()
    for slot in range(count):
        batch = Batch()
        batch.accept(slot, (1, 0), (b"x" * size,))
        journal.write(batch)
    elapsed = time.perf_counter() - started
    journal.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 512])
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    commit = git_commit()
    baseline = synced_writes_per_s(size=args.size)
    print(f"commit {commit}; {args.size}-byte commands; 3 nodes in one process; synced RocksDB")
    print(f"baseline: {baseline:,.0f} synced journal writes/s (one sync per command)")
    for concurrency in args.concurrency:
        commands = args.commands if concurrency > 1 else min(args.commands, 1000)
        rate, syncs, slots = trio.run(probe, concurrency, commands, args.size)
        print(
            f"concurrency {concurrency:4}: {rate:10,.0f} commands/s "
            f"({rate / baseline:5.1f}x baseline), {slots} slots, {syncs} leader syncs"
        )


if __name__ == "__main__":
    main()
