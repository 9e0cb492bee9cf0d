"""The node: one replica of the core driven by trio, persisting through the journal.

Two tasks, a pipeline. The loop feeds every input (peer messages, client commands, ticks) to
the core as it arrives. The effect executor, whenever it is free, takes the core's output
gathered since its last round and carries it out in the order the core's contract demands:
persist (one synced journal write for all of it: group commit, in a worker thread), then send,
then apply, then answer clients. So inputs keep flowing into the core while a sync runs, and
the next round's batches hold everything that arrived meanwhile; nothing leaves before the
write that covers it, because rounds are carried out strictly one after another.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from paxq.client.wire import FrameTooLarge
from paxq.storage import CorruptRecord, Identity, Journal

from ..machine import time_command
from ..paxos import Accept, Config, ProposeResult, Ready, Replica, Role
from ..persist import batch_of, durable_state
from .codec import Decoder, TracedAccept
from .machines import Machine, SnapshotInvalid, queue_machine
from .metrics import NodeMetrics
from .peers import PeerSettings, PeerTransport
from .tracing import CommitTracing
from .transfer import Assembler, Incoming, SnapshotAck, SnapshotChunk

log = logging.getLogger("paxq.node")


class CommandFailed(Exception):
    """A command was refused or its outcome is unknown; `reason` says which."""

    def __init__(self, reason: str, leader: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.leader = leader


@dataclass
class NodeSettings:
    peer: PeerSettings
    paxos: Config
    tick_s: float = 0.02
    #: inputs waiting for the loop at most (peer messages + client commands); past it senders wait
    inbox_max: int = 8192
    #: a command whose slot is not applied within this long is answered "unknown outcome"
    command_timeout_s: float = 10.0
    #: snapshot the machine every this many applied slots (0: never) and drop the log below,
    #: keeping this many slots behind the snapshot so a peer that lags a little catches up
    #: from the log instead of receiving the whole snapshot
    snapshot_every_slots: int = 2048
    snapshot_keep_slots: int = 256
    #: snapshots travel in chunks of about this size, this many ahead of the acknowledgement
    snapshot_chunk_bytes: int = 1 << 20
    snapshot_window_chunks: int = 4
    #: a transfer whose receiver acknowledges nothing for this long is abandoned
    snapshot_ack_timeout_s: float = 5.0
    #: a received snapshot larger than this is refused
    snapshot_bytes_max: int = 1 << 30
    #: with leases or aged messages due and no traffic, the leader stamps time this often
    stamp_idle_ms: int = 100

    def __post_init__(self) -> None:
        # Every peer message must fit a frame: the largest are a promise carrying a window of
        # full batches, and a catch-up reply.
        cfg, frame = self.paxos, self.peer.frame_bytes_max
        if 2 * cfg.window_slots_max * cfg.batch_bytes_max > frame:
            raise ValueError(
                f"window_slots_max x batch_bytes_max x 2 = "
                f"{2 * cfg.window_slots_max * cfg.batch_bytes_max} exceeds the peer frame bound "
                f"{frame}: lower the batch bytes or the window, or raise frame_bytes_max"
            )
        if 2 * cfg.catchup_bytes_max > frame:
            raise ValueError("catchup_bytes_max x 2 exceeds the peer frame bound")
        if self.snapshot_chunk_bytes + cfg.batch_bytes_max + 1024 > frame:
            # A chunk may run over its nominal size by one machine entry.
            raise ValueError("snapshot_chunk_bytes + batch_bytes_max exceeds the peer frame bound")
        if self.snapshot_every_slots < 0 or self.snapshot_keep_slots < 0:
            raise ValueError("snapshot_every_slots and snapshot_keep_slots must be >= 0")
        if self.snapshot_window_chunks < 1:
            raise ValueError("snapshot_window_chunks must be positive")


_TICK = -1  # inbox tags below zero are not peers
_COMMAND = -2

Callback = Callable[[str, object], None]
_REFUSALS = {
    ProposeResult.NOT_LEADER: "not leader",
    ProposeResult.OVERLOADED: "overloaded",
    ProposeResult.TOO_LARGE: "too large",
}


class Node:
    def __init__(
        self,
        settings: NodeSettings,
        journal: Journal,
        machine_factory: Callable[[Journal], Machine] = queue_machine,
        clock_ms: Callable[[], int] | None = None,
        metrics: NodeMetrics | None = None,
        tracing: CommitTracing | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        #: spans on the commit path; None (tracing off): no tracing work at all
        self.tracing = tracing
        self.id = settings.peer.node_id
        if journal.identity != Identity(settings.peer.cluster, self.id):
            raise ValueError(f"journal {journal.identity} is not this node's")
        self.journal = journal
        self._machine_factory = machine_factory
        # The machine restarts from the stored snapshot; the replica replays the log from its
        # start, and slots the snapshot covers are skipped when applied (see _carry_out).
        state = journal.load()
        self.machine = machine_factory(journal)
        if state.snapshot_slot:
            slot, chunks = journal.read_snapshot()
            try:
                self.machine = self._restored(slot, chunks)
            except SnapshotInvalid as error:
                raise CorruptRecord(str(journal.identity), b"snapshot", str(error)) from error
        self._snapshot_at = state.snapshot_slot
        self.replica = Replica(self.id, settings.paxos, random.Random(), durable_state(state))
        self._assembler = Assembler(
            self.id, settings.snapshot_bytes_max, lambda chunk: self.machine.absorb(chunk)
        )
        self._received: Incoming | None = None  # a complete snapshot waiting to be installed
        self._shipping: dict[int, _Shipment] = {}  # peer -> the transfer under way to it
        self._nursery: trio.Nursery | None = None
        self.snapshots_taken = 0
        self.snapshots_sent = 0
        self.snapshots_installed = 0
        self.snapshot_last: dict | None = None  # slot, bytes and duration of the last one taken
        # One bounded inbox for every input: peer messages (tagged with the peer), ticks and
        # client commands. Past its bound, senders wait: backpressure, not memory.
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[int, object]](
            settings.inbox_max
        )
        self.peers = PeerTransport(settings.peer, Decoder(settings.paxos), self._inbox_send)
        self._work = trio.Event()  # the loop has fed the core: the executor may have work
        # Commands proposed here and not yet applied, with their callbacks; and the order they
        # came in, with deadlines, so that those never applied are answered "unknown" in time.
        self._waiting: dict[bytes, Callback] = {}
        self._deadlines: deque[tuple[float, bytes]] = deque()
        self._deadline = 0.0  # for commands proposed in this turn (one clock read per turn)
        # The leader's wall clock stamps the log: one time entry before the first command of
        # a turn whose clock moved, and one on a tick when a lease or retention is due.
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._now_ms = 0
        self._stamped_ms = 0
        self._stamp_seq = random.getrandbits(32)  # time entries are unique across restarts
        #: called after each round of applied slots with the names of the topics where
        #: something became readable or claimable (None: anything may have changed)
        self.on_applied: Callable[[set[str] | None], None] | None = None
        self.campaigns = 0  # times this node stood for leader
        self.elections_won = 0
        self.turns = 0
        self.syncs = 0
        self.ticks_skipped = 0
        self.oversized_messages = 0

    # ------------------------------------------------------------------------- client side

    def propose_nowait(self, command: bytes, on_done: Callback) -> bool:
        """Queue a command for the loop without waiting; False if the inbox is full.

        `on_done(kind, value)` is called once, from the loop: ("ok", the machine's result)
        once applied, or a failure: "not leader", "overloaded", "too large", or "unknown"
        when leadership was lost or time ran out after the command may have got a slot.
        Commands must be unique (the client layer adds a session and a sequence).
        """
        try:
            self._inbox_send.send_nowait((_COMMAND, (command, on_done)))
        except trio.WouldBlock:
            return False
        return True

    async def propose(self, command: bytes, on_done: Callback) -> None:
        """As propose_nowait, but waits for room in the inbox (backpressure)."""
        await self._inbox_send.send((_COMMAND, (command, on_done)))

    async def submit(self, command: bytes) -> object:
        """Replicate one command and return the machine's result; raises CommandFailed."""
        done = trio.Event()
        outcome: list[tuple[str, object]] = []

        def finish(kind: str, value: object) -> None:
            if not outcome:
                outcome.append((kind, value))
                done.set()

        with trio.move_on_after(self.settings.command_timeout_s + 1.0):
            await self.propose(command, finish)
            await done.wait()
        # Given up (cancelled or out of time): it may still be applied later.
        finish("unknown", None)
        kind, value = outcome[0]
        if kind == "ok":
            return value
        raise CommandFailed(kind, self.replica.leader_hint)

    # -------------------------------------------------------------------------------- loop

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.peers.serve)
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._execute)
                task_status.started()
                await self._loop()
        finally:
            waiting, self._waiting = self._waiting, {}
            for on_done in waiting.values():
                on_done("unknown", None)
            if self.tracing is not None:
                self.tracing.abandon()

    async def _ticker(self) -> None:
        tick = self.settings.tick_s
        next_at = trio.current_time()
        while True:
            next_at += tick
            now = trio.current_time()
            if next_at < now - tick:
                # We fell behind (the process was paused, or a sync took long): skip the missed
                # ticks. Replaying them in a burst would time out elections before the messages
                # that arrived meanwhile (a new leader's heartbeats) are even read.
                self.ticks_skipped += int((now - next_at) / tick)
                next_at = now
            await trio.sleep_until(next_at)
            await self._inbox_send.send((_TICK, None))

    async def _loop(self) -> None:
        inbox = self._inbox
        bound = self.settings.inbox_max
        while True:
            item = await inbox.receive()
            self._deadline = trio.current_time() + self.settings.command_timeout_s
            self._now_ms = self._clock_ms()
            role = self.replica.role
            self._handle(item)
            for _ in range(bound):  # everything already waiting joins this turn
                try:
                    item = inbox.receive_nowait()
                except trio.WouldBlock:
                    break
                self._handle(item)
            if self.replica.role is not role:
                if self.replica.role is Role.CANDIDATE:
                    self.campaigns += 1
                elif self.replica.role is Role.LEADER:
                    self.elections_won += 1
            self.turns += 1
            self._work.set()

    async def _execute(self) -> None:
        """The effect executor: one round = the core's output since the last round, persisted
        by one write, then carried out. A received snapshot is stored between rounds."""
        while True:
            if self._received is not None:
                received, self._received = self._received, None
                await self._install(received)
            ready = self.replica.ready()
            if ready is None:
                self._work = trio.Event()
                await self._work.wait()
                continue
            if ready.persist:
                tracing = self.tracing
                traced = (
                    tracing.persisting(ready.persist, ready.committed)
                    if tracing and (tracing.traced or tracing.slots or tracing.replicas)
                    else ()
                )
                started = time.perf_counter()
                await trio.to_thread.run_sync(self.journal.write, batch_of(ready.persist))
                self.syncs += 1
                if self.metrics is not None:
                    self.metrics.fsync_latency.record((time.perf_counter() - started) * 1000)
                if traced:
                    tracing.persisted(traced)
            await self._carry_out(ready)

    def _handle(self, item: tuple[int, object]) -> None:
        source, payload = item
        if source >= 0:
            kind = type(payload)
            if kind is TracedAccept:
                if self.tracing is not None:
                    self.tracing.replicating(payload.accept.slot, payload.trace)
                self.replica.step(payload.accept)
            elif kind is SnapshotChunk:
                self._on_chunk(payload)
            elif kind is SnapshotAck:
                shipment = self._shipping.get(source)
                if shipment is not None and payload.slot == shipment.slot:
                    shipment.on_ack(payload.received)
            else:
                self.replica.step(payload)
        elif source == _TICK:
            self.replica.tick()
            self._expire()
            due = self.machine.due_ms()
            if (
                due is not None
                and due <= self._now_ms
                and self._now_ms - self._stamped_ms >= self.settings.stamp_idle_ms
            ):
                self._stamp()
        else:
            self._propose(*payload)

    def _stamp(self) -> None:
        if self.replica.role is Role.LEADER:
            self._stamp_seq += 1
            self.replica.propose(time_command(self.id, self._stamp_seq, self._now_ms))
            self._stamped_ms = self._now_ms

    def _propose(self, command: bytes, on_done: Callback) -> None:
        if self._now_ms > self._stamped_ms:
            self._stamp()
        result = self.replica.propose(command)
        if result is ProposeResult.QUEUED:
            self._waiting[command] = on_done
            self._deadlines.append((self._deadline, command))
            return
        on_done(_REFUSALS[result], None)

    def _expire(self) -> None:
        """Answer "unknown" for commands whose slot was not applied in time."""
        deadlines, waiting = self._deadlines, self._waiting
        now = trio.current_time()
        while deadlines and (deadlines[0][0] <= now or deadlines[0][1] not in waiting):
            _, command = deadlines.popleft()
            on_done = waiting.pop(command, None)
            if on_done is not None:
                on_done("unknown", None)

    async def _carry_out(self, ready: Ready) -> None:
        """Send, then apply and answer: the records of `ready` are durable already."""
        frames: dict[int, bytes] = {}  # a broadcast is one message object: encode it once
        tracing = self.tracing
        for peer, message in ready.messages:
            frame = frames.get(id(message))
            if frame is None:
                sent = message
                if tracing is not None and tracing.slots and type(message) is Accept:
                    context = tracing.slot_context(message.slot)
                    if context is not None:  # a traced batch: its followers join the trace
                        sent = TracedAccept(message, context)
                try:
                    frame = frames[id(message)] = self.peers.frame(sent)
                except FrameTooLarge:
                    # Settings are validated against this; should it happen anyway, losing
                    # one message is something Paxos survives, stopping the node is not.
                    self.oversized_messages += 1
                    log.error("dropped an oversized %s to node %s", type(message).__name__, peer)
                    continue
            self.peers.send_frame(peer, frame)
        machine = self.machine
        for slot, value in ready.committed:
            if slot < machine.slots:
                continue  # a snapshot restored at start, or installed since, covers it
            tracing = self.tracing
            traced = tracing is not None and (slot in tracing.slots or slot in tracing.replicas)
            if traced:
                tracing.applying(slot)
            results = machine.apply(slot, value)
            if self.metrics is not None:
                self.metrics.batch_size.record(len(value))
            if traced:
                tracing.applied(slot)
            waiting = self._waiting
            if waiting:
                for command, result in zip(value, results, strict=True):
                    on_done = waiting.pop(command, None)
                    if on_done is not None:
                        on_done("ok", result)
        machine.flush()
        if ready.committed and self.on_applied is not None:
            take = getattr(machine, "take_changed", None)
            self.on_applied(take() if take is not None else None)
        for command in ready.dropped:
            on_done = self._waiting.pop(command, None)
            if on_done is not None:
                on_done("not leader", None)
        for peer, _ in ready.snapshot_requests:
            if peer not in self._shipping and self._snapshot_at and self._nursery is not None:
                self._shipping[peer] = shipment = _Shipment(self._snapshot_at)
                self._nursery.start_soon(self._ship_snapshot, peer, shipment)
        every = self.settings.snapshot_every_slots
        if every and machine.slots - self._snapshot_at >= every:
            await self._take_snapshot()

    # --------------------------------------------------------------------------- snapshots

    async def _take_snapshot(self) -> None:
        """Store the machine's state, then drop the log below it (less a tail kept for
        peers that lag a little). Both land in one synced write."""
        started = time.perf_counter()
        slot = self.machine.slots
        chunks = self.machine.snapshot(self.settings.snapshot_chunk_bytes)
        below = max(self.replica.log_start, slot - self.settings.snapshot_keep_slots)
        await trio.to_thread.run_sync(self.journal.save_snapshot, slot, chunks, below)
        self.machine.snapshot_saved()
        self.snapshot_last = {
            "slot": slot,
            "bytes": sum(map(len, chunks)),
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }
        self.replica.compact(below)
        self._snapshot_at = slot
        self.snapshots_taken += 1

    def _restored(self, slot: int, chunks: list[bytes]) -> Machine:
        """A fresh machine from a snapshot that must end exactly at `slot`."""
        machine = self._machine_factory(self.journal)
        machine.restore(chunks)
        if machine.slots != slot:
            raise SnapshotInvalid(f"the snapshot ends at slot {machine.slots}, not at {slot}")
        return machine

    async def _ship_snapshot(self, peer: int, shipment: _Shipment) -> None:
        """Stream the stored snapshot to `peer`, a window of chunks ahead of its acks."""
        s = self.settings
        try:
            view = await trio.to_thread.run_sync(self.journal.snapshot_view)
            slot = shipment.slot = view.slot
            count, chunks = await trio.to_thread.run_sync(
                self.machine.shipped, view, s.snapshot_chunk_bytes
            )
            sent = 0  # chunks go out once, in order: a lost one stalls the transfer (see above)
            while shipment.acked < count:
                while sent < count and sent - shipment.acked < s.snapshot_window_chunks:
                    data = await trio.to_thread.run_sync(next, chunks)
                    chunk = SnapshotChunk(self.id, slot, sent, count, data)
                    self.peers.send_frame(peer, self.peers.frame(chunk))
                    sent += 1
                progress = shipment.acked
                with trio.move_on_after(s.snapshot_ack_timeout_s):
                    while shipment.acked == progress:
                        await shipment.changed.wait()
                        shipment.changed = trio.Event()
                if shipment.acked == progress:
                    log.warning("snapshot to node %d stalled at chunk %d of %d", peer, sent, count)
                    return
            self.snapshots_sent += 1
            log.info("sent node %d the snapshot up to slot %d (%d chunks)", peer, slot, count)
        except FrameTooLarge:
            log.error("snapshot chunk for node %d exceeds the frame bound", peer)
        finally:
            del self._shipping[peer]

    def _on_chunk(self, chunk: SnapshotChunk) -> None:
        ack, complete = self._assembler.on_chunk(chunk, self.replica.commit)
        if ack is not None:
            self.peers.send_frame(chunk.src, self.peers.frame(ack))
        if complete is not None:
            self._received = complete

    async def _install(self, received: Incoming) -> None:
        """A peer's snapshot: check it, store it, then let machine and replica adopt it."""
        if received.slot <= self.replica.commit:
            return  # we got there on our own meanwhile
        try:
            machine = self._restored(received.slot, received.chunks)
        except SnapshotInvalid as error:
            log.error("refusing the snapshot from node %d: %s", received.src, error)
            return
        slot = received.slot
        # What is stored is the machine's own snapshot: a shipped one may carry payloads,
        # which restore() has put in the key space already.
        chunks = machine.snapshot(self.settings.snapshot_chunk_bytes)
        await trio.to_thread.run_sync(self.journal.save_snapshot, slot, chunks, slot)
        self.machine = machine
        self._snapshot_at = slot
        self.replica.install_snapshot(slot)
        self.snapshots_installed += 1
        if self.on_applied is not None:
            self.on_applied(None)
        log.info("installed the snapshot up to slot %d from node %d", slot, received.src)

    # ------------------------------------------------------------------------------- views

    def clock_ms(self) -> int:
        """This node's wall clock, the one it stamps the log with as leader."""
        return self._clock_ms()

    def status(self) -> dict:
        r = self.replica
        return {
            "node": self.id,
            "role": r.role.name.lower(),
            "ballot": [r.ballot.round, r.ballot.node] if r.role is not Role.FOLLOWER else None,
            "leader": r.leader_hint,
            "commit": r.commit,
            "applied": r.applied,
            "promised": [r.promised.round, r.promised.node],
            "log_start": r.log_start,
            "snapshot": self._snapshot_at,
            "snapshots": {
                "taken": self.snapshots_taken,
                "sent": self.snapshots_sent,
                "installed": self.snapshots_installed,
                "last": self.snapshot_last,
            },
            "syncs": self.syncs,
            "turns": self.turns,
            "ticks_skipped": self.ticks_skipped,
            "pipeline": r.in_flight_slots,
            "replica_lag": max(0, r.known_commit - r.applied),
            "elections": {"started": self.campaigns, "won": self.elections_won},
            **(self.metrics.summary() if self.metrics is not None else {}),
        }


class _Shipment:
    """One snapshot transfer under way: how far the receiver has acknowledged."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.acked = 0
        self.changed = trio.Event()

    def on_ack(self, received: int) -> None:
        if received > self.acked:
            self.acked = received
            self.changed.set()
