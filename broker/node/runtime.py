"""The node: one replica of the core driven by trio, persisting through the journal.

One task owns the replica. Each turn it takes every input that is waiting (peer messages, client
commands, ticks), feeds them to the core, and carries out the output in the order the core's
contract demands: persist (one synced journal write for the whole turn: group commit, in a worker
thread so the sockets keep flowing), then send, then apply, then answer clients. While a sync
runs, new inputs gather in bounded channels and become the next turn.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from paxq.client.wire import FrameTooLarge
from paxq.storage import Identity, Journal

from ..paxos import Config, ProposeResult, Replica, Role, Value
from ..persist import batch_of, durable_state
from .codec import Decoder
from .peers import PeerSettings, PeerTransport

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


#: Client commands start with a session id and a sequence number (8 bytes each), which makes
#: every command unique; the machine sees only what follows.
COMMAND_HEADER_BYTES = 16


class LogMachine:
    """The minimal replicated machine until the queue machine arrives: an append-only log.

    apply() returns, for each command, the result its client gets: the entry's offset. The
    last `retain` entries stay readable (a bounded ring: memory does not grow with the log).
    """

    def __init__(self, retain: int = 100_000, retain_bytes: int = 64 << 20) -> None:
        self.length = 0
        self.slots = 0
        self._recent: deque[bytes] = deque(maxlen=retain)
        self._recent_bytes = 0
        self._retain_bytes = retain_bytes

    def apply(self, slot: int, value: Value) -> list[object]:
        self.slots = slot + 1
        first = self.length
        self.length += len(value)
        recent = self._recent
        for command in value:
            entry = command[COMMAND_HEADER_BYTES:]
            if len(recent) == recent.maxlen:
                self._recent_bytes -= len(recent[0])  # the append below evicts it
            recent.append(entry)
            self._recent_bytes += len(entry)
        while self._recent_bytes > self._retain_bytes and recent:
            self._recent_bytes -= len(recent.popleft())
        return list(range(first, self.length))

    def read(self, offset: int, limit: int) -> tuple[int, list[bytes]]:
        """(first offset returned, entries): from `offset` on, at most `limit`. Entries older
        than the ring are gone: the read starts at the oldest one kept."""
        first_kept = self.length - len(self._recent)
        first = max(offset, first_kept)
        start = first - first_kept
        return first, list(itertools.islice(self._recent, start, start + max(0, limit)))


_TICK = -1  # inbox tags below zero are not peers
_COMMAND = -2


class Node:
    def __init__(
        self,
        settings: NodeSettings,
        journal: Journal,
        machine_factory: Callable[[], LogMachine] = LogMachine,
    ) -> None:
        self.settings = settings
        self.id = settings.peer.node_id
        if journal.identity != Identity(settings.peer.cluster, self.id):
            raise ValueError(f"journal {journal.identity} is not this node's")
        self.journal = journal
        self.replica = Replica(
            self.id, settings.paxos, random.Random(), durable_state(journal.load())
        )
        self.machine = machine_factory()
        # One bounded inbox for every input: peer messages (tagged with the peer), ticks and
        # client commands. Past its bound, senders wait: backpressure, not memory.
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[int, object]](
            settings.inbox_max
        )
        self.peers = PeerTransport(settings.peer, Decoder(settings.paxos), self._inbox_send)
        self._waiting: dict[bytes, tuple[trio.Event, list]] = {}
        self.turns = 0
        self.syncs = 0
        self.ticks_skipped = 0
        self.oversized_messages = 0

    # ------------------------------------------------------------------------- client side

    async def submit(self, command: bytes) -> object:
        """Replicate one command; return what the machine answered for it once applied.

        Raises CommandFailed with reason "not leader" (see `leader`), "overloaded", "too large",
        or "unknown" when leadership was lost or time ran out after it may have got a slot.
        Commands must be unique (the client layer adds a session and a sequence).
        """
        done = trio.Event()
        outcome: list = []
        try:
            with trio.move_on_after(self.settings.command_timeout_s):
                await self._inbox_send.send((_COMMAND, (command, done, outcome)))
                await done.wait()
        finally:
            if not outcome:
                # Given up (timeout or cancellation): if the loop has not proposed it yet it
                # never will (see _propose); if it has, it may still be applied: unknown.
                outcome.append(("unknown", None))
                waiter = self._waiting.get(command)
                if waiter is not None and waiter[0] is done:
                    del self._waiting[command]
        kind, value = outcome[0]
        if kind == "ok":
            return value
        raise CommandFailed(kind, self.replica.leader_hint)

    # -------------------------------------------------------------------------------- loop

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.peers.serve)
                nursery.start_soon(self._ticker)
                task_status.started()
                await self._loop()
        finally:
            for done, outcome in self._waiting.values():
                outcome.append(("unknown", None))
                done.set()
            self._waiting.clear()

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
            self._handle(await inbox.receive())
            for _ in range(bound):  # everything already waiting joins this turn
                try:
                    item = inbox.receive_nowait()
                except trio.WouldBlock:
                    break
                self._handle(item)
            self.turns += 1
            ready = self.replica.ready()
            if ready is not None:
                await self._carry_out(ready)

    def _handle(self, item: tuple[int, object]) -> None:
        source, payload = item
        if source >= 0:
            self.replica.step(payload)
        elif source == _TICK:
            self.replica.tick()
        else:
            self._propose(*payload)

    def _propose(self, command: bytes, done: trio.Event, outcome: list) -> None:
        if outcome:  # the submitter gave up while this waited in the inbox: drop it
            return
        result = self.replica.propose(command)
        if result is ProposeResult.QUEUED:
            self._waiting[command] = (done, outcome)
            return
        reason = {
            ProposeResult.NOT_LEADER: "not leader",
            ProposeResult.OVERLOADED: "overloaded",
            ProposeResult.TOO_LARGE: "too large",
        }[result]
        outcome.append((reason, None))
        done.set()

    async def _carry_out(self, ready) -> None:
        """Persist (one sync for the turn), then send, then apply and answer."""
        if ready.persist:
            batch = batch_of(ready.persist)
            await trio.to_thread.run_sync(self.journal.write, batch)
            self.syncs += 1
        frames: dict[int, bytes] = {}  # a broadcast is one message object: encode it once
        for peer, message in ready.messages:
            frame = frames.get(id(message))
            if frame is None:
                try:
                    frame = frames[id(message)] = self.peers.frame(message)
                except FrameTooLarge:
                    # Settings are validated against this; should it happen anyway, losing
                    # one message is something Paxos survives, stopping the node is not.
                    self.oversized_messages += 1
                    log.error("dropped an oversized %s to node %s", type(message).__name__, peer)
                    continue
            self.peers.send_frame(peer, frame)
        for slot, value in ready.committed:
            results = self.machine.apply(slot, value)
            if self._waiting:
                for command, result in zip(value, results, strict=True):
                    waiter = self._waiting.pop(command, None)
                    if waiter is not None:
                        waiter[1].append(("ok", result))
                        waiter[0].set()
        for command in ready.dropped:
            waiter = self._waiting.pop(command, None)
            if waiter is not None:
                waiter[1].append(("not leader", None))
                waiter[0].set()

    # ------------------------------------------------------------------------------- views

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
            "syncs": self.syncs,
            "turns": self.turns,
            "ticks_skipped": self.ticks_skipped,
        }
