"""The fault suite: real `paxq node` processes under a seeded schedule of faults, with
producers, workers and subscribers on the real client, and a checker over what they saw.

Three nodes on 127.0.0.1 (RocksDB, synced writes); every node-to-node link passes through
`proxy.py`, which the schedule cuts, blackholes or bridges. One fault at a time, each for a
drawn while, then a drawn pause:

- kill: kill -9 of a node, or of the leader, restarted after the fault;
- pause: SIGSTOP of the leader past the election timeout, then SIGCONT;
- restart-all: kill -9 of every node, all restarted;
- isolate, blackhole: every link of one node (the leader half the time) cut, or dark;
- one-way: a node's outgoing (or incoming) links cut, the other way open;
- bridge: the leader and one follower cut from each other, the third node reaching both;
- clock: a node restarted with its clock off (libfaketime), within the 500 ms bound or
  beyond it (then it must refuse to lead), until the next fault;
- wipe: a node killed, its data directory emptied, started again without --bootstrap (it
  learns and must not vote until it may).

The workload: producers on a queue ("q") and a topic ("t"); workers on "q" through
`client.consume()`, a `WorkerPool` and bare claims whose handlers sometimes hang past their
leases; a durable subscription on "t" ("s1", through `client.consume()`); three live tails on
"t" from the start. After the fault phase every fault is healed, the producers stop, and the
run waits for every message to be consumed; then `history.check` judges it.

    python tests/faults/runner.py --seconds 300 --seed 1 [--out DIR] [--json]
    make faults SECONDS=300 SEED=1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parent.parent))  # processes.py
sys.path.insert(0, str(Path(__file__).parent))
from history import Ack, Claim, History, Publish, check, stall_window
from processes import start_node

from paxq.client import Client, LeaseLost, PaxqError, WorkerPool
from paxq.client.connection import connect
from paxq.ops.admin import gather_status

NODES = 3
FAULTS = (
    "kill",
    "pause",
    "restart-all",
    "isolate",
    "blackhole",
    "one-way",
    "bridge",
    "clock",
    "wipe",
)
FAKETIME_LIB = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"), Path("libfaketime.so.1"))
#: a holder does not count on the last second of a lease: twice the clock bound (500 ms)
TRUST_MARGIN_S = 1.0
LEASE_S = 4.0


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Settings:
    seconds: float = 60.0
    seed: int = 1
    faults: tuple[str, ...] = FAULTS
    stall_s: float = 3.0
    #: publishes per second per producer task (each producer runs `publishers` tasks)
    publish_rate: float = 40.0
    publishers: int = 4
    drain_s: float = 90.0


@dataclass
class Report:
    settings: dict
    faults: list[dict] = field(default_factory=list)
    #: per fault on the leader: seconds until another node led, and until a publish sent
    #: after the fault was acknowledged
    failovers: list[dict] = field(default_factory=list)
    published: int = 0
    acknowledged: int = 0
    unknown: int = 0
    consumed: int = 0
    tailed: int = 0
    leader_changes: int = 0
    longest_stall_s: float = 0.0
    longest_stall_after: str = ""  # the last fault begun before it
    longest_stall_at: list[float] = field(default_factory=list)
    #: (when seen, node) at each change of leader
    leaders: list[list] = field(default_factory=list)
    anomalies: list[dict] = field(default_factory=list)
    drained: bool = False
    drain_state: dict = field(default_factory=dict)


class Cluster:
    """The nodes, the proxy between them, and what the schedule did to them."""

    def __init__(self, data: Path) -> None:
        self.data = data
        ports = _free_ports(2 * NODES + NODES * (NODES - 1))
        self.peer_ports = ports[:NODES]
        self.client_ports = ports[NODES : 2 * NODES]
        proxy_ports = iter(ports[2 * NODES :])
        self.links = {
            (a, b): next(proxy_ports) for a in range(NODES) for b in range(NODES) if a != b
        }
        self.addresses = [("127.0.0.1", p) for p in self.client_ports]
        self.procs: dict[int, subprocess.Popen] = {}
        self.proxy: subprocess.Popen | None = None
        self.mode = {link: "pass" for link in self.links}
        self.running: set[int] = set()  # started and not killed
        self.paused: set[int] = set()
        self.voting = set(range(NODES))  # as last seen in their status
        self.started: set[int] = set()
        #: bumped at every start and kill: a status asked for before it says nothing now
        self.generation = dict.fromkeys(range(NODES), 0)
        self.clock_off: dict[int, float] = {}
        self.majority_s: list[tuple[float, float]] = []
        self._majority_since: float | None = None
        self.leader: int | None = None
        self.leader_changes = 0
        self._leader_ballot: object = None
        #: (when seen, leader) at each change of leader or ballot
        self.leaders: list[tuple[float, int]] = []

    # ----------------------------------------------------------------------- processes

    def start_proxy(self) -> None:
        spec = {f"{a}>{b}": [port, self.peer_ports[b]] for (a, b), port in self.links.items()}
        self.proxy = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "proxy.py"), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.data / "proxy.log", "ab"),  # noqa: SIM115 (the child writes it)
        )
        assert self.proxy.stdout is not None
        line = self.proxy.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"the proxy did not start: {line!r}")

    def set_link(self, a: int, b: int, mode: str) -> None:
        assert self.proxy is not None and self.proxy.stdin and self.proxy.stdout
        self.proxy.stdin.write(f"{a}>{b} {mode}\n".encode())
        self.proxy.stdin.flush()
        answer = self.proxy.stdout.readline().strip()
        if answer != b"ok":
            raise RuntimeError(f"the proxy refused {a}>{b} {mode}: {answer!r}")
        self.mode[(a, b)] = mode
        self.note()

    def heal_links(self) -> None:
        for (a, b), mode in list(self.mode.items()):
            if mode != "pass":
                self.set_link(a, b, "pass")

    def start(self, node: int, clock_off_s: float = 0.0) -> None:
        bootstrap = node not in self.started
        self.started.add(node)
        peers = ",".join(
            f"{n}=127.0.0.1:{self.peer_ports[n] if n == node else self.links[(node, n)]}"
            for n in range(NODES)
        )
        clients = ",".join(f"{n}=127.0.0.1:{p}" for n, p in enumerate(self.client_ports))
        env = dict(os.environ)
        if clock_off_s:
            env |= {
                "LD_PRELOAD": str(FAKETIME_LIB),
                "FAKETIME": f"{clock_off_s:+.3f}",
                "DONT_FAKE_MONOTONIC": "1",
            }
            self.clock_off[node] = clock_off_s
        else:
            self.clock_off.pop(node, None)
        self.procs[node] = start_node("faults", node, self.data, peers, clients, bootstrap, env=env)
        self.generation[node] += 1
        self.running.add(node)

    def kill(self, node: int) -> None:
        proc = self.procs[node]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.generation[node] += 1
        self.running.discard(node)
        self.paused.discard(node)
        self.voting.discard(node)
        self.note()

    def pause(self, node: int) -> None:
        self.procs[node].send_signal(signal.SIGSTOP)
        self.paused.add(node)
        self.note()

    def resume(self, node: int) -> None:
        self.procs[node].send_signal(signal.SIGCONT)
        self.paused.discard(node)
        self.note()

    def wipe(self, node: int) -> None:
        shutil.rmtree(self.data / f"node{node}", ignore_errors=True)

    def stop_all(self) -> None:
        for proc in [*self.procs.values(), *([self.proxy] if self.proxy else [])]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(10)

    # ------------------------------------------------------------------------ watching

    def majority_connected(self) -> bool:
        """Some majority of voting nodes, running, and linked both ways to each other."""
        live = [n for n in self.voting if n in self.running and n not in self.paused]
        for a in live:
            group = [a] + [
                b for b in live if b != a and self.mode[(a, b)] == self.mode[(b, a)] == "pass"
            ]
            if len(group) > NODES // 2 and all(
                self.mode[(x, y)] == "pass" for x in group for y in group if x != y
            ):
                return True
        return False

    def note(self) -> None:
        """Record when a connected majority begins and ends."""
        now = time.time()
        if self.majority_connected():
            if self._majority_since is None:
                self._majority_since = now
        elif self._majority_since is not None:
            self.majority_s.append((self._majority_since, now))
            self._majority_since = None

    def start_clock(self) -> None:
        """Count connected-majority time from now on only."""
        self.majority_s, self._majority_since = [], None
        self.note()

    def close_majority(self) -> None:
        if self._majority_since is not None:
            self.majority_s.append((self._majority_since, time.time()))
            self._majority_since = None

    async def statuses(self, timeout_s: float = 0.5) -> dict[int, dict]:
        found: dict[int, dict] = {}

        async def one(node: int) -> None:
            with trio.move_on_after(timeout_s):
                [status] = await gather_status([self.addresses[node]])
                if "error" not in status:
                    found[node] = status

        async with trio.open_nursery() as nursery:
            for node in self.running - self.paused:
                nursery.start_soon(one, node)
        return found

    async def watch(self) -> None:
        """Poll every node: which vote, who leads (and count the changes)."""
        while True:
            before = dict(self.generation)
            statuses = await self.statuses()
            statuses = {n: s for n, s in statuses.items() if self.generation[n] == before[n]}
            voting = {n for n, s in statuses.items() if s.get("voting")}
            # A node that does not answer keeps its last state (it may be busy).
            changed = voting | (self.voting & (self.running - set(statuses)))
            if changed != self.voting:
                self.voting = changed
                self.note()
            leaders = [(n, s["ballot"]) for n, s in statuses.items() if s["role"] == "leader"]
            if len(leaders) == 1:
                node, ballot = leaders[0]
                if ballot != self._leader_ballot:
                    if self._leader_ballot is not None:
                        self.leader_changes += 1
                    self.leaders.append((time.time(), node))
                self.leader, self._leader_ballot = node, ballot
            await trio.sleep(0.1)

    async def ready(self, node: int, timeout_s: float = 30.0) -> None:
        with trio.fail_after(timeout_s):
            while node not in await self.statuses(timeout_s=1.0):
                await trio.sleep(0.05)
        self.note()


class Workload:
    def __init__(self, cluster: Cluster, settings: Settings, rng: random.Random) -> None:
        self.cluster = cluster
        self.settings = settings
        self.rng = rng
        self.history = History(queues={"q"})
        self.producing = True
        self.tails: dict[str, list[tuple[int, bytes]]] = {}
        self.drain_state: dict = {}  # what the last look at the end found

    def client(self, **options) -> Client:
        return Client(self.cluster.addresses, **options)

    async def setup(self) -> None:
        async with self.client() as client:
            await client.create_queue("q", exist_ok=True, max_deliveries=1000)
            await client.create_topic("t", exist_ok=True)
            await client.subscribe("t", "s1", start="earliest", exist_ok=True, max_deliveries=1000)

    async def produce(self, name: str, topic: str) -> None:
        period = 1.0 / self.settings.publish_rate

        async def one(task: int, client: Client) -> None:
            for n in range(1 << 40):
                if not self.producing:
                    return
                body = f"{name}.{task}.{n}".encode()
                sent = time.time()
                publishes = self.history.publishes
                publishes.append(Publish(topic, body, sent))  # sent, if never answered
                index = len(publishes) - 1
                with contextlib.suppress(PaxqError):
                    offset = await client.publish(topic, body)
                    publishes[index] = Publish(topic, body, sent, offset, time.time())
                await trio.sleep(period * self.rng.uniform(0.5, 1.5))

        async with self.client() as client, trio.open_nursery() as nursery:
            for task in range(self.settings.publishers):
                nursery.start_soon(one, task, client)

    def _record(self, worker: str, key: str, d, claimed_s: float, ok: bool | None) -> None:
        now = time.time()
        self.history.claims.append(
            Claim(worker, key, d.offset, d.token, claimed_s, d.deadline_ms / 1000, now, d.body)
        )
        if ok is not None:
            self.history.acks.append(Ack(worker, key, d.offset, d.token, ok, now))

    async def _ack(self, d) -> bool | None:
        """True: acked; False: the lease was gone; None: the outcome is not known."""
        for _ in range(3):
            try:
                await d.ack()
                return True
            except LeaseLost:
                return False
            except PaxqError:
                await trio.sleep(0.5)
        return None

    async def _hang(self, share: float, hang_s: float) -> None:
        if self.rng.random() < share:
            await trio.sleep(hang_s)
        else:
            await trio.sleep(self.rng.uniform(0, 0.01))

    async def consume(self, worker: str, topic: str, subscription: str | None = None) -> None:
        key = topic if subscription is None else f"{topic}/{subscription}"
        handlers = trio.CapacityLimiter(8)

        async def handle(d) -> None:
            try:
                claimed = time.time()
                await self._hang(0.01, 2 * LEASE_S)  # kept: the consumer extends the lease
                self._record(worker, key, d, claimed, await self._ack(d))
            finally:
                handlers.release_on_behalf_of(d)

        async with self.client() as client:
            while True:  # a consumer ends on an error a retry does not cure: start another
                async with (
                    client.consume(topic, subscription, prefetch=32, lease_s=LEASE_S) as got,
                    trio.open_nursery() as nursery,
                ):
                    async for d in got:
                        await handlers.acquire_on_behalf_of(d)
                        nursery.start_soon(handle, d)
                await trio.sleep(0.2)

    async def pool(self, worker: str) -> None:
        async def handler(d) -> None:
            claimed = time.time()
            try:
                await self._hang(0.01, 2 * LEASE_S)
            finally:  # its claim, whether the pool's ack then succeeds or not
                self._record(worker, "q", d, claimed, None)

        def acked(d) -> None:
            self.history.acks.append(Ack(worker, "q", d.offset, d.token, True, time.time()))

        async with self.client() as client:
            while True:
                pool = WorkerPool(
                    client, "q", handler, concurrency=4, lease_s=LEASE_S, on_acked=acked
                )
                await pool.run()
                await trio.sleep(0.2)

    async def bare(self, worker: str) -> None:
        """Claims with a short lease and no extension; some handlers hang past it."""
        lease_s = 2.0
        async with self.client() as client:
            while True:
                try:
                    deliveries = await client.claim("q", max=8, lease_s=lease_s, wait_s=1.0)
                except PaxqError:
                    await trio.sleep(0.2)
                    continue
                claimed = time.time()
                for d in deliveries:
                    await self._hang(0.05, lease_s + 1.0)
                    self._record(worker, "q", d, claimed, await self._ack(d))

    async def tail(self, name: str) -> None:
        received = self.tails.setdefault(name, [])
        async with self.client() as client:
            while True:
                start = received[-1][0] + 1 if received else "earliest"
                try:
                    async for m in client.tail("t", start):
                        received.append((m.offset, m.body))
                except PaxqError:  # the cluster gone longer than a request's deadline
                    await trio.sleep(0.2)

    async def drained(self) -> bool:
        """Nothing waits in "q" or "s1" and every tail is at the end of "t" (as the leader
        says: a follower may lag)."""
        leader = self.cluster.leader
        if leader is None:
            return False
        async with Client([self.cluster.addresses[leader]], request_timeout_s=5.0) as client:
            q = await client.describe("q")
            t = await client.describe("t")
        subs = [*q["subscriptions"].values(), t["subscriptions"]["s1"]]
        self.drain_state = {
            "q": q["subscriptions"],
            "s1": t["subscriptions"]["s1"],
            "t_next": t["next"],
            "tails": {name: len(got) for name, got in self.tails.items()},
        }
        if any(s["depth"] or s["in_flight"] or s["delayed"] for s in subs):
            return False
        self.history.consume_to = {"q": q["next"], "t/s1": t["next"]}
        return all(len(r) >= t["next"] for r in self.tails.values())

    async def read_topic(self, topic: str) -> dict[int, list[bytes]]:
        """Each answering node's own log of the topic (a direct connection: a client would
        go to the leader)."""
        logs: dict[int, list[bytes]] = {}
        for node, address in enumerate(self.cluster.addresses):
            entries: list[bytes] = []
            try:
                async with connect(address, timeout_s=5.0) as connection:
                    while True:
                        reply = await connection.request(
                            "read", topic=topic, limit=1000, **{"from": len(entries)}
                        )
                        if reply.get("ok") is not True:
                            break
                        result = reply["result"]
                        entries += [m["body"] for m in result["messages"]]
                        if not result["messages"] or len(entries) >= result["end"]:
                            break
            except (PaxqError, OSError):
                continue
            logs[node] = entries
        return logs


class Schedule:
    def __init__(self, cluster: Cluster, settings: Settings, rng: random.Random) -> None:
        self.cluster = cluster
        self.settings = settings
        self.rng = rng
        #: every fault: when it began, what it was, on which node, and whether that led
        self.applied: list[dict] = []
        self._begun: dict = {}

    def _leader_or_any(self) -> int:
        c = self.cluster
        if c.leader is not None and c.leader in c.running and self.rng.random() < 0.5:
            return c.leader
        return self.rng.choice(sorted(c.running))

    def _begin(self, kind: str, node: int | None) -> None:
        """The fault takes effect now (called just before it does)."""
        was_leader = node is not None and node == self.cluster.leader
        self._begun = {"kind": kind, "node": node, "leader": was_leader, "at": time.time()}

    async def run(self, until: float) -> None:
        while time.time() < until:
            await trio.sleep(self.rng.uniform(1.0, 3.0))
            kind = self.rng.choice(self.settings.faults)
            hold_s = self.rng.uniform(1.5, 5.0)
            self._begun = {}
            what = await self.apply(kind, hold_s)
            self.applied.append({"what": what, **self._begun})
            print(f"  {time.strftime('%H:%M:%S')} {what}", flush=True)
        await self.heal()

    async def heal(self) -> None:
        c = self.cluster
        c.heal_links()
        for node in list(c.paused):
            c.resume(node)
        for node in range(NODES):
            if node in c.clock_off and node in c.running:
                c.kill(node)
            if node not in c.running:
                c.start(node)
                await c.ready(node)

    async def apply(self, kind: str, hold_s: float) -> str:
        c = self.cluster
        rng = self.rng
        await self.heal()
        if kind == "kill":
            node = self._leader_or_any()
            self._begin(kind, node)
            c.kill(node)
            await trio.sleep(hold_s)
            c.start(node)
            await c.ready(node)
            return f"kill -9 node {node} for {hold_s:.1f} s"
        if kind == "pause":
            node = c.leader if c.leader is not None else self._leader_or_any()
            self._begin(kind, node)
            c.pause(node)
            await trio.sleep(hold_s)
            c.resume(node)
            return f"SIGSTOP node {node} for {hold_s:.1f} s"
        if kind == "restart-all":
            self._begin(kind, None)
            for node in range(NODES):
                c.kill(node)
            await trio.sleep(rng.uniform(0.2, 1.0))
            for node in range(NODES):
                c.start(node)
            for node in range(NODES):
                await c.ready(node)
            return "kill -9 every node, restart all"
        if kind in ("isolate", "blackhole"):
            node = self._leader_or_any()
            mode = "cut" if kind == "isolate" else "blackhole"
            self._begin(kind, node)
            for other in range(NODES):
                if other != node:
                    c.set_link(node, other, mode)
                    c.set_link(other, node, mode)
            await trio.sleep(hold_s)
            c.heal_links()
            return f"{kind} node {node} for {hold_s:.1f} s"
        if kind == "one-way":
            node = self._leader_or_any()
            outgoing = rng.random() < 0.5
            self._begin(kind, node)
            for other in range(NODES):
                if other != node:
                    c.set_link(*((node, other) if outgoing else (other, node)), "cut")
            await trio.sleep(hold_s)
            c.heal_links()
            return f"cut {'from' if outgoing else 'to'} node {node} for {hold_s:.1f} s"
        if kind == "bridge":
            leader = c.leader if c.leader is not None else 0
            follower = rng.choice([n for n in range(NODES) if n != leader])
            self._begin(kind, leader)
            c.set_link(leader, follower, "cut")
            c.set_link(follower, leader, "cut")
            await trio.sleep(hold_s)
            c.heal_links()
            return f"bridge: nodes {leader} and {follower} cut from each other, {hold_s:.1f} s"
        if kind == "clock":
            if not FAKETIME_LIB.exists():
                return "clock: skipped (no libfaketime)"
            node = self._leader_or_any()
            off_s = rng.choice((-1, 1)) * rng.choice((0.2, 0.35, 2.0, 5.0))
            self._begin(kind, node)
            c.kill(node)
            c.start(node, clock_off_s=off_s)
            await c.ready(node)
            await trio.sleep(hold_s)
            return f"node {node} restarted with its clock {off_s:+.2f} s off for {hold_s:.1f} s"
        if kind == "wipe":
            node = self._leader_or_any()
            found = await c.statuses(timeout_s=1.0)
            others = set(range(NODES)) - {node}
            if not all(n in found and found[n]["voting"] for n in others):
                return "wipe: skipped (a node still learns: two would be a majority's loss)"
            self._begin(kind, node)
            c.kill(node)
            c.wipe(node)
            c.start(node)
            await c.ready(node)
            await trio.sleep(hold_s)
            return f"node {node} killed, its data directory emptied, restarted"
        raise ValueError(f"no fault {kind!r}")


async def run(settings: Settings, data: Path) -> tuple[Report, History]:
    rng = random.Random(settings.seed)
    cluster = Cluster(data)
    report = Report(settings=asdict(settings))
    workload = Workload(cluster, settings, random.Random(rng.random()))
    schedule = Schedule(cluster, settings, random.Random(rng.random()))
    try:
        cluster.start_proxy()
        for node in range(NODES):
            cluster.start(node)
        for node in range(NODES):
            await cluster.ready(node)
        async with trio.open_nursery() as watching:
            watching.start_soon(cluster.watch)
            await workload.setup()
            cluster.start_clock()  # an election and the topics' creation are no stall
            async with trio.open_nursery() as working:
                working.start_soon(workload.produce, "pq", "q")
                working.start_soon(workload.produce, "pt", "t")
                working.start_soon(workload.consume, "consumer", "q")
                working.start_soon(workload.pool, "pool")
                working.start_soon(workload.bare, "bare")
                working.start_soon(workload.consume, "sub", "t", "s1")
                for i in range(3):
                    working.start_soon(workload.tail, f"tail{i}")
                await schedule.run(time.time() + settings.seconds)
                workload.producing = False
                cluster.close_majority()
                with trio.move_on_after(settings.drain_s):
                    while not await _quiet(workload.drained):
                        await trio.sleep(0.5)
                    report.drained = True
                working.cancel_scope.cancel()
            replicas = await workload.read_topic("t")
            workload.history.logs["t"] = max(replicas.values(), key=len, default=[])
            workload.history.replica_logs["t"] = replicas
            watching.cancel_scope.cancel()
    finally:
        cluster.stop_all()
    h = workload.history
    h.majority_s = cluster.majority_s
    h.subscribers = {name: ("t", got) for name, got in workload.tails.items()}
    report.faults = schedule.applied
    report.failovers = failovers(schedule.applied, cluster.leaders, h)
    report.published = len(h.publishes)
    report.acknowledged = sum(1 for p in h.publishes if p.offset is not None)
    report.unknown = report.published - report.acknowledged
    report.consumed = sum(1 for a in h.acks if a.ok)
    report.tailed = sum(len(got) for _, got in h.subscribers.values())
    report.leader_changes = cluster.leader_changes
    report.drain_state = workload.drain_state
    start, end = stall_window(h)
    report.longest_stall_s = round(end - start, 3)
    during = [f["what"] for f in schedule.applied if f.get("at", end) <= start]
    report.longest_stall_after = during[-1] if during else "no fault"
    report.longest_stall_at = [round(start, 3), round(end, 3)]
    report.leaders = [[round(t, 3), node] for t, node in cluster.leaders]
    anomalies = check(h, trust_margin_s=TRUST_MARGIN_S, stall_s=settings.stall_s)
    report.anomalies = [asdict(a) for a in anomalies]
    return report, h


def failovers(
    applied: list[dict], leaders: list[tuple[float, int]], history: History
) -> list[dict]:
    found = []
    acks = sorted((p.sent_s, p.acked_s) for p in history.publishes if p.acked_s is not None)
    for fault in applied:
        if not fault.get("leader") or fault["kind"] not in (
            "kill",
            "pause",
            "isolate",
            "blackhole",
        ):
            continue
        at = fault["at"]
        new = next((t for t, node in leaders if t > at and node != fault["node"]), None)
        first = min((acked for sent, acked in acks if sent > at), default=None)
        found.append(
            {
                "kind": fault["kind"],
                "new_leader_s": None if new is None else round(new - at, 3),
                "first_ack_s": None if first is None else round(first - at, 3),
            }
        )
    return found


async def _quiet(probe) -> bool:
    try:
        return await probe()
    except PaxqError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="the fault phase (60)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", default=",".join(FAULTS), help="kinds to draw from")
    parser.add_argument("--stall-s", type=float, default=3.0, help="longest stall allowed (3)")
    parser.add_argument("--out", type=Path, help="keep node logs and the report here")
    args = parser.parse_args()
    settings = Settings(
        seconds=args.seconds,
        seed=args.seed,
        faults=tuple(args.faults.split(",")),
        stall_s=args.stall_s,
    )
    data = args.out or Path(tempfile.mkdtemp(prefix="paxq-faults-"))
    data.mkdir(parents=True, exist_ok=True)
    if any(data.iterdir()):
        parser.error(f"--out {data} is not empty: a run starts a new cluster")
    print(f"fault suite: seed {settings.seed}, {settings.seconds:.0f} s, data in {data}")
    report, history = trio.run(run, settings, data)
    (data / "report.json").write_text(json.dumps(asdict(report), indent=2))
    with open(data / "history.json", "w") as out:  # to look into a failed run
        json.dump(asdict(history), out, default=_plain)
    print(summary(report))
    return 1 if report.anomalies or not report.drained else 0


def _failover_lines(found: list[dict]) -> list[str]:
    lines = []
    for kind in sorted({f["kind"] for f in found}):
        of_kind = [f for f in found if f["kind"] == kind]

        def worst(key: str, of_kind=of_kind) -> str:
            values = [f[key] for f in of_kind if f[key] is not None]
            return f"{max(values):.2f} s" if values else "-"

        lines.append(
            f"leader {kind} ({len(of_kind)}x): new leader within {worst('new_leader_s')}, "
            f"first acknowledged publish within {worst('first_ack_s')}"
        )
    return lines


def _plain(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(f"not JSON: {value!r}")


def summary(report: Report) -> str:
    lines = [
        f"faults applied: {len(report.faults)}; leader changes seen: {report.leader_changes}",
        f"publishes: {report.published} ({report.acknowledged} acknowledged, "
        f"{report.unknown} unknown); acks: {report.consumed}; tailed: {report.tailed}",
        f"longest stall with a majority connected: {report.longest_stall_s:.2f} s "
        f"(after: {report.longest_stall_after})",
        *_failover_lines(report.failovers),
        f"drained: {report.drained}" + ("" if report.drained else f" {report.drain_state}"),
    ]
    kinds: dict[str, int] = {}
    for a in report.anomalies:
        kinds[a["kind"]] = kinds.get(a["kind"], 0) + 1
    lines.append(
        "anomalies: " + (", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none")
    )
    lines += [f"  {a['kind']}: {a['detail']}" for a in report.anomalies[:20]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
