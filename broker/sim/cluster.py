"""The whole cluster in one process: node cores (the very `NodeCore` production runs), a
faulty network, disks that lose unsynced writes, skewed clocks and clients, all driven by one
seeded event queue.

The simulator is a driver of the core like the trio runtime, and nothing more: it hands each
node's core its inputs, carries out its effects (writes to the node's simulated disk, which
complete later and in order; messages over the faulty network; replies to clients; snapshot
chunks read from the stored snapshot), and checks what it sees. A crash keeps the disk's
synced writes and a prefix of the rest.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random

from paxq.storage import CorruptRecord, Identity, KeySpace, MemoryDisk, MemoryJournal

from ..machine import QUEUE_SUBSCRIPTION, Limits, QueueMachine
from ..machine.snapshots import write_snapshot
from ..machine.topics import QUEUE, payload_key
from ..node.core import NOT_LEADER, OK, TOO_LARGE, UNKNOWN, CoreSettings, NodeCore
from ..node.machines import SnapshotInvalid
from ..node.transfer import SnapshotChunk
from ..paxos import (
    Accepted,
    Config,
    DurableState,
    Prepare,
    Promise,
    PromiseRecord,
    Replica,
    Role,
    Value,
)
from .checkers import History, Violation
from .oracle import QueueOracle, encode_results
from .recorder import Recorder
from .settings import SimSettings
from .workload import Consumer, Workload, encode

ReplicaFactory = Callable[[int, Config, Random, DurableState | None], Replica]
#: a machine on a key space; the clock is the replica's own (the real machine never reads it)
MachineFactory = Callable[[KeySpace, Callable[[], int]], QueueMachine]
CoreFactory = type[NodeCore]
_CHUNK_BYTES = 16384  # small snapshot chunks: records cross chunk bounds


#: pieces of arrays small enough that a seed's topics fill many (the real ones hold 16,384)
#: small bounds, so that a run crosses them: array pieces, and message ids forgotten by age
#: (300 ms) and by number (8 a topic)
SIM_LIMITS = Limits(array_piece_messages=16, dedup_window_ms=300, dedup_ids_max=8)


def _queue_machine(keys: KeySpace, clock: Callable[[], int]) -> QueueMachine:
    return QueueMachine(keys, SIM_LIMITS)


# Event kinds, in the heap as (time_ms, seq, kind, target, payload).
_DELIVER = 0  # payload: a peer message (paxos, or a snapshot chunk or ack) for `target`
_TICK = 1  # payload: the incarnation the tick belongs to
_REQUEST = 2  # a client request reaches replica `target`; payload (client, command)
_REPLY = 3  # a reply reaches client `target`; payload (command, status, slot or hint)
_CLIENT = 4  # client `target` may issue a command
_RESEND = 5  # client `target` sends `payload` (a command) again
_TIMEOUT = 6  # client `target` gives up on (command, attempt) unless answered
_PARTITION = 7
_CRASH = 8
_RESTART = 9  # payload: unused
_WRITTEN = 10  # a write of `target` completes; payload (incarnation, write, position)
_CRASH_NODE = 11  # `target` crashes (a write in flight); payload: its incarnation then
_TURN = 12  # `target`'s core has committed slots left to apply; payload: its incarnation
#: a turn of the node's loop, as the sim counts it: what a backlog waits before its next take
_TURN_MS = 0.1

_OK, _NOT_LEADER, _RETRY, _UNKNOWN, _REFUSED = 0, 1, 2, 3, 4
#: the wall clocks start here (a real date), so that no offset makes one read below zero
_EPOCH_MS = 1_700_000_000_000


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
    commands_refused: int = 0  # over command_bytes_max
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
    writes: int = 0
    #: unsynced journal writes and unflushed key-space writes a crash undid
    writes_lost: int = 0
    write_failures: int = 0
    #: restarts refused because a stored record failed its checksum
    corrupt_refused: int = 0
    snapshot_chunks: int = 0
    #: crashes that also replaced the disk with a blank one
    wipes: int = 0

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
        "clock_base_ms",
        "clock_offset_ms",
        "clock_rate",
        "core",
        "disk",
        "id",
        "incarnation",
        "journal",
        "led",
        "queued_done",
        "shipments",
        "tick_ms",
        "turn_due",
        "wiped",
        "written_at",
    )

    def __init__(self, node_id: int, tick_ms: float, rate: float, offset_ms: float) -> None:
        self.id = node_id
        self.tick_ms = tick_ms
        # The replica's wall clock: skewed in rate and offset. Only a leader's stamps in the
        # log may carry it into the machine.
        self.clock_rate = rate
        self.clock_base_ms = offset_ms  # where time sync keeps it
        self.clock_offset_ms = offset_ms
        self.disk = MemoryDisk()  # survives crashes; the journal on it does not
        self.journal: MemoryJournal | None = None
        self.core: NodeCore | None = None
        self.incarnation = 0
        self.turn_due = False  # a _TURN event is queued
        self.wiped = False  # its disk was replaced by a blank one at least once
        self.led = None  # last ballot this node led (to count elections)
        self.written_at = 0.0  # when the write the disk is doing completes
        self.queued_done: float | None = None  # and the one gathering the writes meanwhile
        #: peer -> (slot, count, the chunks, the window sent and not yet acknowledged)
        self.shipments: dict[int, tuple[int, int, object, dict[int, bytes]]] = {}

    @property
    def machine(self) -> Recorder:
        return self.core.machine

    @property
    def log(self) -> list[Value]:
        return self.core.machine.log


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
        core_factory: CoreFactory | None = None,
    ) -> None:
        self.settings = settings
        self.rng = Random(settings.seed ^ 0x5EED)
        self.config = settings.paxos_config()
        self.factory = replica_factory or Replica
        self.machine_factory = machine_factory or _queue_machine
        self.core_factory = core_factory or NodeCore
        self.core_settings = CoreSettings(
            # Clients time out on their own; a node answers "unknown" later than they do.
            command_timeout_ticks=int(4 * settings.client_timeout_ms / settings.tick_ms) + 1,
            snapshot_every_slots=settings.snapshot_every,
            snapshot_keep_slots=settings.snapshot_keep,
            snapshot_chunk_bytes=_CHUNK_BYTES,
            snapshot_window_chunks=4,
            snapshot_ack_timeout_ticks=20,
            stamp_idle_ms=50,
            apply_commands_max=settings.apply_commands_max,
        )
        self.workload = Workload.from_rng(Random(settings.seed ^ 0xC0FFEE))
        self.oracle = QueueOracle(self.workload.limits(), SIM_LIMITS)
        self.results: list[bytes] = []  # each slot's results, as the first replica computed them
        self.draining = False
        self.dead_read: dict[str, int] = {}  # dead-letter topic -> next offset to learn
        self.history = History()
        self.durable_slots: set[int] = set()  # acknowledged slots found durable at a quorum
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
        self.write_fail = faults.write_fail
        self.corrupt_read = faults.corrupt_read
        self.crash_in_flight = faults.crash_in_flight
        self.wipe = faults.wipe
        self.clock_off = faults.clock_off
        self.clock_bound_ms = self.core_settings.clock_offset_ms_max
        self.write_ms_max = faults.write_ms_max
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
            rate = 1.0 + self.rng.uniform(-0.001, 0.001) * skew
            offset_ms = self.rng.uniform(-200.0, 200.0) * skew
            self.nodes.append(_Node(i, tick_ms, rate, offset_ms))
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
        except Exception as error:  # a node's code failed: as much a finding as a violation
            violation = Violation("node error", f"{type(error).__name__}: {error}")
        self.stats.wall_s = time.perf_counter() - started
        self.stats.sim_ms = self.now
        for node in self.nodes:
            if node.core is not None:
                self._retire(node.core)
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
                core = node.core
                if core is None or not self.link[payload.src][target]:
                    stats.messages_lost += 1
                    continue
                stats.deliveries += 1
                trace((now, target, payload))
                core.step(payload)
                self._drain(node)
            elif kind == _TICK:
                node = nodes[target]
                if node.core is None or payload != node.incarnation:
                    continue
                node.core.tick(self._clock(node))
                self._drain(node)
                self._push(node.tick_ms, _TICK, target, payload)
            elif kind == _WRITTEN:
                self._on_written(nodes[target], payload)
            elif kind == _TURN:
                node = nodes[target]
                if payload == node.incarnation:
                    node.turn_due = False
                    self._drain(node)
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
        elif kind == _CRASH_NODE:
            node = self.nodes[target]
            if node.core is not None and node.incarnation == payload and self.faulty:
                self._crash(node)
        elif kind == _RESTART:
            node = self.nodes[target]
            if node.core is None and target not in self.held_down:
                self._start(node)

    def _push(self, delay_ms: float, kind: int, target: int, payload) -> None:
        heapq.heappush(self._heap, (self.now + delay_ms, next(self._seq), kind, target, payload))

    # -------------------------------------------------------------------------- replicas

    def _start(self, node: _Node) -> None:
        node.incarnation += 1
        node.turn_due = False
        node.led = None
        node.shipments = {}
        node.written_at = self.now
        node.queued_done = None
        disk = node.disk
        node.clock_offset_ms = node.clock_base_ms
        # One clock off at a time: time sync keeps a majority right, or no one could tell.
        synced = all(n.clock_offset_ms == n.clock_base_ms for n in self.nodes if n is not node)
        if self.rng.random() < self.clock_off and node.incarnation > 1 and synced:
            jump = self.rng.uniform(600.0, 6_000.0) * self.rng.choice((-1, 1))
            node.clock_offset_ms += jump
            self.trace.append((self.now, node.id, f"restarts with its clock {jump:+.0f} ms off"))
        # The cluster's first start bootstraps; a wiped disk restarts as a learner.
        identity = Identity("sim", node.id)
        journal = node.journal = MemoryJournal(disk, identity, bootstrap=not node.wiped)
        if self.faulty and disk.state.entries and self.rng.random() < self.corrupt_read:
            disk.damage(self.rng.choice(sorted(disk.state.entries)))
        try:
            state = journal.load()
        except CorruptRecord as error:
            # Refused, as it must be. The damage was a transient read fault (or the operator
            # put a good copy back): the node tries again later.
            if not disk.damaged:
                raise
            self.stats.corrupt_refused += 1
            self.trace.append((self.now, node.id, f"refuses to start: {error}"))
            disk.damaged.clear()
            self._stop(node)
            self._push(
                self.rng.uniform(0, self.settings.faults.restart_ms_max), _RESTART, node.id, None
            )
            return
        disk.damaged.clear()  # what was damaged had been truncated away
        snapshot = journal.read_snapshot() if state.snapshot_slot else (0, [])
        keys = journal.keyspace()
        clock = lambda: self._clock(node)  # noqa: E731
        on_apply = lambda slot, value, count: self.history.on_apply(node.id, count, slot, value)  # noqa: E731

        def on_restore(log: list[Value]) -> None:
            for slot, value in enumerate(log):  # what a snapshot covers is checked too
                self.history.on_apply(node.id, slot, slot, value)

        def machine() -> Recorder:
            return Recorder(self.machine_factory(keys, clock), on_apply, on_restore)

        try:
            node.core = self.core_factory(
                node.id,
                self.config,
                self.core_settings,
                Random(self.rng.getrandbits(64)),
                state,
                snapshot,
                machine,
                self.factory,
            )
        except SnapshotInvalid as error:
            raise Violation("snapshot", f"node {node.id}: its stored snapshot: {error}") from error
        self.trace.append((self.now, node.id, f"start (incarnation {node.incarnation})"))
        self._drain(node)
        self._push(self.rng.uniform(0, node.tick_ms), _TICK, node.id, node.incarnation)

    def _drain(self, node: _Node) -> None:
        """Carry out the core's effects, as the trio runtime does: what a turn produced
        first, then what applying the slots it committed produced."""
        apply = False
        while node.core is not None:
            effects = node.core.take(apply)
            if effects is None:
                if apply:
                    break
                apply = True
                continue
            core = node.core
            for write in effects.writes:
                self._issue(node, write)
            if effects.send:
                self._send(node, effects.send)
            for slot, value, results in effects.applied:
                self._check_results(node, slot, value, results)
            for waiter, outcome, result, slot in effects.replies:
                client_id, command = waiter
                if outcome == OK:
                    self._check_durable_quorum(slot)
                    self.oracle.on_answer(slot, command, result)
                    self._reply(client_id, command, _OK, (slot, result))
                elif outcome == NOT_LEADER:
                    self._reply(client_id, command, _NOT_LEADER, core.replica.leader_hint)
                elif outcome == UNKNOWN:  # a deposed leader answers at once
                    self._reply(client_id, command, _UNKNOWN, core.replica.leader_hint)
                elif outcome == TOO_LARGE:  # refused for good, as a client hears TooLarge
                    self._reply(client_id, command, _REFUSED, node.id)
                else:  # overloaded: never got a slot
                    self._reply(client_id, command, _RETRY, node.id)
            for stamp in effects.stamps:
                self.history.on_propose(stamp)
                self.stats.stamps += 1
            # Chunks (for transfers opened earlier), then closes, then new transfers.
            for peer, first, count, acked in effects.ship_chunks:
                slot, total, chunks, window = node.shipments[peer]
                for index in [i for i in window if i < acked]:
                    del window[index]  # acknowledged
                for index in range(first, first + count):
                    if index not in window:
                        window[index] = next(chunks)
                    chunk = SnapshotChunk(node.id, slot, index, total, window[index])
                    self._send(node, [(peer, chunk)])
                self.stats.snapshot_chunks += count
            for peer, _ in effects.ship_close:  # before opens: they may meet
                node.shipments.pop(peer, None)
            for peer in effects.ship_open:
                view = node.journal.snapshot_view()
                count, chunks = core.machine.shipped(view, _CHUNK_BYTES)
                node.shipments[peer] = (view.slot, count, chunks, {})
                core.ship_opened(peer, view.slot, count)
            for level, text in effects.notices:
                self.trace.append((self.now, node.id, f"{level}: {text}"))
            replica = core.replica
            if replica.role is Role.LEADER and replica.ballot != node.led:
                node.led = replica.ballot
                self.stats.elections += 1
                self.trace.append((self.now, node.id, f"leads with ballot {replica.ballot}"))
                self._check_leader_clock(node)
            if apply and core.backlog:
                # As the runtime does: the rest of the committed slots in later turns, other
                # inputs (messages, ticks, requests) between them.
                if not node.turn_due:
                    node.turn_due = True
                    self._push(_TURN_MS, _TURN, node.id, node.incarnation)
                return

    def _send(self, node: _Node, messages: list) -> None:
        rng = self.rng
        faults = self.settings.faults
        low, high = faults.delay_ms_min, faults.delay_ms_max
        push = heapq.heappush
        heap = self._heap
        seq = self._seq
        now = self.now
        history = self.history
        for dst, message in messages:
            # Every vote an acceptor casts, checked before the network can lose it (a
            # candidate's Prepare carries the promise it made to itself).
            kind = type(message)
            if kind is Accepted:
                history.on_vote(node.id, message.ballot, "Accepted")
                history.on_accepted(node.id, message.ballot, message.slot)
            elif kind is Promise:
                history.on_vote(node.id, message.ballot, "Promise")
                history.on_promise(node.id, message.ballot, message.commit, message.entries)
            elif kind is Prepare:
                history.on_vote(node.id, message.ballot, "Prepare")
                history.on_prepare(message.ballot, message.from_slot)
            if rng.random() < self.loss:
                continue
            delay = low + (high - low) * rng.random()
            if rng.random() < self.long_delay:
                delay *= 20
            push(heap, (now + delay, next(seq), _DELIVER, dst, message))
            if rng.random() < self.duplicate:
                push(heap, (now + delay * 2 * rng.random(), next(seq), _DELIVER, dst, message))

    def _issue(self, node: _Node, write) -> None:
        """The write enters the disk's log now (visible at once, lost in a crash unless a
        sync covers it); it completes after the disk's latency, after every earlier one."""
        if write.snapshot is not None:
            position = node.journal.append_snapshot(*write.snapshot)
        else:
            position = node.journal.append(write.batch)
        self.stats.writes += 1
        done = self._completion(node)
        self._push(done - self.now, _WRITTEN, node.id, (node.incarnation, write, position))
        if self.faulty and self.rng.random() < self.crash_in_flight:
            self._push(
                self.rng.uniform(0.0, done - self.now), _CRASH_NODE, node.id, node.incarnation
            )

    def _completion(self, node: _Node) -> float:
        """When a write issued now completes. As the runtime's writer does, one write runs
        at a time and everything issued meanwhile goes into the next one (group commit)."""
        now = self.now
        if node.queued_done is not None and now >= node.written_at:
            node.written_at, node.queued_done = node.queued_done, None
        latency = self.rng.uniform(0.0, self.write_ms_max)
        if now >= node.written_at:
            node.written_at = now + latency
            return node.written_at
        if node.queued_done is None:
            node.queued_done = node.written_at + latency
        return node.queued_done

    def _on_written(self, node: _Node, payload) -> None:
        incarnation, write, position = payload
        if node.core is None or incarnation != node.incarnation:
            return
        if self.faulty and self.rng.random() < self.write_fail:
            # The write failed: the node stops writing and serving, as production does.
            self.stats.write_failures += 1
            self.trace.append((self.now, node.id, f"write {write.id} failed"))
            self._crash(node)
            return
        if write.sync:
            node.disk.sync(position)
        node.core.persisted(write.id)
        self._drain(node)
        if write.sync and node.core is not None:
            crash = self.crash_after_sync
            if any(type(record) is PromiseRecord for record in write.records):
                crash = self.crash_after_promise
            if self.rng.random() < crash:
                self._crash(node)

    def _check_durable_quorum(self, slot: int) -> None:
        """A client hears "ok" only once its slot is durable on a majority of disks (the
        synced part of each disk, looked at directly): the commit rule, checked at the
        moment of the answer."""
        if slot in self.durable_slots:
            return
        value = self.history.chosen[slot]
        held = sum(1 for node in self.nodes if _durably_holds(node.disk, slot, value))
        # A replica whose disk was wiped (one at a time) may have voted for the slot just
        # before: its vote counted, then its copy went with the disk. It learns the slot
        # before it votes again.
        accepted = self.history.accepted
        wiped = sum(
            1
            for node in self.nodes
            if not node.disk.state.voting and slot in accepted.get(node.id, {})
        )
        if held + wiped < self.config.quorum:
            raise Violation(
                "durability",
                f"slot {slot} was acknowledged while durable on {held} of {len(self.nodes)} "
                f"disks (a majority is {self.config.quorum}; {wiped} wiped and learning)",
            )
        self.durable_slots.add(slot)

    def _check_leader_clock(self, leader: _Node) -> None:
        """A leader's clock is within the bound (less what measuring can miss: a round trip
        and a tick each way) of the true time, which time sync keeps most clocks close to:
        a replica restarted with its clock off must not lead."""
        if not self.clock_bound_ms:
            return
        off = abs(self._clock(leader) - (_EPOCH_MS + self.now))
        slack = self.settings.faults.delay_ms_max + 2 * max(n.tick_ms for n in self.nodes) + 200
        if off > self.clock_bound_ms + slack:
            others = {n.id: round(n.clock_offset_ms) for n in self.nodes if n.core is not None}
            raise Violation(
                "clock",
                f"node {leader.id} leads with its clock {off:.0f} ms off (the bound is "
                f"{self.clock_bound_ms} ms; live replicas' offsets {others}): its stamps move "
                "every lease deadline as much",
            )

    def _retire(self, core: NodeCore) -> None:
        self.stats.snapshots_taken += core.snapshots_taken
        self.stats.snapshots_installed += core.snapshots_installed

    def _stop(self, node: _Node) -> None:
        """The process dies: memory and the open journal go; the disk keeps what was synced
        and a prefix of the rest."""
        if node.core is not None:
            self._retire(node.core)
        node.core = None
        node.shipments = {}
        if node.journal is not None:
            disk = node.disk
            keep = self.rng.randint(0, len(disk.unsynced))
            keep_keys = self.rng.randint(0, len(disk.unflushed))
            self.stats.writes_lost += disk.crash(keep, keep_keys)
            node.journal.close()
            node.journal = None

    def _crash(self, node: _Node) -> None:
        self._stop(node)
        others = [other for other in self.nodes if other is not node]
        if self.rng.random() < self.wipe and all(other.disk.state.voting for other in others):
            self._wipe(node)
        self.stats.crashes += 1
        self.trace.append((self.now, node.id, "crash"))
        restart_ms = self.rng.uniform(0, self.settings.faults.restart_ms_max)
        self._push(restart_ms, _RESTART, node.id, None)

    def _wipe(self, node: _Node) -> None:
        """The crashed replica's disk is replaced by a blank one (a node rebuilt after its
        disk died): only one at a time, so the rest still hold every chosen slot."""
        node.disk = MemoryDisk()
        node.disk.state.voting = False  # what the journal will find: it learns first
        node.wiped = True
        self.history.on_wipe(node.id)
        self.stats.wipes += 1
        self.trace.append((self.now, node.id, "disk wiped"))

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
        if node.core is None:  # connection refused: the client tries another replica
            self._reply(client_id, command, _NOT_LEADER, None)
            return
        node.core.command(command, (client_id, command), self._clock(node))
        self._drain(node)

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
        if status == _REFUSED:
            # Never applied. The application hears it as an unknown outcome, which allows
            # that (a refused ack's leases expire and come back, as a dead worker's do).
            del client.outstanding[command]
            del client.attempts[command]
            client.app.on_unknown(*client.ops.pop(command))
            self.stats.commands_refused += 1
            return
        if status == _UNKNOWN:
            # It may have been chosen: give it up and let the application decide, as the
            # client library does (a sequenced command is sent again under its producer
            # sequence, which the machine answers rather than applies twice).
            del client.outstanding[command]
            del client.attempts[command]
            client.app.on_unknown(*client.ops.pop(command))
            self.stats.commands_abandoned += 1
            if detail is not None:
                client.guess = detail
            return
        # Never given a slot: safe to send the same command again.
        client.guess = detail if detail is not None else self.rng.randrange(len(self.nodes))
        self._push(self.rng.uniform(1.0, 20.0), _RESEND, client_id, command)

    def _learn_dead_letters(self) -> None:
        """The dead-letter queues' content, from the replica furthest ahead (the checker has
        seen every slot it has applied)."""
        ahead = max(
            (node for node in self.nodes if node.core is not None),
            key=lambda node: node.machine.slots,
        )
        for topic in self.workload.dead_letter_topics():
            if topic in ahead.machine.topics:
                start = self.dead_read.get(topic, 0)
                for message in _read_all(ahead.machine, topic, start):
                    self.oracle.on_dead_letter(message["headers"], "a dead-letter queue")
                    self.dead_read[topic] = message["offset"] + 1

    def _clock(self, node: _Node) -> int:
        return int(_EPOCH_MS + self.now * node.clock_rate + node.clock_offset_ms)

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
            if node.core is not None and node.core.replica.role is Role.LEADER
        ]
        return max(leaders, key=lambda node: node.core.replica.ballot).id if leaders else None

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
        alive = [node.id for node in self.nodes if node.core is not None]
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
        self.write_fail = self.corrupt_read = self.crash_in_flight = self.wipe = 0.0
        self.clock_off = 0.0
        for node in self.nodes:
            node.clock_offset_ms = node.clock_base_ms  # time sync is right again
        # A slow disk is a fault too: a healthy one syncs within a millisecond. (At 30 ms a
        # sync, one slot in flight of one command serves about 40 commands a second, less
        # than the clients ask for: no bound on the answer time could hold.)
        self.write_ms_max = min(self.write_ms_max, 1.0)
        self.link = self._full_links()
        n = len(self.nodes)
        held = set(self.rng.sample(range(n), self.rng.randint(0, (n - 1) // 2)))
        # A replica still learning after a wipe does not vote: keep a majority of voters up.
        for node_id in sorted(held):
            up = [node for node in self.nodes if node.id not in held]
            if sum(node.disk.state.voting for node in up) >= self.config.quorum:
                break
            held.discard(node_id)
        self.held_down = held
        for node in self.nodes:
            if node.id in self.held_down:
                self._stop(node)
            elif node.core is None:
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
        logs = [node.log for node in self.nodes]
        self.history.check_durable(logs)
        self.history.check_linearizable()
        self._stability_phase(event_cap)
        self._drain_phase(event_cap)

    def _stability_phase(self, event_cap: int) -> None:
        """A stable leader: while it reaches a majority, a replica cut off from it (alone, then
        across a bridge: cut from the leader only) starts no election, during the cut or
        after the heal, and the commands issued meanwhile are all answered."""
        settings = self.settings
        for node in self.nodes:
            node.tick_ms = settings.tick_ms  # timers at one rate: heartbeats arrive in time
        leader = self._leader()
        if leader is None:
            raise Violation("liveness", "no leader after the cluster healed and converged")
        ballot = self.nodes[leader].core.replica.ballot
        campaigns = [node.core.campaigns for node in self.nodes]
        cut_ms = 6 * self.config.election_ticks_base * settings.tick_ms
        self.issuing = True
        self.settled_at = self.now
        followers = [i for i in range(len(self.nodes)) if i != leader]
        alone, bridged = self.rng.choice(followers), self.rng.choice(followers)
        side = [0] * len(self.nodes)
        side[alone] = 1
        bridge = self._full_links()
        bridge[leader][bridged] = bridge[bridged][leader] = False
        for links, what in ((self._split(side), f"{alone} alone"), (bridge, "a bridge")):
            self.link = links
            self.trace.append((self.now, -1, f"stability: {what}, {self._describe_links()}"))
            self._run_events(event_cap, until_ms=self.now + cut_ms)
            self.link = self._full_links()
            self.trace.append((self.now, -1, "stability: heal"))
            self._run_events(event_cap, until_ms=self.now + cut_ms)
            now = [node.core.campaigns for node in self.nodes]
            if now != campaigns or self._leader() != leader:
                started = [i for i in range(len(now)) if now[i] != campaigns[i]]
                raise Violation(
                    "stability",
                    f"with {what} while leader {leader} (ballot {ballot}) reached a majority, "
                    f"replicas {started} campaigned; the leader is now {self._leader()}",
                )
        self.issuing = False
        self._run_events(event_cap, until_ms=self.now + settings.client_timeout_ms + 1_000.0)
        self._check_liveness()
        self.settled_at = float("inf")
        # The replicas that were cut off catch up (a snapshot, maybe) before the drain.
        self._run_events(event_cap, until_ms=self.now + settings.liveness_settle_ms)
        self._check_converged()

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
        machines = [node.machine.inner for node in self.nodes]
        states = {b"".join(write_snapshot(machine, 1 << 20)) for machine in machines}
        if len(states) != 1:
            raise Violation("determinism", "replicas at the same slot hold different machines")
        # The stored snapshot leaves payloads out, and followers read them back only to
        # dead-letter: every retained one must be there, the same on every replica.
        if len({_payloads(machine) for machine in machines}) != 1:
            raise Violation("determinism", "replicas at the same slot hold different payloads")
        # Nor does it carry a topic's full pieces of arrays, only names them in the key space:
        # each replica restored from its own snapshot must hold what it holds now.
        if len({_arrays(machine) for machine in machines}) != 1:
            raise Violation("determinism", "replicas at the same slot hold different arrays")
        for node, machine in zip(self.nodes, machines, strict=True):
            copy = QueueMachine(machine.keys, machine.limits)
            copy.restore(write_snapshot(machine, 1 << 20))
            if _arrays(copy) != _arrays(machine):
                raise Violation(
                    "snapshot", f"node {node.id}'s snapshot restores other arrays than it holds"
                )

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
        commits = [node.core.replica.commit for node in self.nodes]
        lengths = [len(node.log) for node in self.nodes]
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


def _durably_holds(disk: MemoryDisk, slot: int, value: Value) -> bool:
    """Does the synced part of `disk` hold `value` at `slot` (or a snapshot covering it)?
    The unsynced writes are undone in thought: the first undo of each item, oldest first,
    names its durable state."""
    entry = disk.state.entries.get(slot)
    snapshot_slot = disk.state.snapshot_slot
    entry_known = snapshot_known = False
    for undo in disk.unsynced:
        for item in undo:
            what = item[0]
            if what == "entry" and item[1] == slot and not entry_known:
                entry, entry_known = item[2], True
            elif what == "start" and slot in item[2] and not entry_known:
                entry, entry_known = item[2][slot], True
            elif what == "snapshot" and not snapshot_known:
                snapshot_slot, snapshot_known = item[1], True
    if slot < snapshot_slot:
        return True
    return entry is not None and (entry[1] is value or entry[1] == value)


def run_seed(
    settings: SimSettings,
    replica_factory: ReplicaFactory | None = None,
    machine_factory: MachineFactory | None = None,
    core_factory: CoreFactory | None = None,
) -> SimResult:
    return Simulation(settings, replica_factory, machine_factory, core_factory).run()


def _arrays(machine: QueueMachine) -> tuple[tuple[int, bytes, bytes, bytes], ...]:
    """Every topic's retained offsets: the first, then their times, sizes and key hashes."""
    out = []
    for topic in sorted(machine.topics.values(), key=lambda t: t.id):
        start = topic.first - topic.base
        out.append(
            (
                topic.first,
                topic.times[start:].tobytes(),
                topic.sizes[start:].tobytes(),
                topic.keys[start:].tobytes(),
            )
        )
    return tuple(out)


def _payloads(machine: QueueMachine) -> tuple[bytes | None, ...]:
    """The stored payload (None where it is missing) of every message a claim or read may
    still return, topic by topic: a queue's acked ones give theirs up, at each replica's
    own next snapshot."""
    keys = machine.keys
    out = []
    for topic in sorted(machine.topics.values(), key=lambda t: t.id):
        done = topic.subs[QUEUE_SUBSCRIPTION].done if topic.kind == QUEUE else {}
        out.extend(
            keys.get(payload_key(topic.id, offset))
            for offset in range(topic.first, topic.next)
            if offset not in done
        )
    return tuple(out)
