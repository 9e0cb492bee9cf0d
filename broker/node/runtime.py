"""The node: the trio driver of the node core (`core.py`), persisting through the journal.

Every input (peer messages, client commands, ticks, a finished write, an opened snapshot) is
handed to the core in the loop's turn; the core's effects are carried out at once: messages
queued to peers, clients answered, writes queued for the writer. The writer task carries the
writes out in order in a worker thread, coalescing everything queued while the last one ran
into one write (group commit), and reports each back to the core, which then releases the
votes that waited for it. So the core keeps taking inputs while a sync runs, and nothing
that depends on a write leaves before it is durable.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from paxq.client.wire import FrameTooLarge
from paxq.storage import Batch, CorruptRecord, Identity, Journal, StorageError

from ..paxos import Accept, Config, Role
from .codec import Decoder, TracedAccept
from .core import UNKNOWN, CoreSettings, Effects, NodeCore, Write
from .machines import Machine, SnapshotInvalid, queue_machine
from .metrics import NodeMetrics
from .peers import PeerSettings, PeerTransport
from .tracing import CommitTracing
from .transfer import SnapshotChunk

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
    #: inputs handled in one turn of the loop at most
    turn_inputs_max: int = 512
    #: a command whose slot is not applied within this long is answered "unknown outcome"
    command_timeout_s: float = 10.0
    # The core's settings (`core.CoreSettings` says what each one means), in seconds where
    # the core counts ticks.
    snapshot_every_slots: int = 2048
    snapshot_keep_slots: int = 256
    snapshot_chunk_bytes: int = 1 << 20
    snapshot_window_chunks: int = 4
    snapshot_ack_timeout_s: float = 5.0
    snapshot_bytes_max: int = 1 << 30
    stamp_idle_ms: int = 100
    clock_probe_s: float = 0.5
    clock_offset_ms_max: int = 500
    apply_commands_max: int = 1024
    #: journal batches up to this size are written in the loop, not in the writer thread, by
    #: a node that does not lead, and by the leader while its last sync took at most
    #: `leader_write_inline_sync_ms_max` (see `Node._writes_inline`)
    write_inline_bytes_max: int = 64 << 10
    leader_write_inline_bytes_max: int = 4 << 10
    leader_write_inline_sync_ms_max: float = 10.0

    def __post_init__(self) -> None:
        # Every peer message must fit a frame: the largest are a promise carrying a window of
        # full batches, and a catch-up reply.
        cfg, frame = self.paxos, self.peer.frame_bytes_max
        if 2 * cfg.window_bytes_max > frame:
            raise ValueError(
                f"window_bytes_max x 2 = {2 * cfg.window_bytes_max:,} exceeds the peer frame "
                f"bound {frame:,}: lower window_bytes_max or raise frame_bytes_max"
            )
        if 2 * cfg.catchup_bytes_max > frame:
            raise ValueError("catchup_bytes_max x 2 exceeds the peer frame bound")
        if self.snapshot_chunk_bytes + cfg.slot_bytes_max + 1024 > frame:
            # A chunk may run over its nominal size by one machine entry (a message at most).
            raise ValueError("snapshot_chunk_bytes + slot_bytes_max exceeds the peer frame bound")
        if self.snapshot_every_slots < 0 or self.snapshot_keep_slots < 0:
            raise ValueError("snapshot_every_slots and snapshot_keep_slots must be >= 0")
        if self.snapshot_window_chunks < 1:
            raise ValueError("snapshot_window_chunks must be positive")
        if self.apply_commands_max < 1 or self.turn_inputs_max < 1:
            raise ValueError("apply_commands_max and turn_inputs_max must be positive")

    def core(self) -> CoreSettings:
        """The same settings as the core counts them: in ticks."""
        return CoreSettings(
            command_timeout_ticks=max(1, math.ceil(self.command_timeout_s / self.tick_s)),
            snapshot_every_slots=self.snapshot_every_slots,
            snapshot_keep_slots=self.snapshot_keep_slots,
            snapshot_chunk_bytes=self.snapshot_chunk_bytes,
            snapshot_window_chunks=self.snapshot_window_chunks,
            snapshot_ack_timeout_ticks=max(1, math.ceil(self.snapshot_ack_timeout_s / self.tick_s)),
            snapshot_bytes_max=self.snapshot_bytes_max,
            stamp_idle_ms=self.stamp_idle_ms,
            clock_probe_ticks=max(1, math.ceil(self.clock_probe_s / self.tick_s)),
            clock_offset_ms_max=self.clock_offset_ms_max,
            apply_commands_max=self.apply_commands_max,
        )


_COMMAND = -1  # inbox tags below zero are not peers
#: a journal write slower than this is logged: the disk is in trouble (etcd warns at 1 s too)
_SLOW_WRITE_MS = 1000.0

Callback = Callable[[str, object], None]


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
        state = journal.load()
        stored = journal.read_snapshot() if state.snapshot_slot else (0, [])
        try:
            self.core = NodeCore(
                self.id,
                settings.paxos,
                settings.core(),
                random.Random(),
                state,
                stored,
                lambda: machine_factory(journal),
            )
        except SnapshotInvalid as error:
            raise CorruptRecord(str(journal.identity), b"snapshot", str(error)) from error
        if tracing is not None:
            self.core.on_apply = self._trace_apply
        # One bounded inbox for every input: peer messages (tagged with the peer), ticks and
        # client commands. Past its bound, senders wait: backpressure, not memory.
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[int, object]](
            settings.inbox_max
        )
        #: the loop's wait on an empty inbox, while it waits (see `_take_now`)
        self._parked: trio.CancelScope | None = None
        #: when the first input taken at once and not yet carried out was taken
        self._owed: float | None = None
        self.peers = PeerTransport(
            settings.peer, Decoder(settings.paxos), self._inbox_send, self._take_now, self.flush
        )
        self._writes: list[Write] = []  # handed out by the core, not yet taken by the writer
        self._write_ready = trio.Event()
        self._writer_busy = False  # a write is running in the writer's thread
        self._sync_slow = False  # the last synced write took too long to make inline
        self._commit_held = False  # a commit point alone waits in `_writes` for the apply
        self._shipments: dict[int, _Shipment] = {}
        self._nursery: trio.Nursery | None = None
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._snapshot_started: dict[int, float] = {}  # write id -> when it was handed out
        #: called after each round of applied slots with the names of the topics where
        #: something became readable or claimable (None: anything may have changed)
        self.on_applied: Callable[[set[str] | None], None] | None = None
        self.turns = 0
        self.syncs = 0
        self.ticks_skipped = 0
        #: the longest turn of the loop, and the most a tick waited to be handled (ms)
        self.turn_ms_max = 0.0
        self.tick_late_ms_max = 0.0
        #: a tick later than half the shortest election timeout is worth a warning
        self._late_warn_ms = settings.paxos.election_ticks_base * settings.tick_s * 500
        self.oversized_messages = 0

    @property
    def replica(self):
        return self.core.replica

    @property
    def machine(self) -> Machine:
        return self.core.machine  # replaced when a snapshot is installed

    # ------------------------------------------------------------------------- client side

    def propose_nowait(self, command: bytes, on_done: Callback, *, flush: bool = True) -> bool:
        """Queue a command for the loop without waiting; False if the inbox is full.

        `on_done(kind, value)` is called once, from the loop: ("ok", the machine's result)
        once applied, or a failure: "not leader", "overloaded", "too large", or "unknown"
        when leadership was lost or time ran out after the command may have got a slot.
        Commands must be unique (the client layer adds a session and a sequence). With
        `flush=False` a command the node takes at once waits for the caller's `flush()`
        (to share a batch with the commands that follow it).
        """
        item = (_COMMAND, (command, on_done))
        if self._take_now(item):
            if flush:
                self.flush()
            return True
        try:
            self._inbox_send.send_nowait(item)
        except trio.WouldBlock:
            return False
        return True

    async def propose(self, command: bytes, on_done: Callback) -> None:
        """As propose_nowait, but waits for room in the inbox (backpressure)."""
        if not self.propose_nowait(command, on_done):
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
        finish(UNKNOWN, None)
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
                nursery.start_soon(self._writer)
                self._carry_out()  # a restart replays the log: apply it before serving
                while self.core.backlog:
                    self._carry_out()
                task_status.started()
                await self._loop()
        finally:
            self.core.stop()
            effects = self.core.take()
            if effects is not None:
                for on_done, kind, value, _ in effects.replies:
                    on_done(kind, value)
            if self.tracing is not None:
                self.tracing.abandon()

    async def _loop(self) -> None:
        """One turn: the inputs waiting (at most `turn_inputs_max`), then the tick if one is
        due, then the effects. The loop keeps the ticks itself rather than queueing them
        with the inputs, so a backlog in the inbox cannot hold heartbeats up; a turn is
        bounded (inputs here, applied slots in the core), so neither can a long one."""
        inbox = self._inbox
        bound = self.settings.turn_inputs_max
        tick_s = self.settings.tick_s
        core = self.core
        next_tick = trio.current_time() + tick_s
        while True:
            item = None
            if core.backlog:
                await trio.lowlevel.checkpoint()  # committed slots to apply: come straight back
            else:
                try:
                    item = inbox.receive_nowait()
                except trio.WouldBlock:
                    # Parked on an empty inbox: inputs are handled where they arrive
                    # (`_take_now`) until the tick is due or a backlog calls the loop back.
                    try:
                        with trio.move_on_at(next_tick) as self._parked:
                            item = await inbox.receive()
                    finally:
                        self._parked = None
                else:
                    await trio.lowlevel.checkpoint()  # the other tasks get their turn
            started = time.perf_counter()
            now_ms = self._clock_ms()
            if item is not None:
                self._handle(core, item, now_ms)
            for _ in range(bound - (item is not None)):
                try:
                    item = inbox.receive_nowait()
                except trio.WouldBlock:
                    break
                self._handle(core, item, now_ms)
            now = trio.current_time()
            if now >= next_tick:
                # After the inputs: a heartbeat that came while the process stood still is
                # read before its election timer is looked at.
                late_s = now - next_tick
                self._tick_late(late_s * 1000)
                if late_s >= tick_s:
                    # Fallen behind (the process was paused, or a sync held it): skip the
                    # missed ticks; a burst of them would time out elections at once.
                    self.ticks_skipped += int(late_s / tick_s)
                    next_tick = now
                core.tick(now_ms)
                next_tick += tick_s
            self.turns += 1
            self._owed = None  # this turn carries out what inputs taken at once left
            self._carry_out()
            self._turn_took(started)

    def _take_now(self, item: tuple[int, object]) -> bool:
        """Hand an input to the core from the task that read it, if the loop waits on an
        empty inbox (False: send it to the inbox). It is the next input either way; this
        spares waking the loop for it. While the loop is parked every input comes this
        way, so none can pass one that waits in the inbox. Its effects are carried out by
        `flush`, which the reader calls once it has handed over everything it read at once
        (so the commands of one read share a batch and the votes one write)."""
        if self._parked is None:
            return False
        if self._owed is None:
            self._owed = time.perf_counter()
        self._handle(self.core, item, self._clock_ms())
        return True

    def flush(self) -> None:
        """Carry out what inputs taken at once produced (see `_take_now`)."""
        started = self._owed
        if started is None:
            return
        self._owed = None
        self.turns += 1
        self._carry_out()
        self._turn_took(started)

    def _turn_took(self, started: float) -> None:
        turn_ms = (time.perf_counter() - started) * 1000
        if turn_ms > self.turn_ms_max:
            self.turn_ms_max = turn_ms
        if self.metrics is not None:
            self.metrics.turn_duration.record(turn_ms)

    def _tick_late(self, late_ms: float) -> None:
        if late_ms > self.tick_late_ms_max:
            self.tick_late_ms_max = late_ms
        if late_ms > self._late_warn_ms:
            log.warning(
                "a tick ran %.0f ms late (tick %d): heartbeats and timeouts were held up",
                late_ms,
                self.core.ticks + 1,
            )

    def _handle(self, core: NodeCore, item: tuple[int, object], now_ms: int) -> None:
        source, payload = item
        if source >= 0:
            if type(payload) is TracedAccept:
                if self.tracing is not None:
                    self.tracing.replicating(payload.accept.slot, payload.trace)
                payload = payload.accept
            core.step(payload)
        else:
            command, on_done = payload
            core.command(command, on_done, now_ms)

    def _carry_out(self) -> None:
        """Carry out what the core produced: writes to the writer (or at once), messages to
        peers, answers to clients, snapshot shipments; again while writes made here release
        more."""
        while self._carry_out_once(False):  # votes and their writes first: they wait
            pass
        while self._carry_out_once(True):
            pass
        if self._commit_held:  # the answers are out: now the commit point
            self._commit_held = False
            if self._writes_inline():
                self._write_now()
                while self._carry_out_once(True):
                    pass
            else:
                self._write_ready.set()
        if self._parked is not None and self.core.backlog:
            self._parked.cancel()  # committed slots wait to be applied: the loop comes back
            self._parked = None

    def _carry_out_once(self, apply: bool) -> bool:
        effects = self.core.take(apply)
        if effects is None:
            return False
        wrote = False
        if effects.writes:
            tracing = self.tracing
            if tracing is not None:
                for write in effects.writes:
                    if write.records and (tracing.traced or tracing.replicas):
                        write.traced = tracing.writing(write.records)
            for write in effects.writes:
                if write.snapshot is not None:
                    self._snapshot_started[write.id] = time.perf_counter()
            self._writes.extend(effects.writes)
            wrote = self._writes_inline()
            if not wrote:
                self._write_ready.set()
        if effects.send:
            self._send(effects.send)
        for on_done, kind, value, _ in effects.replies:
            on_done(kind, value)
        if effects.applied and self.metrics is not None:
            record = self.metrics.batch_size.record
            for _, value, _ in effects.applied:
                record(len(value))
        if effects.woke and self.on_applied is not None:
            self.on_applied(effects.changed)
        if effects.ship_open or effects.ship_chunks or effects.ship_close:
            self._ship(effects)
        for level, text in effects.notices:
            getattr(log, level)("%s", text)
        # After the sends: the leader's accepts leave before its own write, and the votes
        # that waited for it come with the next take. A commit point alone (no sync: it can
        # be learnt again) waits for the apply: the answers need not wait for it.
        if wrote:
            if apply or any(write.sync for write in self._writes):
                self._write_now()
            else:
                self._commit_held = True
                wrote = False
        return wrote

    def _send(self, messages: list[tuple[int, object]]) -> None:
        frames: dict[int, bytes] = {}  # a broadcast is one message object: encode it once
        tracing = self.tracing
        for peer, message in messages:
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

    def _trace_apply(self, slot: int, done: bool) -> None:
        tracing = self.tracing
        if slot in tracing.slots or slot in tracing.replicas:
            if done:
                tracing.applied(slot)
            else:
                tracing.applying(slot)

    # ------------------------------------------------------------------------------ writer

    def _writes_inline(self) -> bool:
        """May the loop carry the queued writes out itself, without the writer thread?

        The hop to a thread and back costs more than writing a small batch and syncing it
        (the sync lets go of the GIL), and a follower's vote waits for it. So a follower
        writes journal batches of up to `write_inline_bytes_max` in its loop, and so does a
        leader up to `leader_write_inline_bytes_max` while its syncs are quick: a leader's
        heartbeats and client sessions must not wait on a slow disk, and its followers'
        votes carry a commit without its own. A commit point alone (no sync) is always
        written here; snapshots and truncations always in the thread."""
        if self._writer_busy:
            return False
        size = 0
        synced = False
        for write in self._writes:
            batch = write.batch
            if write.snapshot is not None or batch.truncate_below is not None:
                return False
            synced = synced or write.sync
            for _, value in batch.entries.values():
                size += sum(map(len, value))
        if not synced:
            return True
        settings = self.settings
        if self.core.replica.role is not Role.LEADER:
            return size <= settings.write_inline_bytes_max
        return size <= settings.leader_write_inline_bytes_max and not self._sync_slow

    def _write_now(self) -> None:
        run = self._writes[:]
        self._writes.clear()
        self._commit_held = False
        batch, synced = _one_write(run)
        started = time.perf_counter()
        self.journal.write(batch, synced)
        self._written(run, synced, (time.perf_counter() - started) * 1000)

    def _written(self, run: list[Write], synced: bool, took_ms: float) -> None:
        if synced:
            self.syncs += 1
            self._sync_slow = took_ms > self.settings.leader_write_inline_sync_ms_max
            if self.metrics is not None:
                self.metrics.fsync_latency.record(took_ms)
        if took_ms > _SLOW_WRITE_MS:
            log.warning(
                "a journal write took %.0f ms (%s)",
                took_ms,
                "snapshot" if run[0].snapshot is not None else f"{len(run)} batches",
            )
        if self.tracing is not None:
            for write in run:
                if write.traced:
                    self.tracing.persisted(write.traced)
        for write in run:
            began = self._snapshot_started.pop(write.id, None)
            if began is not None and self.core.snapshot_last is not None:
                self.core.snapshot_last["ms"] = round((time.perf_counter() - began) * 1000, 1)
        self.core.persisted(run[-1].id)

    async def _writer(self) -> None:
        """Carries the core's writes out in order: every journal batch queued while the last
        write ran goes into one write (one sync for all: group commit); a snapshot alone."""
        journal = self.journal
        while True:
            if not self._writes:
                self._write_ready = trio.Event()
                await self._write_ready.wait()
                continue
            writes = self._writes
            if writes[0].snapshot is not None:
                run = [writes[0]]
            else:
                run = []
                for write in writes:
                    if write.snapshot is not None:
                        break
                    run.append(write)
            del writes[: len(run)]
            self._writer_busy = True
            started = time.perf_counter()
            try:
                if run[0].snapshot is not None:
                    slot, chunks, below = run[0].snapshot
                    await trio.to_thread.run_sync(journal.save_snapshot, slot, chunks, below)
                    synced = True
                else:
                    batch, synced = _one_write(run)
                    await trio.to_thread.run_sync(journal.write, batch, synced)
            finally:
                self._writer_busy = False
            self._written(run, synced, (time.perf_counter() - started) * 1000)
            self._carry_out()

    # ---------------------------------------------------------------------------- shipping

    def _ship(self, effects: Effects) -> None:
        # Chunks (for transfers opened earlier), then closes, then new transfers: a
        # stalled transfer's close and a new one's open may come together.
        for peer, first, count, acked in effects.ship_chunks:
            shipment = self._shipments.get(peer)
            if shipment is not None:
                shipment.wanted.extend((index, acked) for index in range(first, first + count))
                shipment.changed.set()
        for peer, _ in effects.ship_close:
            shipment = self._shipments.pop(peer, None)
            if shipment is not None:
                shipment.scope.cancel()
        for peer in effects.ship_open:
            if self._nursery is not None:
                shipment = self._shipments[peer] = _Shipment()
                self._nursery.start_soon(self._open_shipment, peer, shipment)

    async def _open_shipment(self, peer: int, shipment: _Shipment) -> None:
        """Read the stored snapshot's chunks (in a thread: they come from disk) and send
        as many as the core allows."""
        with shipment.scope:
            try:
                view = await trio.to_thread.run_sync(self.journal.snapshot_view)
                count, chunks = await trio.to_thread.run_sync(
                    self.machine.shipped, view, self.settings.snapshot_chunk_bytes
                )
                if shipment.scope.cancel_called:
                    return  # closed while the thread ran (a thread is not interrupted)
                self.core.ship_opened(peer, view.slot, count)
                self._carry_out()
                window: dict[int, bytes] = {}  # sent and not yet acknowledged
                while True:
                    while not shipment.wanted:
                        shipment.changed = trio.Event()
                        await shipment.changed.wait()
                    index, acked = shipment.wanted.popleft()
                    for done in [i for i in window if i < acked]:
                        del window[done]
                    if index not in window:
                        data = await trio.to_thread.run_sync(next, chunks, None)
                        if data is None:
                            log.error("the snapshot for node %d ends before chunk %d", peer, index)
                            return
                        window[index] = data
                    chunk = SnapshotChunk(self.id, view.slot, index, count, window[index])
                    self.peers.send_frame(peer, self.peers.frame(chunk))
            except FrameTooLarge:
                log.error("snapshot chunk for node %d exceeds the frame bound", peer)
            except StorageError as error:  # this transfer fails; the node goes on
                log.error("cannot read the snapshot for node %d: %s", peer, error)

    # ------------------------------------------------------------------------------- views

    @property
    def snapshots_taken(self) -> int:
        return self.core.snapshots_taken

    @property
    def snapshots_installed(self) -> int:
        return self.core.snapshots_installed

    @property
    def snapshots_sent(self) -> int:
        return self.core.snapshots_sent

    def clock_ms(self) -> int:
        """This node's wall clock, the one it stamps the log with as leader."""
        return self._clock_ms()

    def status(self) -> dict:
        r = self.replica
        core = self.core
        return {
            "node": self.id,
            "role": r.role.name.lower() if r.voting else "learner",
            "voting": r.voting,
            "ballot": [r.ballot.round, r.ballot.node] if r.role is not Role.FOLLOWER else None,
            "leader": r.leader_hint,
            "commit": r.commit,
            "applied": core.applied,
            "promised": [r.promised.round, r.promised.node],
            "log_start": r.log_start,
            "snapshot": core.snapshot_at,
            "snapshots": {
                "taken": core.snapshots_taken,
                "sent": core.snapshots_sent,
                "installed": core.snapshots_installed,
                "last": core.snapshot_last,
            },
            "syncs": self.syncs,
            "turns": self.turns,
            "ticks_skipped": self.ticks_skipped,
            "turn_ms_max": round(self.turn_ms_max, 1),
            "tick_late_ms_max": round(self.tick_late_ms_max, 1),
            "pipeline": r.in_flight_slots,
            "replica_lag": max(0, r.known_commit - core.applied),
            "elections": {"started": core.campaigns, "won": core.elections_won},
            "clock": {
                "offsets_ms": {
                    peer: round(offset, 1)
                    for peer, offset in core.clocks.offsets(core.ticks).items()
                },
                "from_majority_ms": core.clocks.from_majority_ms(core.ticks),
                "may_lead": r.may_lead,
            },
            **(self.metrics.summary() if self.metrics is not None else {}),
        }


def _one_write(run: list[Write]) -> tuple[Batch, bool]:
    """Consecutive journal writes as one batch, and whether it is synced (if any is)."""
    batch = run[0].batch if len(run) == 1 else _merged(run)
    return batch, any(write.sync for write in run)


def _merged(run: list[Write]) -> Batch:
    """Consecutive journal batches as one: later writes to the same item win."""
    out = Batch()
    for write in run:
        batch = write.batch
        if batch.truncate_below is not None:
            out.truncate_below = max(out.truncate_below or 0, batch.truncate_below)
        if batch.promised is not None:
            out.promised = batch.promised
        out.entries.update(batch.entries)
        if batch.commit is not None:
            out.commit = batch.commit
        if batch.voting is not None:
            out.voting = batch.voting
    return out


class _Shipment:
    """One snapshot transfer under way: the chunks the core asked to be sent."""

    def __init__(self) -> None:
        #: (chunk index, chunks acknowledged) to send, in order
        self.wanted: deque[tuple[int, int]] = deque()
        self.changed = trio.Event()
        self.scope = trio.CancelScope()


__all__ = ["CommandFailed", "Node", "NodeSettings"]
