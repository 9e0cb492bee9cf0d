"""A real cluster: three `paxq node` processes on 127.0.0.1 with RocksDB journals.

Each phase is bounded in time; every process started is stopped by pid at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from paxq.client import Client, ConnectionLost, Unavailable, UnknownOutcome
from paxq.client.connection import connect
from paxq.ops.admin import gather_status

pytestmark = pytest.mark.slow
PHASE_S = 60


class Cluster:
    def __init__(self, data: Path, ports: list[int]) -> None:
        self.data = data
        self.peers = ",".join(f"{i}=127.0.0.1:{ports[i]}" for i in range(3))
        self.clients = ",".join(f"{i}=127.0.0.1:{ports[3 + i]}" for i in range(3))
        self.client_addresses = [("127.0.0.1", ports[3 + i]) for i in range(3)]
        self.procs: dict[int, subprocess.Popen] = {}
        self.leader_hint = 0  # asked first, as a client that remembers the leader would
        self.created = False
        self.extra: list[str] = []  # more flags for every node

    def start(self, node: int) -> None:
        log = open(self.data / f"node{node}.log", "ab")  # noqa: SIM115 (the child writes it)
        self.procs[node] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "paxq.ops.cli",
                "node",
                "--cluster",
                "it",
                "--id",
                str(node),
                "--data",
                str(self.data / f"node{node}"),
                "--peers",
                self.peers,
                "--clients",
                self.clients,
                *self.extra,
            ],
            stdout=log,
            stderr=log,
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
                result = reply["result"]
                assert result["from"] == len(entries)
                entries += [message["body"] for message in result["messages"]]
                if len(entries) >= result["end"]:
                    return entries


@pytest.fixture
def cluster(tmp_path: Path):
    ports = []
    import socket

    for _ in range(6):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    c = Cluster(tmp_path, ports)
    try:
        yield c
    finally:
        c.stop_all()


async def write_under_load(
    cluster: Cluster, acked: dict[int, bytes], count: int, tag: str, during=None
) -> None:
    """`count` appends from 4 concurrent writers; `during` runs once a third are acked."""
    started = trio.Event()

    async def writer(w: int) -> None:
        for i in range(count // 4):
            data = f"{tag}-{w}-{i}".encode()
            offset = await cluster.append(data)
            if offset is not None:
                acked[offset] = data
            if len(acked) >= count // 3:
                started.set()

    async with trio.open_nursery() as nursery:
        for w in range(4):
            nursery.start_soon(writer, w)
        if during is not None:
            await started.wait()
            await during()


async def all_hold(cluster: Cluster, acked: dict[int, bytes], nodes=(0, 1, 2)) -> None:
    """Every acknowledged entry stands at its offset on every given node (waits for catch-up)."""
    while True:
        try:
            logs = {n: await cluster.log_of(n) for n in nodes}
        except (OSError, TimeoutError, ConnectionLost):  # a node still starting
            logs = {}
        if logs and all(len(log) > max(acked) for log in logs.values()):
            break
        await trio.sleep(0.1)
    for node, log in logs.items():
        for offset, data in acked.items():
            assert log[offset] == data, f"node {node} lost acknowledged entry {offset}"
    assert logs[nodes[0]][: max(acked) + 1] == logs[nodes[-1]][: max(acked) + 1]


async def test_acknowledged_entries_survive_kills_pauses_and_a_full_restart(cluster) -> None:
    acked: dict[int, bytes] = {}
    for node in range(3):
        cluster.start(node)
    with trio.fail_after(PHASE_S):
        first = await cluster.leader()

    # kill -9 the leader under load: the others elect a new one and go on.
    acked_at_kill = []

    async def kill_leader() -> None:
        acked_at_kill.append(len(acked))
        cluster.kill(first)

    with trio.fail_after(PHASE_S):
        await write_under_load(cluster, acked, 400, "a", during=kill_leader)
        second = await cluster.leader(exclude=(first,))
    assert second != first
    assert len(acked) > acked_at_kill[0], "the cluster kept committing after the kill"

    # The killed node returns and catches up with everything acknowledged.
    cluster.start(first)
    with trio.fail_after(PHASE_S):
        await all_hold(cluster, acked)

    # SIGSTOP the leader (paused, not dead): the rest move on; resumed, it steps down.
    cluster.kill(second, signal.SIGSTOP)
    with trio.fail_after(PHASE_S):
        third = await cluster.leader(exclude=(second,))
        await write_under_load(cluster, acked, 100, "b")
    cluster.kill(second, signal.SIGCONT)
    with trio.fail_after(PHASE_S):
        while True:
            roles = {s["node"]: s["role"] for s in await cluster.statuses() if "role" in s}
            if roles.get(second) == "follower" and list(roles.values()).count("leader") == 1:
                break
            await trio.sleep(0.05)
        await all_hold(cluster, acked)
    assert third != second

    # Kill every node at once, restart all: nothing acknowledged is lost.
    for node in range(3):
        cluster.kill(node)
    for node in range(3):
        cluster.start(node)
    with trio.fail_after(PHASE_S):
        await cluster.leader()
        await all_hold(cluster, acked)
        offset = await cluster.append(b"after everything")
    assert offset is not None and offset > max(acked)
    assert os.path.isdir(cluster.data / "node0")


async def test_a_follower_behind_a_snapshot_catches_up_after_a_restart(cluster) -> None:
    cluster.extra = ["--snapshot-every", "16", "--snapshot-keep", "4"]
    acked: dict[int, bytes] = {}
    for node in range(3):
        cluster.start(node)
    with trio.fail_after(PHASE_S):
        leader = await cluster.leader()
        await write_under_load(cluster, acked, 40, "a")
    follower = (leader + 1) % 3
    with trio.fail_after(PHASE_S):
        await all_hold(cluster, acked)
        behind = {s["node"]: s for s in await cluster.statuses() if "node" in s}[follower]["commit"]
    cluster.kill(follower)
    with trio.fail_after(PHASE_S):
        await write_under_load(cluster, acked, 400, "b")
        leader = await cluster.leader()
        status = {s["node"]: s for s in await cluster.statuses() if "node" in s}[leader]
    assert status["log_start"] > behind, "the slots the follower lacks are compacted away"

    cluster.start(follower)
    with trio.fail_after(PHASE_S):
        await all_hold(cluster, acked)
        status = {s["node"]: s for s in await cluster.statuses() if "node" in s}[follower]
    assert status["snapshots"]["installed"] >= 1
    assert status["snapshot"] > behind
