"""A real cluster for tests: three `paxq node` processes on 127.0.0.1 with RocksDB journals,
each started and stopped by pid."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import trio

from paxq.client import Client, Unavailable, UnknownOutcome
from paxq.client.connection import connect
from paxq.client.wire import ErrorCode
from paxq.ops.admin import gather_status
from paxq.ops.dev import node_argv


def start_node(
    cluster: str,
    node: int,
    data: Path,
    peers: str,
    clients: str,
    bootstrap: bool,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """One `paxq node` process, its data in `data/node{N}`, its log in `data/node{N}.log`."""
    log = open(data / f"node{node}.log", "ab")  # noqa: SIM115 (the child writes it)
    return subprocess.Popen(
        node_argv(
            cluster, node, data, peers, clients, (*(("--bootstrap",) if bootstrap else ()), *extra)
        ),
        stdout=log,
        stderr=log,
        env=env,
    )


class Cluster:
    def __init__(self, data: Path, ports: list[int]) -> None:
        self.data = data
        self.peers = ",".join(f"{i}=127.0.0.1:{ports[i]}" for i in range(3))
        self.clients = ",".join(f"{i}=127.0.0.1:{ports[3 + i]}" for i in range(3))
        self.client_addresses = [("127.0.0.1", ports[3 + i]) for i in range(3)]
        self.procs: dict[int, subprocess.Popen] = {}
        self.leader_hint = 0  # asked first, as a client that remembers the leader would
        self.created = False
        self.started: set[int] = set()  # nodes started at least once
        self.extra: list[str] = []  # more flags for every node

    def start(self, node: int, bootstrap: bool | None = None) -> None:
        """`bootstrap` None: on the node's first start here, the cluster being new; a node
        started again after its data was removed learns."""
        if bootstrap is None:
            bootstrap = node not in self.started
        self.started.add(node)
        self.procs[node] = start_node(
            "it", node, self.data, self.peers, self.clients, bootstrap, self.extra
        )

    def kill(self, node: int, sig: int = signal.SIGKILL) -> None:
        self.procs[node].send_signal(sig)
        if sig == signal.SIGKILL:
            self.procs[node].wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(10)

    async def statuses(self) -> list[dict]:
        return await gather_status(self.client_addresses)

    async def leader(self, exclude: tuple[int, ...] = ()) -> int:
        """Wait until exactly one reachable node (not excluded) leads; return its id."""
        while True:
            found = [
                s["node"]
                for s in await self.statuses()
                if s.get("role") == "leader" and s["node"] not in exclude
            ]
            if len(found) == 1:
                self.leader_hint = found[0]
                return found[0]
            await trio.sleep(0.05)

    async def append(self, data: bytes) -> int | None:
        """Publish to the topic "log": the offset, or None when the outcome is unknown (no
        acknowledgement)."""
        first = self.client_addresses[self.leader_hint]
        addresses = [first, *[a for a in self.client_addresses if a != first]]
        try:
            async with Client(addresses, request_timeout_s=3.0) as client:
                if not self.created:
                    await client.create_topic("log", exist_ok=True)
                    self.created = True
                return await client.publish("log", data)
        except (UnknownOutcome, Unavailable):
            return None

    async def log_of(self, node: int) -> list[bytes]:
        entries: list[bytes] = []
        async with connect(self.client_addresses[node]) as connection:
            while True:
                reply = await connection.request(
                    "read", topic="log", limit=1000, **{"from": len(entries)}
                )
                if reply.get("error") == ErrorCode.UNKNOWN_TOPIC:
                    return entries  # a node still catching up (a snapshot on its way)
                result = reply["result"]
                assert result["from"] == len(entries)
                entries += [message["body"] for message in result["messages"]]
                if len(entries) >= result["end"]:
                    return entries
