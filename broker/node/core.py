"""The node core: everything one node decides per turn, sans-IO.

Both the trio runtime (`runtime.py`) and the simulator (`paxq.broker.sim`) drive this one
class, in the manner of etcd's `RawNode`: inputs go in, effects come out, and the driver
carries the effects out. It owns the Paxos replica, the replicated machine, the table of
commands waiting for their slot (by token), the leader's time stamps, the snapshot policy
and both ends of a snapshot transfer. It reads no clock (every input that needs the time
carries the driver's reading), and touches no socket, thread or disk: the machine writes
through the key space it was built on, and everything else durable is a `Write` effect.

Inputs: `step` (a peer's message), `tick`, `command`, `persisted` (writes done, in order),
`ship_opened` (the stored snapshot is open for shipping), `stop`. Output: `take()` returns the
`Effects` gathered since the last call. The driver's contract:

- `writes`: carry them out in order, one after another (coalescing is allowed); each synced
  one makes everything written before it durable. Report completion with `persisted(id)`.
- `send`: may leave at once. Votes that report a write (Promise, Accepted, Prepare) are held
  here until every synced write issued before them is durable, then released into `send`:
  only what depends on a record waits for it.
- `replies`: answers for the waiters given to `command`; `applied`: what the machine did.
- `ship_open` / `ship_chunks` / `ship_close`: read the stored snapshot's chunks in order and
  send them as `SnapshotChunk`s; the core paces them by the receiver's acknowledgements and
  asks again for the unacknowledged ones (never more than a window) when they stall.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from random import Random

from paxq.storage import Batch, JournalState

from ..machine import time_command
from ..paxos import (
    CommitRecord,
    Config,
    Message,
    ProposeResult,
    Ready,
    Record,
    Replica,
    Role,
    Value,
)
from ..persist import batch_of, durable_state
from .clocks import ClockEcho, ClockOffsets, ClockProbe
from .machines import Machine, SnapshotInvalid
from .transfer import Assembler, Incoming, SnapshotAck, SnapshotChunk

ReplicaFactory = Callable[[int, Config, Random, object], Replica]

#: what a command's waiter hears: "ok" with the machine's result, or why not
OK = "ok"
NOT_LEADER = "not leader"  # never got a slot here: safe to send again
UNKNOWN = "unknown"  # may have been chosen (leadership lost, time ran out, node stopped)
TOO_LARGE = "too large"  # over command_bytes_max: never chosen, and never will be
_REFUSALS = {
    ProposeResult.NOT_LEADER: NOT_LEADER,
    ProposeResult.OVERLOADED: "overloaded",
    ProposeResult.TOO_LARGE: TOO_LARGE,
}


@dataclass(frozen=True)
class CoreSettings:
    #: a command whose slot is not applied within this many ticks is answered "unknown"
    command_timeout_ticks: int = 500
    #: snapshot every this many applied slots (0: never), keeping this many slots of log
    #: behind it so that a peer lagging a little catches up from the log
    snapshot_every_slots: int = 2048
    snapshot_keep_slots: int = 256
    #: snapshots travel in chunks of about this size, this many ahead of the acknowledgement
    snapshot_chunk_bytes: int = 1 << 20
    snapshot_window_chunks: int = 4
    #: a transfer whose receiver acknowledges nothing for this many ticks is abandoned
    snapshot_ack_timeout_ticks: int = 250
    #: a received snapshot larger than this is refused
    snapshot_bytes_max: int = 1 << 30
    #: with leases or aged messages due and no traffic, the leader stamps time this often
    stamp_idle_ms: int = 100
    #: every this many ticks each peer's clock is probed; a node whose clock is further than
    #: `clock_offset_ms_max` from a majority's refuses to lead (0: no bound)
    clock_probe_ticks: int = 25
    clock_offset_ms_max: int = 500
    #: commands applied in one `take()` at most (whole slots, one at least; a no-op counts
    #: one); the rest wait for the next (`backlog`), so that a catch-up or a restart's replay
    #: does not make one turn as long as itself
    apply_commands_max: int = 1024

    def __post_init__(self) -> None:
        if self.apply_commands_max < 1:
            raise ValueError(f"apply_commands_max must be positive, not {self.apply_commands_max}")


class Write:
    """One write for the driver: a journal batch, or a snapshot to store."""

    __slots__ = ("batch", "id", "records", "snapshot", "sync", "traced")

    def __init__(
        self,
        write_id: int,
        batch: Batch | None,
        records: list[Record],
        sync: bool,
        snapshot: tuple[int, list[bytes], int] | None = None,
    ) -> None:
        self.id = write_id
        self.batch = batch
        self.records = records  # the core's records behind `batch` (for tracing)
        #: False: a commit point only, which can be learnt again; the next sync covers it
        self.sync = sync
        #: (slot, chunks, truncate the log below): store it as the snapshot
        self.snapshot = snapshot
        self.traced: list[int] = []  # the driver's note: traced slots this write holds

    def __repr__(self) -> str:
        what = f"snapshot at {self.snapshot[0]}" if self.snapshot else f"{self.records!r}"
        return f"Write({self.id}, {what}, sync={self.sync})"


class Effects:
    """What one or more inputs produced; see the module docstring for the contract."""

    __slots__ = (
        "applied",
        "changed",
        "notices",
        "replies",
        "send",
        "ship_chunks",
        "ship_close",
        "ship_open",
        "stamps",
        "woke",
        "writes",
    )

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self.send: list[tuple[int, object]] = []
        #: (waiter, outcome, machine result or None, slot or None)
        self.replies: list[tuple[object, str, object, int | None]] = []
        #: (slot, value, results) in slot order
        self.applied: list[tuple[int, Value, list[object]]] = []
        #: time entries this leader proposed
        self.stamps: list[bytes] = []
        #: something became readable or claimable: in `changed` (None: anything may have)
        self.woke = False
        self.changed: set[str] | None = set()
        self.ship_open: list[int] = []
        #: (peer, first index, count, acknowledged: chunks below it may be forgotten)
        self.ship_chunks: list[tuple[int, int, int, int]] = []
        self.ship_close: list[tuple[int, bool]] = []  # (peer, completed)
        self.notices: list[tuple[str, str]] = []  # (level, text) for the driver's log

    def __bool__(self) -> bool:
        return bool(
            self.writes
            or self.send
            or self.replies
            or self.applied
            or self.woke
            or self.ship_open
            or self.ship_chunks
            or self.ship_close
            or self.notices
        )

    def wake(self, changed: set[str] | None) -> None:
        self.woke = True
        if changed is None or self.changed is None:
            self.changed = None
        else:
            self.changed |= changed


class _Shipment:
    """A snapshot transfer to one peer: how far it is sent and acknowledged."""

    __slots__ = ("acked", "count", "progress_tick", "resent_tick", "sent", "slot")

    def __init__(self, tick: int) -> None:
        self.slot = 0
        self.count: int | None = None  # None until the driver has opened the snapshot
        self.sent = 0
        self.acked = 0
        self.progress_tick = tick
        self.resent_tick = tick


class NodeCore:
    #: the receiving end of transfers (a class attribute so tests can plant a faulty one)
    assembler_type: type[Assembler] = Assembler

    def __init__(
        self,
        node_id: int,
        config: Config,
        settings: CoreSettings,
        rng: Random,
        state: JournalState,
        snapshot: tuple[int, list[bytes]],
        machine_factory: Callable[[], Machine],
        replica_factory: ReplicaFactory = Replica,
    ) -> None:
        """`state` and `snapshot` are what the journal loaded. Raises SnapshotInvalid if the
        stored snapshot does not restore."""
        self.id = node_id
        self.settings = settings
        self._machine_factory = machine_factory
        # The machine restarts from the stored snapshot; the replica replays the log from its
        # start, and slots the snapshot covers are skipped when applied.
        slot, chunks = snapshot
        self.machine = self._restored(slot, chunks) if slot else machine_factory()
        if slot:
            self.machine.snapshot_saved()  # that snapshot is the stored one
        self.snapshot_at = slot
        self.replica = replica_factory(node_id, config, rng, durable_state(state))
        self._assembler = self.assembler_type(
            node_id, settings.snapshot_bytes_max, lambda chunk: self.machine.absorb(chunk)
        )
        self._out = Effects()
        self._tick = 0
        # Writes handed out and not yet persisted, oldest first; the newest synced one.
        self._writes: deque[Write] = deque()
        self._write_id = 0
        self._sync_pending = 0
        self._held: deque[tuple[int, int, Message]] = deque()  # (write, peer, vote)
        # Commands waiting for their slot: token -> waiter; each batch this leader cut,
        # by slot, with the tokens of its commands; deadlines in arrival order.
        self._token = 0
        self._waiting: dict[int, object] = {}
        self._by_slot: dict[int, tuple[Value, tuple[object, ...]]] = {}
        self._unapplied: deque[tuple[int, Value]] = deque()  # committed, not yet applied
        self._deadlines: deque[tuple[int, int]] = deque()
        # The leader's clock stamps the log (time entries unique across restarts).
        self._stamped_ms = 0
        self._stamp_seq = rng.getrandbits(32)
        self._saving: tuple[Write, Machine] | None = None  # our own snapshot being stored
        self._installing: tuple[Write, Machine] | None = None  # a received one being stored
        self._shipping: dict[int, _Shipment] = {}
        self._shipped: dict[int, tuple[int, int]] = {}  # peer -> (slot, tick) of the last done
        self._assembled_tick = 0  # when the transfer being received last made progress
        self._now_ms = 0  # the driver's last clock reading
        self._clock_refused = False  # said so in the log
        self.clocks = ClockOffsets(
            self.replica.peers, self.replica.quorum, 4 * settings.clock_probe_ticks
        )
        self._role = Role.FOLLOWER
        self._voting = self.replica.voting
        if not self._voting:
            self._out.notices.append(
                (
                    "warning",
                    "this node has no data of an existing cluster (a new or emptied data "
                    "directory, not started with --bootstrap): it catches up from its peers "
                    "and does not vote until it has seen new slots chosen",
                )
            )
        self.stopped = False
        #: optional: called (slot, False) before and (slot, True) after a slot is applied
        self.on_apply: Callable[[int, bool], None] | None = None
        self.campaigns = 0
        self.elections_won = 0
        self.snapshots_taken = 0
        self.snapshots_sent = 0
        self.snapshots_installed = 0
        self.snapshot_last: dict | None = None  # slot and bytes of the last one taken

    # ----------------------------------------------------------------------------- inputs

    def step(self, message: object) -> None:
        """A message from a peer (a Paxos message or a snapshot chunk or acknowledgement)."""
        if self.stopped:
            return
        kind = type(message)
        if kind is SnapshotChunk:
            self._on_chunk(message)
        elif kind is SnapshotAck:
            self._on_ack(message)
        elif kind is ClockProbe:
            if self._now_ms:  # no reading before the first tick: an echo of 0 says nothing
                echo = ClockEcho(self.id, message.sent_ms, self._now_ms)
                self._out.send.append((message.src, echo))
        elif kind is ClockEcho:
            self.clocks.on_echo(message, self._now_ms, self._tick)
        else:
            self.replica.step(message)

    def tick(self, now_ms: int) -> None:
        """One tick of the driver's timer; `now_ms` is its wall clock."""
        if self.stopped:
            return
        self._tick += 1
        self._now_ms = now_ms
        self._check_clock()
        self.replica.tick()
        self._expire()
        if self._shipping:
            self._check_shipments()
        if (
            self._assembler.current is not None
            and self._tick - self._assembled_tick > self.settings.snapshot_ack_timeout_ticks
        ):
            self._assembler.abandon()
        due = self.machine.due_ms()
        if (
            due is not None
            and due <= now_ms
            and now_ms - self._stamped_ms >= self.settings.stamp_idle_ms
        ):
            self._stamp(now_ms)  # a lease or retention is due: time moves without traffic

    def command(self, command: bytes, waiter: object, now_ms: int) -> None:
        """Replicate `command`; `waiter` comes back once in `Effects.replies`. Commands must
        be unique (clients number them), so a command is proposed once per call."""
        if self.stopped:
            self._out.replies.append((waiter, UNKNOWN, None, None))
            return
        self._now_ms = now_ms
        if now_ms > self._stamped_ms:
            self._stamp(now_ms)  # the leader's clock, for the commands that follow
        self._token += 1
        token = self._token
        result = self.replica.propose(command, token)
        if result is ProposeResult.QUEUED:
            self._waiting[token] = waiter
            self._deadlines.append((self._tick + self.settings.command_timeout_ticks, token))
        else:
            self._out.replies.append((waiter, _REFUSALS[result], None, None))

    def persisted(self, write_id: int) -> None:
        """Every write up to `write_id` is done (synced ones durable)."""
        writes = self._writes
        while writes and writes[0].id <= write_id:
            write = writes.popleft()
            if write.records:
                self.replica.persisted(write.records)
            if self._saving is not None and self._saving[0] is write:
                self._saved(write, self._saving[1])
            elif self._installing is not None and self._installing[0] is write:
                machine = self._installing[1]
                self._installing = None
                if machine is self.machine:
                    machine.snapshot_saved()  # what the received snapshot made garbage may go
        if self._sync_pending <= write_id:
            self._sync_pending = 0
        held = self._held
        send = self._out.send
        while held and held[0][0] <= write_id:
            _, peer, message = held.popleft()
            send.append((peer, message))

    def ship_opened(self, peer: int, slot: int, count: int) -> None:
        """The driver opened the stored snapshot (up to `slot`, `count` chunks) for `peer`."""
        shipment = self._shipping.get(peer)
        if shipment is None or shipment.count is not None:
            return  # closed meanwhile (the close went out with it), or opened already
        shipment.slot, shipment.count = slot, count
        shipment.progress_tick = self._tick
        self._pump(peer, shipment)

    def stop(self) -> None:
        """The node stops (shut down, or a write failed): every waiter hears "unknown"."""
        self.stopped = True
        replies = self._out.replies
        for waiter in self._waiting.values():
            replies.append((waiter, UNKNOWN, None, None))
        self._waiting.clear()
        self._deadlines.clear()
        for peer in list(self._shipping):
            self._close_shipment(peer, False)

    # ----------------------------------------------------------------------------- output

    def take(self, apply: bool = True) -> Effects | None:
        """The effects of every input since the last call (None: nothing to do). With
        `apply=False` committed slots wait (`backlog`) unless the role changed: a driver
        that writes and sends the votes of a turn before it applies what the turn committed
        takes twice, so that a follower's vote does not wait for its machine."""
        if not self.stopped:
            while (ready := self.replica.ready()) is not None:
                self._carry(ready)
            role = self.replica.role
            if self._unapplied and (apply or role is not self._role):
                self._apply()  # before a deposed leader answers what waits "unknown"
            if role is not self._role:
                if self._role is Role.LEADER:
                    self._deposed()
                self._role = role
                if role is Role.CANDIDATE:
                    self.campaigns += 1
                elif role is Role.LEADER:
                    self.elections_won += 1
            if self.replica.voting is not self._voting:
                self._voting = self.replica.voting
                self._out.notices.append(
                    ("info", f"caught up to slot {self.replica.commit}: voting from now on")
                )
        out = self._out
        if not out:
            return None
        self._out = Effects()
        return out

    def _carry(self, ready: Ready) -> None:
        out = self._out
        by_slot = self._by_slot
        for slot, value, tokens in ready.proposed:
            by_slot[slot] = (value, tokens)
        if ready.persist:
            self._write(ready.persist, batch_of(ready.persist), self._needs_sync(ready.persist))
        out.send.extend(ready.messages)
        if ready.after_persist:
            pending = self._sync_pending
            if pending:
                self._held.extend((pending, peer, m) for peer, m in ready.after_persist)
            else:
                out.send.extend(ready.after_persist)
        if ready.committed:
            self._unapplied.extend(ready.committed)
        for token in ready.dropped:
            waiter = self._waiting.pop(token, None)
            if waiter is not None:
                out.replies.append((waiter, NOT_LEADER, None, None))
        for peer, from_slot in ready.snapshot_requests:
            if peer not in self._shipping and self.snapshot_at and not self._has(peer, from_slot):
                self._shipping[peer] = _Shipment(self._tick)
                out.ship_open.append(peer)

    def _has(self, peer: int, from_slot: int) -> bool:
        """Did `peer` ask before the transfer it has just received reached it? (Catch-up
        requests repeat while a transfer runs; the late ones must not start another.)"""
        done = self._shipped.get(peer)
        return (
            done is not None
            and from_slot < done[0]
            and self._tick - done[1] < self.settings.snapshot_ack_timeout_ticks
        )

    @staticmethod
    def _needs_sync(records: list[Record]) -> bool:
        """Promises and acceptances must be durable; a commit point alone can be re-learnt."""
        return any(type(record) is not CommitRecord for record in records)

    def _write(
        self,
        records: list[Record],
        batch: Batch | None,
        sync: bool,
        snapshot: tuple[int, list[bytes], int] | None = None,
    ) -> Write:
        self._write_id += 1
        write = Write(self._write_id, batch, records, sync, snapshot)
        self._writes.append(write)
        self._out.writes.append(write)
        if sync:
            self._sync_pending = write.id
        return write

    # ------------------------------------------------------------------ apply and answer

    def _apply(self) -> None:
        """Apply the next committed slots, up to `apply_commands_max` commands in all, and
        answer their commands."""
        machine = self.machine
        out = self._out
        by_slot = self._by_slot
        hook = self.on_apply
        unapplied = self._unapplied
        budget = self.settings.apply_commands_max
        while unapplied and budget > 0:
            slot, value = unapplied.popleft()
            budget -= len(value) or 1
            if slot < machine.slots:
                # A snapshot restored at start, or installed since, covers it.
                entry = by_slot.pop(slot, None)
                if entry is not None:
                    self._answer_unknown(entry[1])
                continue
            if hook is not None:
                hook(slot, False)
            # Only the slots this node has waiters for are answered.
            results = machine.apply(slot, value, slot in by_slot)
            if hook is not None:
                hook(slot, True)
            out.applied.append((slot, value, results))
            entry = by_slot.pop(slot, None)
            if entry is not None:
                self._answer(slot, entry, value, results)
        machine.flush()
        take = getattr(machine, "take_changed", None)
        out.wake(take() if take is not None else None)
        every = self.settings.snapshot_every_slots
        if every and self._saving is None and machine.slots - self.snapshot_at >= every:
            self._take_snapshot()

    def _answer(
        self, slot: int, entry: tuple[Value, tuple[object, ...]], value: Value, results: list
    ) -> None:
        proposed, tokens = entry
        waiting = self._waiting
        replies = self._out.replies
        if proposed is value or proposed == value:
            for token, result in zip(tokens, results, strict=True):
                waiter = waiting.pop(token, None)
                if waiter is not None:
                    replies.append((waiter, OK, result, slot))
        else:
            # Another leader's value won the slot. This batch was cut once, for this slot
            # only, so its commands were never chosen: they may be sent again.
            for token in tokens:
                waiter = waiting.pop(token, None)
                if waiter is not None:
                    replies.append((waiter, NOT_LEADER, None, None))

    def _deposed(self) -> None:
        """Leadership is lost: its batches may still be chosen (a new leader proposes what
        phase 1 finds) or not. Their waiters hear "unknown" now rather than at their
        deadline, so that clients resend at once to the new leader: sequenced commands are
        answered, not applied again, and the rest are harmless or reported."""
        commit = self.replica.commit
        by_slot = self._by_slot
        for slot in [s for s in by_slot if s >= commit]:  # below: chosen, answered when applied
            self._answer_unknown(by_slot.pop(slot)[1])

    def _answer_unknown(self, tokens: tuple[object, ...]) -> None:
        for token in tokens:
            waiter = self._waiting.pop(token, None)
            if waiter is not None:
                self._out.replies.append((waiter, UNKNOWN, None, None))

    def _expire(self) -> None:
        """Answer "unknown" for commands whose slot was not applied in time."""
        deadlines, waiting = self._deadlines, self._waiting
        tick = self._tick
        while deadlines and (deadlines[0][0] <= tick or deadlines[0][1] not in waiting):
            _, token = deadlines.popleft()
            waiter = waiting.pop(token, None)
            if waiter is not None:
                self._out.replies.append((waiter, UNKNOWN, None, None))

    def _check_clock(self) -> None:
        """Probe the peers' clocks now and then; lead only within the bound of a majority's
        (and not before that is known: a node restarted with its clock off must not lead
        on it meanwhile)."""
        if (self._tick - 1) % self.settings.clock_probe_ticks == 0:  # from the first tick
            probe = ClockProbe(self.id, self._now_ms)
            self._out.send.extend((peer, probe) for peer in self.replica.peers)
        bound = self.settings.clock_offset_ms_max
        if not bound:
            return
        off = self.clocks.from_majority_ms(self._tick)
        if off is None and self.replica.role is Role.LEADER:
            self._out.notices.append(
                ("warning", "no recent clock readings from a majority: stepping down")
            )
        self.replica.may_lead = off is not None and off <= bound
        if off is None:
            return
        if off > bound and not self._clock_refused:
            self._clock_refused = True
            self._out.notices.append(
                (
                    "error",
                    f"clock {off:.0f} ms from a majority's, beyond clock_offset_ms_max "
                    f"{bound}: refusing to lead (its time stamps would move every lease "
                    "deadline as much); fix this machine's time sync",
                )
            )
        elif off <= bound and self._clock_refused:
            self._clock_refused = False
            text = f"clock within {bound} ms of a majority's ({off:.0f} ms): may lead"
            self._out.notices.append(("info", text))

    def _stamp(self, now_ms: int) -> None:
        if self.replica.role is not Role.LEADER:
            return
        self._stamp_seq = (self._stamp_seq + 1) & 0xFFFFFFFF
        stamp = time_command(self.id, self._stamp_seq, now_ms)
        if self.replica.propose(stamp) is ProposeResult.QUEUED:
            self._stamped_ms = now_ms
            self._out.stamps.append(stamp)

    # -------------------------------------------------------------------------- snapshots

    def _restored(self, slot: int, chunks: list[bytes]) -> Machine:
        """A fresh machine from a snapshot that must end exactly at `slot`."""
        machine = self._machine_factory()
        machine.restore(chunks)
        if machine.slots != slot:
            raise SnapshotInvalid(f"the snapshot ends at slot {machine.slots}, not at {slot}")
        return machine

    def _take_snapshot(self) -> None:
        """Store the machine's state, then (once stored) drop the log below it, less a tail
        kept for peers that lag a little. The store and the truncation are one write."""
        machine = self.machine
        slot = machine.slots
        chunks = machine.snapshot(self.settings.snapshot_chunk_bytes)
        below = max(self.replica.log_start, slot - self.settings.snapshot_keep_slots)
        write = self._write([], None, True, (slot, chunks, below))
        self._saving = (write, machine)

    def _saved(self, write: Write, machine: Machine) -> None:
        self._saving = None
        slot, chunks, below = write.snapshot
        if machine is self.machine:  # else a received snapshot replaced it meanwhile
            machine.snapshot_saved()
        self.replica.compact(min(below, self.replica.applied))
        self.snapshot_at = max(self.snapshot_at, slot)
        self.snapshots_taken += 1
        self.snapshot_last = {"slot": slot, "bytes": sum(map(len, chunks))}

    def _on_chunk(self, chunk: SnapshotChunk) -> None:
        assembler = self._assembler
        before = assembler.current, len(assembler.current.chunks) if assembler.current else 0
        ack, complete = assembler.on_chunk(chunk, self.replica.commit)
        current = assembler.current
        if current is not None and (current is not before[0] or len(current.chunks) > before[1]):
            self._assembled_tick = self._tick
        if ack is not None:
            self._out.send.append((chunk.src, ack))
        if complete is not None:
            self._install(complete)

    def _install(self, received: Incoming) -> None:
        """A peer's snapshot: check it, have it stored, and adopt it. The replica's records
        that follow depend on it, and the driver writes in order, so they land after it."""
        slot = received.slot
        if slot <= self.replica.commit:
            return  # we got there on our own meanwhile
        try:
            machine = self._restored(slot, received.chunks)
        except SnapshotInvalid as error:
            self._out.notices.append(
                ("error", f"refusing the snapshot from node {received.src}: {error}")
            )
            return
        # What is stored is the machine's own snapshot: a shipped one may carry payloads,
        # which restore() has put in the key space already.
        stored = machine.snapshot(self.settings.snapshot_chunk_bytes)
        self._installing = (self._write([], None, True, (slot, stored, slot)), machine)
        self.machine = machine
        self.snapshot_at = slot
        for covered in [s for s in self._by_slot if s < slot]:
            self._answer_unknown(self._by_slot.pop(covered)[1])
        self.replica.install_snapshot(slot)
        self.snapshots_installed += 1
        self._out.wake(None)
        self._out.notices.append(
            ("info", f"installed the snapshot up to slot {slot} from node {received.src}")
        )

    def _on_ack(self, ack: SnapshotAck) -> None:
        shipment = self._shipping.get(ack.src)
        if shipment is None or shipment.count is None or ack.slot != shipment.slot:
            return
        if ack.received > shipment.acked:
            shipment.acked = min(ack.received, shipment.count)
            shipment.progress_tick = self._tick
            if shipment.acked >= shipment.count:
                self.snapshots_sent += 1
                self._shipped[ack.src] = (shipment.slot, self._tick)
                self._out.notices.append(
                    (
                        "info",
                        f"sent node {ack.src} the snapshot up to slot {shipment.slot} "
                        f"({shipment.count} chunks)",
                    )
                )
                self._close_shipment(ack.src, True)
            else:
                self._pump(ack.src, shipment)

    def _pump(self, peer: int, shipment: _Shipment) -> None:
        end = min(shipment.count, shipment.acked + self.settings.snapshot_window_chunks)
        if end > shipment.sent:
            self._out.ship_chunks.append((peer, shipment.sent, end - shipment.sent, shipment.acked))
            shipment.sent = end

    def _check_shipments(self) -> None:
        limit = self.settings.snapshot_ack_timeout_ticks
        resend = max(1, limit // 5)
        tick = self._tick
        for peer, shipment in list(self._shipping.items()):
            if (
                shipment.sent > shipment.acked
                and tick - max(shipment.progress_tick, shipment.resent_tick) >= resend
            ):
                # Go back to the first chunk not acknowledged: one was lost or came too
                # early (the receiver takes them in order). The driver keeps the window.
                shipment.resent_tick = tick
                unacked = shipment.sent - shipment.acked
                self._out.ship_chunks.append((peer, shipment.acked, unacked, shipment.acked))
            # Opening reads the whole key space once (to count the chunks): it gets longer.
            opened = shipment.count is not None
            if tick - shipment.progress_tick > (limit if opened else 4 * limit):
                # A lost chunk or a reconnect stalls the acks: give up; the peer's next
                # catch-up request starts a fresh transfer.
                self._out.notices.append(
                    (
                        "warning",
                        f"snapshot to node {peer} stalled at chunk {shipment.acked} "
                        f"of {shipment.count}",
                    )
                )
                self._close_shipment(peer, False)

    def _close_shipment(self, peer: int, completed: bool) -> None:
        del self._shipping[peer]
        self._out.ship_close.append((peer, completed))

    # ------------------------------------------------------------------------------ views

    @property
    def ticks(self) -> int:
        return self._tick

    @property
    def backlog(self) -> bool:
        """Committed slots wait to be applied: the driver should `take()` again soon."""
        return bool(self._unapplied) and not self.stopped

    @property
    def applied(self) -> int:
        """The next slot the machine applies (the replica hands slots over before that)."""
        return self.machine.slots

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)
