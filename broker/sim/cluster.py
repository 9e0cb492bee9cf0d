"""The whole cluster in one process: replicas of the real core, a faulty network, crashing disks,
skewed clocks and clients, all driven by one seeded event queue.

The runtime contract of `paxos.Replica` is honoured exactly as a real node must: after every
input, the replica's records are persisted to its disk before its messages leave, then committed
slots are applied. A crash discards everything but the disk.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random

import cbor2

from paxq.storage import Identity, KeySpace, MemoryDisk, MemoryJournal

from ..machine import QueueMachine, time_command
from ..machine.snapshots import write_snapshot
from ..paxos import (
    Accepted,
    Config,
    DurableState,
    Prepare,
    Promise,
    PromiseRecord,
    ProposeResult,
    Replica,
    Role,
    Value,
)
from ..persist import batch_of, durable_state
from .checkers import History, Violation
from .oracle import QueueOracle, encode_results
from .settings import SimSettings
from .workload import Consumer, Workload, encode

ReplicaFactory = Callable[[int, Config, Random, DurableState | None], Replica]
#: a machine on a key space; the clock is the replica's own (the real machine never reads it)
MachineFactory = Callable[[KeySpace, Callable[[], int]], QueueMachine]
_CHUNK_BYTES = 4096  # small machine snapshot chunks: records cross chunk bounds


def _queue_machine(keys: KeySpace, clock: Callable[[], int]) -> QueueMachine:
    return QueueMachine(keys)


# Event kinds, in the heap as (time_ms, seq, kind, target, payload).
_DELIVER = 0  # payload: a paxos message for replica `target`
_TICK = 1  # payload: the incarnation the tick belongs to
_REQUEST = 2  # a client request reaches replica `target`; payload (client, command)
_REPLY = 3  # a reply reaches client `target`; payload (command, status, slot or hint)
_CLIENT = 4  # client `target` may issue a command
_RESEND = 5  # client `target` sends `payload` (a command) again
_TIMEOUT = 6  # client `target` gives up on (command, attempt) unless answered
_PARTITION = 7
_CRASH = 8
_RESTART = 9  # payload: unused
_SNAPSHOT = 10  # a snapshot reaches replica `target`; payload (src, slot, chunks)

_OK, _NOT_LEADER, _RETRY = 0, 1, 2


@dataclass
class SimStats:
    deliveries: int = 0
    messages_lost: int = 0
    events: int = 0
    crashes: int = 0
    partitions: int = 0
    elections: int = 0
    commands_issued: int = 0
    commands_acked: int = 0
    commands_abandoned: int = 0
    slots_chosen: int = 0
    sim_ms: float = 0.0
    wall_s: float = 0.0
    liveness_ms: float = 0.0
    #: replicas kept down while the majority had to serve alone
    held_down: int = 0
    snapshots_taken: int = 0
    snapshots_installed: int = 0
    machine_commands: int = 0
    deliveries_checked: int = 0
    stamps: int = 0

    @property
    def deliveries_per_s(self) -> float:
        return self.deliveries / self.wall_s if self.wall_s else 0.0


@dataclass
class SimResult:
    settings: SimSettings
    stats: SimStats
    violation: Violation | None = None
    trace: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.violation is None


class _Node:
    __slots__ = (
        "applied",
        "clock_offset_ms",
        "clock_rate",
        "disk",
        "encoded",
        "id",
        "incarnation",
        "journal",
        "led",
        "machine",
        "replica",
        "sessions",
        "snapshot_at",
        "stamp_seq",
        "stamped_ms",
        "tick_ms",
    )

    def __init__(self, node_id: int, tick_ms: float, rate: float, offset_ms: float) -> None:
        self.id = node_id
        self.tick_ms = tick_ms
        # The replica's wall clock: skewed in rate and offset. Only a leader's stamps in the
        # log may carry it into the machine.
        self.clock_rate = rate
        self.clock_offset_ms = offset_ms
        self.machine: QueueMachine | None = None
        self.stamped_ms = 0
        self.stamp_seq = 0
        self.disk = MemoryDisk()  # survives crashes; the journal on it does not
        self.journal: MemoryJournal | None = None
        self.replica: Replica | None = None
        self.applied: list[Value] = []  # the application: slots applied, in order
        self.encoded: list[bytes] = []  # each applied slot encoded: the snapshot's chunks
        self.snapshot_at = 0  # the slot the last snapshot covers up to
        self.sessions: dict[bytes, int] = {}  # command -> client waiting for it
        self.incarnation = 0
        self.led = None  # last ballot this node led (to count elections)


class _Client:
    __slots__ = ("app", "attempts", "guess", "id", "issued", "ops", "outstanding", "seq")

    def __init__(self, client_id: int, guess: int, app: Consumer) -> None:
        self.id = client_id
        self.app = app
        self.ops: dict[bytes, tuple[str, dict]] = {}  # command -> (op, arguments)
        self.guess = guess  # which replica it believes leads
        self.seq = 0
        self.outstanding: dict[bytes, float] = {}  # command -> issued at
        self.attempts: dict[bytes, int] = {}


class Simulation:
    def __init__(
        self,
        settings: SimSettings,
        replica_factory: ReplicaFactory | None = None,
        machine_factory: MachineFactory | None = None,
    ) -> None:
        self.settings = settings
        self.rng = Random(settings.seed ^ 0x5EED)
        self.config = settings.paxos_config()
        self.factory = replica_factory or Replica
        self.machine_factory = machine_factory or _queue_machine
        self.workload = Workload.from_rng(Random(settings.seed ^ 0xC0FFEE))
        self.oracle = QueueOracle(self.workload.limits())
        self.results: list[bytes] = []  # each slot's results, as the first replica computed them
        self.draining = False
        self.dead_read: dict[str, int] = {}  # dead-letter topic -> next offset to learn
        self.history = History()
        self.stats = SimStats()
        self.now = 0.0
        self.trace: deque[tuple] = deque(maxlen=settings.trace_events)
        self._heap: list[tuple] = []
        self._seq = itertools.count()
        faults = settings.faults
        self.loss = faults.loss
        self.duplicate = faults.duplicate
        self.long_delay = faults.long_delay
        self.crash_after_sync = faults.crash_after_sync
        self.crash_after_promise = faults.crash_after_promise
        self.faulty = True
        self.issuing = True
        #: from this time on (set by the liveness phase) no command may go unanswered
        self.settled_at = float("inf")
        #: replicas the liveness phase keeps down while the majority must serve alone
        self.held_down: set[int] = set()
        #: link[a][b]: messages from replica a reach replica b (partitions may be one-way or
        #: non-transitive, as in a bridge)
        self.link = self._full_links()
        skew = faults.clock_skew
        self.nodes = []
        for i in range(settings.nodes):
            tick_ms = settings.tick_ms * self.rng.uniform(1 - skew, 1 + skew)
            offset_ms = self.rng.uniform(-1000.0, 1000.0) * skew
            self.nodes.append(_Node(i, tick_ms, settings.tick_ms / tick_ms, offset_ms))
        self.clients = [
            _Client(c, self.rng.randrange(settings.nodes), Consumer(c, self.workload.setup()))
            for c in range(settings.clients)
        ]
        for node in self.nodes:
            self._start(node)
        for client in self.clients:
            self._push(self.rng.uniform(0, settings.client_think_ms), _CLIENT, client.id, None)
        if faults.partition_interval_ms:
            self._push(self.rng.expovariate(1 / faults.partition_interval_ms), _PARTITION, 0, None)
        if faults.crash_interval_ms:
            self._push(self.rng.expovariate(1 / faults.crash_interval_ms), _CRASH, 0, None)

    # ---------------------------------------------------------------------------- running

    def run(self) -> SimResult:
        started = time.perf_counter()
        violation = None
        try:
            self._run_events(self.settings.steps)
            self._liveness_phase()
        except Violation as caught:
            violation = caught
        self.stats.wall_s = time.perf_counter() - started
        self.stats.sim_ms = self.now
        self.stats.slots_chosen = len(self.history.chosen)
        self.stats.commands_acked = len(self.history.acked)
        trace = self._format_trace() if violation else []
        return SimResult(self.settings, self.stats, violation, trace)

    def _run_events(self, limit: int, until_ms: float = float("inf")) -> None:
        heap = self._heap
        pop = heapq.heappop
        trace = self.trace.append
        stats = self.stats
        nodes = self.nodes
        for _ in range(limit):
            if not heap or heap[0][0] > until_ms:
                return
            now, _, kind, target, payload = pop(heap)
            self.now = now
            stats.events += 1
            if kind == _DELIVER:
                node = nodes[target]
                replica = node.replica
                if replica is None or not self.link[payload.src][target]:
                    stats.messages_lost += 1
                    continue
                stats.deliveries += 1
                trace((now, target, payload))
                replica.step(payload)
                self._drain(node)
            elif kind == _TICK:
                node = nodes[target]
                if node.replica is None or payload != node.incarnation:
                    continue
                node.replica.tick()
                due = node.machine.due_ms()
                clock = self._clock(node)
                if due is not None and due <= clock and clock - node.stamped_ms >= 50:
                    self._stamp(node)  # a lease or retention is due: time moves without traffic
                self._drain(node)
                self._push(node.tick_ms, _TICK, target, payload)
            else:
                self._other_event(kind, target, payload)

    def _other_event(self, kind: int, target: int, payload) -> None:
        if kind == _REQUEST:
            self.stats.deliveries += 1
            self._on_request(target, payload)
        elif kind == _REPLY:
            self.stats.deliveries += 1
            self._on_reply(target, payload)
        elif kind == _CLIENT:
            self._on_client(target)
        elif kind == _RESEND:
            self._send_request(self.clients[target], payload)
        elif kind == _TIMEOUT:
            client = self.clients[target]
            command, attempt = payload
            if command in client.outstanding and client.attempts[command] == attempt:
                issued = client.outstanding.pop(command)
                del client.attempts[command]
                client.app.on_unknown(*client.ops.pop(command))
                self.stats.commands_abandoned += 1
                if issued >= self.settled_at:
                    raise Violation(
                        "liveness",
                        f"{command!r} issued at {issued:.1f} ms, after the cluster healed and "
                        f"settled, went unanswered for {self.settings.client_timeout_ms:.0f} ms",
                    )
        elif kind == _PARTITION:
            self._on_partition()
        elif kind == _CRASH:
            self._on_crash()
        elif kind == _SNAPSHOT:
            self._on_snapshot(target, payload)
        elif kind == _RESTART:
            node = self.nodes[target]
            if node.replica is None and target not in self.held_down:
                self._start(node)

    def _push(self, delay_ms: float, kind: int, target: int, payload) -> None:
        heapq.heappush(self._heap, (self.now + delay_ms, next(self._seq), kind, target, payload))

    # -------------------------------------------------------------------------- replicas

    def _start(self, node: _Node) -> None:
        node.incarnation += 1
        node.sessions = {}
        node.led = None
        node.journal = MemoryJournal(node.disk, Identity("sim", node.id))
        node.stamp_seq = self.rng.getrandbits(32)
        node.stamped_ms = 0
        # The application restarts from its snapshot; the replica replays the log from its
        # start, and slots the snapshot already covers are skipped (see _drain).
        node.snapshot_at, chunks = node.journal.read_snapshot()
        node.machine = self.machine_factory(node.journal.keyspace(), lambda: self._clock(node))
        applied, machine_chunks = _split(chunks)
        node.encoded = applied
        node.applied = [tuple(cbor2.loads(chunk)) for chunk in applied]
        if node.snapshot_at:
            node.machine.restore(machine_chunks)
            if node.machine.slots != node.snapshot_at:
                raise Violation("snapshot", f"node {node.id}: machine snapshot ends elsewhere")
        node.replica = self.factory(
            node.id,
            self.config,
            Random(self.rng.getrandbits(64)),
            durable_state(node.journal.load()),
        )
        self.trace.append((self.now, node.id, f"start (incarnation {node.incarnation})"))
        self._drain(node)
        self._push(self.rng.uniform(0, node.tick_ms), _TICK, node.id, node.incarnation)

    def _drain(self, node: _Node) -> None:
        """The runtime's turn: persist, then send, then apply and answer clients."""
        replica = node.replica
        ready = replica.ready()
        if ready is None:
            return
        if ready.persist:
            node.journal.write(batch_of(ready.persist))  # one synced write per turn
        if ready.messages:
            rng = self.rng
            faults = self.settings.faults
            low, high = faults.delay_ms_min, faults.delay_ms_max
            push = heapq.heappush
            heap = self._heap
            seq = self._seq
            now = self.now
            on_vote = self.history.on_vote
            for dst, message in ready.messages:
                # Every vote an acceptor casts, checked before the network can lose it (a
                # candidate's Prepare carries the promise it made to itself).
                kind = type(message)
                if kind is Accepted or kind is Promise or kind is Prepare:
                    on_vote(node.id, message.ballot, kind.__name__)
                if rng.random() < self.loss:
                    continue
                delay = low + (high - low) * rng.random()
                if rng.random() < self.long_delay:
                    delay *= 20
                push(heap, (now + delay, next(seq), _DELIVER, dst, message))
                if rng.random() < self.duplicate:
                    push(heap, (now + delay * 2 * rng.random(), next(seq), _DELIVER, dst, message))
        if ready.committed:
            on_apply = self.history.on_apply
            applied = node.applied
            sessions = node.sessions
            machine = node.machine
            for slot, value in ready.committed:
                if slot < len(applied):  # the snapshot restored at start covers it
                    if applied[slot] != value:
                        raise Violation(
                            "agreement", f"node {node.id} replays slot {slot} unlike its snapshot"
                        )
                    continue
                on_apply(node.id, len(applied), slot, value)
                applied.append(value)
                node.encoded.append(cbor2.dumps(list(value)))
                results = machine.apply(slot, value)
                self._check_results(node, slot, value, results)
                if sessions:
                    for command, result in zip(value, results, strict=True):
                        client = sessions.pop(command, None)
                        if client is not None:
                            self._reply(client, command, _OK, (slot, result))
            machine.flush()
        if ready.dropped:
            for command in ready.dropped:
                client = node.sessions.pop(command, None)
                if client is not None:
                    self._reply(client, command, _RETRY, None)
        if ready.snapshot_requests:
            for peer, _ in ready.snapshot_requests:
                # The runtime ships its stored snapshot; the network may lose or delay it.
                view = node.journal.snapshot_view()
                applied, _ = _split(view.chunks)
                _, machine_chunks = QueueMachine.shipped(view, _CHUNK_BYTES)
                chunks = _join(applied, list(machine_chunks)[len(applied) + 1 :])
                if not self.rng.random() < self.loss:
                    self._push(self._delay(), _SNAPSHOT, peer, (node.id, view.slot, chunks))
        every = self.settings.snapshot_every
        if every and replica.applied - node.snapshot_at >= every and self._take_snapshot(node):
            return  # crashed right after the snapshot's sync
        if replica.role is Role.LEADER and replica.ballot != node.led:
            node.led = replica.ballot
            self.stats.elections += 1
            self.trace.append((self.now, node.id, f"leads with ballot {replica.ballot}"))
        if ready.persist:
            crash = self.crash_after_sync
            if any(type(record) is PromiseRecord for record in ready.persist):
                crash = self.crash_after_promise
            if self.rng.random() < crash:
                self._crash(node)

    def _take_snapshot(self, node: _Node) -> bool:
        """Snapshot the applied state and compact the log; True if the node then crashed."""
        replica = node.replica
        slot = replica.applied
        below = max(replica.log_start, slot - self.settings.snapshot_keep)
        chunks = _join(node.encoded[:slot], node.machine.snapshot(_CHUNK_BYTES))
        node.journal.save_snapshot(slot, chunks, below)
        node.machine.snapshot_saved()
        replica.compact(below)
        node.snapshot_at = slot
        self.stats.snapshots_taken += 1
        if self.rng.random() < self.crash_after_sync:
            self._crash(node)
            return True
        return False

    def _on_snapshot(self, target: int, payload: tuple[int, int, list[bytes]]) -> None:
        src, slot, chunks = payload
        node = self.nodes[target]
        replica = node.replica
        if replica is None or not self.link[src][target]:
            self.stats.messages_lost += 1
            return
        self.stats.deliveries += 1
        self.trace.append((self.now, target, f"snapshot from node {src} up to slot {slot}"))
        if slot <= replica.commit:
            return  # stale or duplicated: the replica is already past it
        applied, machine_chunks = _split(chunks)
        values = [tuple(cbor2.loads(chunk)) for chunk in applied]
        for s in range(len(node.applied), slot):  # the snapshot's content is applied too
            self.history.on_apply(node.id, s, s, values[s])
        machine = self.machine_factory(node.journal.keyspace(), lambda: self._clock(node))
        machine.restore(machine_chunks)
        if machine.slots != slot:
            raise Violation("snapshot", f"node {node.id}: a shipped snapshot ends elsewhere")
        # Persist first; only then may the replica act on it (its records below depend on it).
        node.journal.save_snapshot(slot, _join(applied, machine.snapshot(_CHUNK_BYTES)), slot)
        machine.snapshot_saved()
        node.machine = machine
        node.applied, node.encoded, node.snapshot_at = values, list(applied), slot
        if self.rng.random() < self.crash_after_sync:
            self._crash(node)  # stored, but the replica never heard of it: recovery must cope
            return
        if node.sessions:  # commands it was waiting for may be inside: they were chosen
            for s, value in enumerate(values):
                for command in value:
                    client = node.sessions.pop(command, None)
                    if client is not None:
                        self._reply(client, command, _OK, (s, None))
        replica.install_snapshot(slot)
        self.stats.snapshots_installed += 1
        self._drain(node)

    def _stop(self, node: _Node) -> None:
        """The process dies: memory and the open journal go, the disk stays."""
        node.replica = None
        if node.journal is not None:
            node.journal.close()
            node.journal = None

    def _crash(self, node: _Node) -> None:
        self._stop(node)
        self.stats.crashes += 1
        self.trace.append((self.now, node.id, "crash"))
        restart_ms = self.rng.uniform(0, self.settings.faults.restart_ms_max)
        self._push(restart_ms, _RESTART, node.id, None)

    # --------------------------------------------------------------------------- clients

    def _on_client(self, client_id: int) -> None:
        client = self.clients[client_id]
        settings = self.settings
        if self.issuing and len(client.outstanding) < settings.client_outstanding_max:
            client.seq += 1
            op, args = client.app.next(self.rng, self.workload, self.draining)
            command = encode(client.id, client.seq, op, args)
            client.ops[command] = (op, args)
            self.history.on_propose(command)
            self.stats.commands_issued += 1
            client.outstanding[command] = self.now
            client.attempts[command] = 0
            self._send_request(client, command)
        self._push(self.rng.uniform(0, 2 * settings.client_think_ms), _CLIENT, client_id, None)

    def _send_request(self, client: _Client, command: bytes) -> None:
        if command not in client.outstanding:
            return
        attempt = client.attempts[command] + 1
        client.attempts[command] = attempt
        self._push(self.settings.client_timeout_ms, _TIMEOUT, client.id, (command, attempt))
        if self.faulty and self.rng.random() < self.loss:
            return
        if self.rng.random() < self.settings.client_wander:
            client.guess = self.rng.randrange(len(self.nodes))
        self._push(self._delay(), _REQUEST, client.guess, (client.id, command))

    def _on_request(self, node_id: int, payload: tuple[int, bytes]) -> None:
        client_id, command = payload
        node = self.nodes[node_id]
        replica = node.replica
        if replica is None:  # connection refused: the client tries another replica
            self._reply(client_id, command, _NOT_LEADER, None)
            return
        if command in node.sessions:
            return
        if replica.role is Role.LEADER and self._clock(node) > node.stamped_ms:
            self._stamp(node)  # the leader's clock, for the commands that follow
        result = replica.propose(command)
        if result is ProposeResult.QUEUED:
            node.sessions[command] = client_id
            self._drain(node)
        elif result is ProposeResult.NOT_LEADER:
            self._reply(client_id, command, _NOT_LEADER, replica.leader_hint)
        else:
            self._reply(client_id, command, _RETRY, node_id)

    def _reply(self, client_id: int, command: bytes, status: int, detail: int | None) -> None:
        if self.faulty and self.rng.random() < self.loss:
            return
        self._push(self._delay(), _REPLY, client_id, (command, status, detail))

    def _on_reply(self, client_id: int, payload: tuple[bytes, int, int | None]) -> None:
        command, status, detail = payload
        client = self.clients[client_id]
        issued = client.outstanding.get(command)
        if issued is None:
            return  # abandoned, or a late duplicate
        if status == _OK:
            del client.outstanding[command]
            del client.attempts[command]
            slot, result = detail
            self.history.on_ack(command, slot, issued, self.now)
            op, args = client.ops.pop(command)
            client.app.on_result(op, args, result)
            return
        # Never given a slot: safe to send the same command again.
        client.guess = detail if detail is not None else self.rng.randrange(len(self.nodes))
        self._push(self.rng.uniform(1.0, 20.0), _RESEND, client_id, command)

    def _learn_dead_letters(self) -> None:
        """The dead-letter queues' content, from the replica furthest ahead (the checker has
        seen every slot it has applied)."""
        ahead = max(
            (node for node in self.nodes if node.replica is not None),
            key=lambda node: node.machine.slots,
        )
        for topic in self.workload.dead_letter_topics():
            if topic in ahead.machine.topics:
                start = self.dead_read.get(topic, 0)
                for message in _read_all(ahead.machine, topic, start):
                    self.oracle.on_dead_letter(message["headers"], "a dead-letter queue")
                    self.dead_read[topic] = message["offset"] + 1

    def _clock(self, node: _Node) -> int:
        return max(0, int(self.now * node.clock_rate + node.clock_offset_ms))

    def _stamp(self, node: _Node) -> None:
        """The leader proposes its clock as a time entry (if it still leads)."""
        if node.replica.role is not Role.LEADER:
            return
        node.stamp_seq += 1
        now = self._clock(node)
        stamp = time_command(node.id, node.stamp_seq, now)
        self.history.on_propose(stamp)
        if node.replica.propose(stamp) is ProposeResult.QUEUED:
            node.stamped_ms = now
            self.stats.stamps += 1

    def _check_results(self, node: _Node, slot: int, value, results: list[object]) -> None:
        """Every replica computes the same results for a slot (determinism); the first one
        to apply it feeds the queue checker."""
        encoded = encode_results(results)
        known = self.results
        if slot < len(known):
            if known[slot] != encoded:
                raise Violation(
                    "determinism",
                    f"node {node.id} computed other results at slot {slot} than the replica "
                    f"that applied it first",
                )
            return
        if slot != len(known):
            raise Violation("order", f"slot {slot} applied first before slot {len(known)}")
        known.append(encoded)
        oracle = self.oracle
        for command, result in zip(value, results, strict=True):
            if command:  # a no-op fills a hole with an empty command
                oracle.on_command(slot, command, result)
        self.stats.machine_commands = oracle.commands
        self.stats.deliveries_checked = oracle.deliveries

    def _delay(self) -> float:
        faults = self.settings.faults
        return self.rng.uniform(faults.delay_ms_min, faults.delay_ms_max)

    # ---------------------------------------------------------------------------- faults

    def _leader(self) -> int | None:
        """The live replica leading with the highest ballot, if any (faults aim at it)."""
        leaders = [
            node
            for node in self.nodes
            if node.replica is not None and node.replica.role is Role.LEADER
        ]
        return max(leaders, key=lambda node: node.replica.ballot).id if leaders else None

    def _full_links(self) -> list[list[bool]]:
        n = self.settings.nodes
        return [[True] * n for _ in range(n)]

    def _split(self, side: list[int]) -> list[list[bool]]:
        """Links within each side only; side[i] names the side of replica i."""
        n = len(side)
        return [[side[a] == side[b] for b in range(n)] for a in range(n)]

    def _on_partition(self) -> None:
        if not self.faulty:
            return
        n = len(self.nodes)
        rng = self.rng
        leader = self._leader()
        partitioned = any(not ok for row in self.link for ok in row)
        if partitioned or rng.random() < 0.25:
            self.link = self._full_links()
            self.trace.append((self.now, -1, "heal"))
        else:
            choice = rng.random()
            side = [0] * n
            if choice < 0.2 and leader is not None:  # the leader alone, or with one other
                side[leader] = 1
                if rng.random() < 0.5:
                    side[rng.randrange(n)] = 1
                self.link = self._split(side)
            elif choice < 0.3 and leader is not None and n > 2:
                # The leader keeps one replica that also hears the rest: the rest elect a new
                # leader while the old one still has a majority through the shared replica.
                bridge = rng.choice([i for i in range(n) if i != leader])
                for i in range(n):
                    side[i] = 1 if i == leader else 0
                self.link = self._split(side)
                for other in range(n):
                    self.link[bridge][other] = self.link[other][bridge] = True
            elif choice < 0.45:  # one replica alone
                side[rng.randrange(n)] = 1
                self.link = self._split(side)
            elif choice < 0.7:  # a bridge: two halves that only one replica joins
                order = list(range(n))
                rng.shuffle(order)
                bridge, rest = order[0], order[1:]
                for i in rest[: len(rest) // 2]:
                    side[i] = 1
                self.link = self._split(side)
                for other in range(n):
                    self.link[bridge][other] = self.link[other][bridge] = True
            elif choice < 0.8:  # one way: a replica hears the others but is not heard
                victim = rng.randrange(n)
                self.link = self._full_links()
                for other in range(n):
                    if other != victim:
                        self.link[victim][other] = False
            else:  # any split
                self.link = self._split([rng.randrange(2) for _ in range(n)])
            self.stats.partitions += 1
            self.trace.append((self.now, -1, f"partition {self._describe_links()}"))
        faults = self.settings.faults
        self._push(rng.expovariate(1 / faults.partition_interval_ms), _PARTITION, 0, None)

    def _describe_links(self) -> str:
        n = len(self.nodes)
        cut = [f"{a}->{b}" for a in range(n) for b in range(n) if a != b and not self.link[a][b]]
        return "cut " + " ".join(cut)

    def _on_crash(self) -> None:
        if not self.faulty:
            return
        faults = self.settings.faults
        rng = self.rng
        alive = [node.id for node in self.nodes if node.replica is not None]
        leader = self._leader()
        if alive:
            victim = leader if leader is not None and rng.random() < 0.5 else rng.choice(alive)
            self._crash(self.nodes[victim])
        self._push(rng.expovariate(1 / faults.crash_interval_ms), _CRASH, 0, None)

    # -------------------------------------------------------------------------- liveness

    def _liveness_phase(self) -> None:
        """Faults stop. A majority, healed, must answer every new command within the budget
        while a random minority stays down; then the minority returns and everyone converges."""
        settings = self.settings
        healed = self.now
        self.faulty = False
        self.loss = self.duplicate = self.long_delay = 0.0
        self.crash_after_sync = self.crash_after_promise = 0.0
        self.link = self._full_links()
        n = len(self.nodes)
        self.held_down = set(self.rng.sample(range(n), self.rng.randint(0, (n - 1) // 2)))
        for node in self.nodes:
            if node.id in self.held_down:
                self._stop(node)
            elif node.replica is None:
                self._start(node)
        down = sorted(self.held_down)
        self.stats.held_down = len(down)
        self.trace.append((self.now, -1, f"liveness phase: faults off, replicas {down} held down"))
        self.settled_at = healed + settings.liveness_settle_ms
        budget_end = healed + settings.liveness_budget_ms
        event_cap = max(10 * settings.steps, 1_000_000)
        self._run_events(event_cap, until_ms=budget_end)
        # Stop issuing and let every outstanding command be answered (or time out: a violation).
        self.issuing = False
        self._run_events(event_cap, until_ms=self.now + settings.client_timeout_ms + 1_000.0)
        self._check_liveness()
        # The minority returns; every replica must reach the same commit point and log.
        self.settled_at = float("inf")
        returning, self.held_down = self.held_down, set()
        for node_id in sorted(returning):
            self._start(self.nodes[node_id])
        self.trace.append((self.now, -1, f"replicas {down} return"))
        self._run_events(event_cap, until_ms=self.now + settings.liveness_settle_ms)
        self.stats.liveness_ms = self.now - healed
        self._check_converged()
        logs = [node.applied for node in self.nodes]
        self.history.check_durable(logs)
        self.history.check_linearizable()
        self._drain_phase(event_cap)

    def _drain_phase(self, event_cap: int) -> None:
        """Consumers work the queue and the subscriptions empty (no faults): every message
        must end acknowledged or dead-lettered, and all replicas in the same state."""
        self.draining = self.issuing = True
        readers = self.workload.readers()
        deadline = self.now + 60_000.0
        while self.now < deadline:
            self._learn_dead_letters()
            if not self.oracle.unsettled(readers):
                break
            self._run_events(event_cap, until_ms=self.now + 250.0)
        self.issuing = False
        self._run_events(event_cap, until_ms=self.now + self.settings.client_timeout_ms + 1_000.0)
        self._check_converged()
        self._learn_dead_letters()
        self.oracle.check_drained(readers)
        machines = [node.machine for node in self.nodes]
        states = {b"".join(write_snapshot(machine, 1 << 20)) for machine in machines}
        if len(states) != 1:
            raise Violation("determinism", "replicas at the same slot hold different machines")

    def _check_liveness(self) -> None:
        settled = self.settled_at
        for client in self.clients:
            for command, issued in client.outstanding.items():
                if issued >= settled:
                    raise Violation(
                        "liveness",
                        f"{command!r} issued at {issued:.1f} ms is unanswered at {self.now:.1f} ms",
                    )
        progress = sum(1 for issued, _ in self.history.acked.values() if issued >= settled)
        if progress == 0:
            raise Violation("liveness", "no command issued after the heal was acknowledged")

    def _check_converged(self) -> None:
        commits = [node.replica.commit for node in self.nodes]
        lengths = [len(node.applied) for node in self.nodes]
        if len(set(commits)) != 1 or len(set(lengths)) != 1:
            raise Violation(
                "liveness", f"replicas did not converge: commit {commits}, applied {lengths}"
            )

    # ----------------------------------------------------------------------------- trace

    def _format_trace(self) -> list[str]:
        lines = []
        for now, node, what in self.trace:
            who = f"node {node}" if node >= 0 else "network"
            lines.append(f"{now:12.3f} ms  {who:8}  {what}")
        return lines


def _read_all(machine: QueueMachine, topic: str, start: int = 0) -> list[dict]:
    out: list[dict] = []
    while True:
        page = machine.read(topic, start, 1000)
        out += page["messages"]
        if page["next"] >= page["end"]:
            return out
        start = page["next"]


def _join(applied: list[bytes], machine: list[bytes]) -> list[bytes]:
    """A sim snapshot: [how many applied slots follow], the applied slots (the checkers' copy
    of the log), then the machine's chunks."""
    return [cbor2.dumps(len(applied)), *applied, *machine]


def _split(chunks: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    if not chunks:
        return [], []
    count = cbor2.loads(chunks[0])
    return list(chunks[1 : 1 + count]), list(chunks[1 + count :])


def run_seed(
    settings: SimSettings,
    replica_factory: ReplicaFactory | None = None,
    machine_factory: MachineFactory | None = None,
) -> SimResult:
    return Simulation(settings, replica_factory, machine_factory).run()
