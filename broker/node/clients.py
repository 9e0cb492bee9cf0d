"""The client port of a node: sessions of the client protocol (`docs/protocol.md`).

    hello    -> {"paxq": "client", "v": 2}
             <- {"ok": true, "node": N, "leader": "host:port" (when known)}
    command  -> {"id": I, "op": "publish", "topic": "orders", "messages": [{"body": b"..."}]}
             <- {"id": I, "ok": true, "result": {"offset": n, "count": 1}}
    query    -> {"id": I, "op": "read" | "describe" | "list" | "status", ...}
             <- {"id": I, "ok": true, "result": ...}   (status: "status": {...})
    error    <- {"id": I, "ok": false, "error": code, "message": text,
                 "leader": "host:port" (NOT_LEADER), "detail": ... (e.g. LEASE_LOST offsets)}

Commands (`COMMANDS`) go through the log to the machine (`paxq.broker.machine`, whose module
docstring lists their arguments); queries read this node's applied state. A `claim` or `read`
may carry `wait_ms`: with nothing to hand out, the node holds the request until a message
arrives (the machine names the topics that changed after each applied round) or the wait
ends, and only then answers; no client polls.

A follower answers a command with NOT_LEADER and the leader's client address rather than
forwarding it: one hop instead of two, no second timeout to reconcile, and a client that learns
the leader once talks to it directly from then on.

Bounds: connections per node, requests in flight per connection, waiting ones included (past
it the connection is not read: backpressure), the frame size, the command size (the batch
byte bound) and the wait.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable

import trio

from paxq.client.wire import (
    FRAME_BYTES_MAX,
    ErrorCode,
    FrameDecoder,
    FrameTooLarge,
    WireError,
    encode_frame,
)
from paxq.client.wire.protocol import (
    COMMANDS,
    LIST_TOPICS_MAX,
    PING,
    PROTOCOL_VERSION,
    WAIT_MS_MAX,
)

from ..machine import MachineError
from ..machine import command as command_bytes
from ..paxos import Role
from .listen import serving
from .outbox import Outbox
from .runtime import Node

log = logging.getLogger("paxq.node.clients")

_FAILURES = {
    "not leader": ErrorCode.NOT_LEADER,
    "overloaded": ErrorCode.OVERLOADED,
    "too large": ErrorCode.TOO_LARGE,
    "unknown": ErrorCode.UNKNOWN_OUTCOME,
}
#: request fields for the session, not the machine (`trace`: the W3C traceparent)
_NOT_ARGUMENTS = frozenset({"id", "op", "trace"})
#: replies written to a client socket in one burst at most
_WRITE_BURST_BYTES_MAX = 1 << 20
#: refusals a lagging follower may give where the leader would not
_LAGGING = frozenset({ErrorCode.UNKNOWN_TOPIC, ErrorCode.UNKNOWN_SUBSCRIPTION})
_LOST = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError)


class ClientPort:
    def __init__(
        self,
        node: Node,
        client_addresses: dict[int, tuple[str, int]],
        *,
        connections_max: int = 1024,
        in_flight_max: int = 4096,
        frame_bytes_max: int = FRAME_BYTES_MAX,
        hello_timeout_s: float = 5.0,
        extra_status: Callable[[], dict] | None = None,
    ) -> None:
        self.node = node
        self.client_addresses = client_addresses
        self.connections_max = connections_max
        self.in_flight_max = in_flight_max
        self.frame_bytes_max = frame_bytes_max
        self.hello_timeout_s = hello_timeout_s
        self.extra_status = extra_status
        self.connections = 0
        self.waiting = 0  # claims and reads held for a message
        # topic name -> the event its waiting requests sleep on; set (and replaced) when the
        # machine reports the topic changed
        self._changes: dict[str, trio.Event] = {}
        self._watchers: dict[str, int] = {}  # topic name -> requests waiting on it
        node.on_applied = self._on_applied

    def _on_applied(self, changed: set[str] | None) -> None:
        events = self._changes
        if not events:
            return
        if changed is None:
            names = list(events)
        elif len(changed) < len(events):
            names = [name for name in changed if name in events]
        else:
            names = [name for name in events if name in changed]
        for name in names:
            events.pop(name).set()

    def _change_of(self, topic: object) -> trio.Event:
        """The event set at the next change of `topic` (watched by a waiting request)."""
        if type(topic) is not str:
            return trio.Event()  # the request is refused anyway: nothing will wake it
        event = self._changes.get(topic)
        if event is None:
            event = self._changes[topic] = trio.Event()
        return event

    def _unwatch(self, topic: object) -> None:
        """A waiting request on `topic` ended: its event goes with the last one, so names
        that never change (unknown topics) do not pile up."""
        if type(topic) is not str:
            return
        count = self._watchers.get(topic, 0) - 1
        if count > 0:
            self._watchers[topic] = count
            return
        self._watchers.pop(topic, None)
        self._changes.pop(topic, None)

    async def serve(
        self,
        listeners: list[trio.SocketListener] | None = None,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        address = self.client_addresses[self.node.id]
        async with serving(self._session, address, listeners) as (_, serving_on):
            task_status.started(serving_on)

    async def _session(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self.connections >= self.connections_max:
                await stream.send_all(
                    encode_frame(_error(None, ErrorCode.OVERLOADED, "too many connections"))
                )
                return
            self.connections += 1
            # Errors leave the session's nursery as exception groups (trio), hence except*.
            # One client's bad input or broken connection ends its session, never the node.
            try:
                await self._serve_session(stream)
            except* WireError as group:
                error = group.exceptions[0]
                log.info("closing a client connection: %s", error)
                with trio.move_on_after(1), contextlib.suppress(*_LOST):
                    await stream.send_all(encode_frame(_error(None, error.code, error.message)))
            except* _LOST:
                pass
            finally:
                self.connections -= 1

    async def _serve_session(self, stream: trio.SocketStream) -> None:
        decoder = FrameDecoder(self.frame_bytes_max)
        # The commands of one read go to the node together: they share a batch.
        frames = _frames(stream, decoder, self.node.flush)
        hello = None
        with trio.move_on_after(self.hello_timeout_s):  # a silent socket may not hold a slot
            hello = await anext(frames, None)
        if not isinstance(hello, dict) or hello.get("paxq") != "client":
            await stream.send_all(
                encode_frame(_error(None, ErrorCode.BAD_REQUEST, "expected a client hello"))
            )
            return
        if hello.get("v") != PROTOCOL_VERSION:
            await stream.send_all(
                encode_frame(
                    _error(
                        None,
                        ErrorCode.UNSUPPORTED_VERSION,
                        f"this node speaks v{PROTOCOL_VERSION}",
                    )
                )
            )
            return
        welcome: dict = {"ok": True, "node": self.node.id}
        leader = self.node.replica.leader_hint
        if leader in self.client_addresses:  # so a client finds the leader with no detour
            host, port = self.client_addresses[leader]
            welcome["leader"] = f"{host}:{port}"
        await stream.send_all(encode_frame(welcome))
        session = _Session(os.urandom(8), self.frame_bytes_max)
        async with trio.open_nursery() as nursery:
            session.nursery = nursery
            nursery.start_soon(self._write, stream, session)
            try:
                async for request in frames:
                    if session.in_flight >= self.in_flight_max:
                        self.node.flush()  # the answers it waits for may need what it gave
                        await session.wait_for_room()  # past the bound: stop reading
                    await self._dispatch(session, request)
            finally:
                self.node.flush()  # what this read handed over, however the session ends
            # The client closed its side: nobody waits for a held claim or read any more (a
            # claim that fired now would lease messages to nobody); answer the rest, then end.
            for waiter in list(session.waiters.values()):
                waiter.cancel()
            while session.in_flight:
                await session.wait_for_room()
            await session.flushed()
            nursery.cancel_scope.cancel()

    async def _write(self, stream: trio.SocketStream, session: _Session) -> None:
        """Replies the socket did not take at once go out here, those queued meanwhile in
        one write."""
        await session.outbox.pump(stream, _WRITE_BURST_BYTES_MAX)

    async def _dispatch(self, session: _Session, request: object) -> None:
        """Answer a query at once, or hand a command to the node with a callback that
        answers it once applied; a claim or read that may wait gets a task of its own."""
        if not isinstance(request, dict) or type(request.get("id")) is not int:
            session.answer(_error(None, ErrorCode.BAD_REQUEST, "a request is a map with an int id"))
            return
        rid = request["id"]
        op = request.get("op")
        wait_ms = request.pop("wait_ms", 0) if op in ("claim", "read") else 0
        if wait_ms:
            if type(wait_ms) is not int or not 0 < wait_ms <= WAIT_MS_MAX:
                session.answer(
                    _error(rid, ErrorCode.BAD_REQUEST, f"wait_ms is from 0 to {WAIT_MS_MAX}")
                )
                return
            session.in_flight += 1
            wait = self._claim_waiting if op == "claim" else self._read_waiting
            # Registered now, not when its task starts: a cancel read with it finds it.
            waiter = self._add_waiter(session, rid, request.get("topic"))
            session.nursery.start_soon(wait, session, rid, request, wait_ms, waiter)
            return
        if op == "cancel":
            self._cancel(session, rid, request)
            return
        if op == PING:
            session.answer({"id": rid, "ok": True, "result": {}})
            return
        if op not in COMMANDS:
            session.answer(self._handle(rid, request))
            return
        command = self._command(session, rid, request)
        if command is None:
            return
        session.in_flight += 1
        tracing = self.node.tracing
        traced = tracing is not None and tracing.received(command, request.get("trace"), op)
        callback = self._answer(session, rid, trio.current_time(), command if traced else None)
        if not self.node.propose_nowait(command, callback, flush=False):
            await self.node.propose(command, callback)  # the node's inbox is full: wait for room

    def _command(self, session: _Session, rid: int, request: dict) -> bytes | None:
        """The request as a unique command for the log, or None (refused, answered)."""
        arguments = {k: v for k, v in request.items() if k not in _NOT_ARGUMENTS}
        session.sequence += 1
        try:
            command = command_bytes(session.id, session.sequence, request["op"], arguments)
        except Exception:
            session.answer(_error(rid, ErrorCode.BAD_REQUEST, "arguments cannot be encoded"))
            return None
        largest = self.node.settings.paxos.command_bytes_max
        if len(command) > largest:
            message = f"a command of {len(command):,} bytes; the largest is {largest:,}"
            session.answer(_error(rid, ErrorCode.TOO_LARGE, message))
            return None
        return command

    def _reply(self, rid: int, kind: str, value: object) -> bytes:
        """The frame answering a command that ended as `kind` with `value`."""
        if kind == "ok":
            if isinstance(value, MachineError):
                reply = _error(rid, value.code, value.message)
                if value.detail is not None:
                    reply["detail"] = value.detail
                return _encode(reply, self.frame_bytes_max)
            return _encode({"id": rid, "ok": True, "result": value}, self.frame_bytes_max)
        reply = _error(rid, _FAILURES[kind], kind)
        leader = self.node.replica.leader_hint
        if (
            kind in ("not leader", "unknown")
            and leader != self.node.id
            and leader in self.client_addresses
        ):
            host, port = self.client_addresses[leader]
            reply["leader"] = f"{host}:{port}"
        return encode_frame(reply)

    def _answer(
        self, session: _Session, rid: int, arrived: float, traced: bytes | None
    ) -> Callable[[str, object], None]:
        metrics = self.node.metrics
        tracing = self.node.tracing

        def done(kind: str, value: object) -> None:
            reply = tracing.replying(traced, kind) if traced is not None else None
            frame = self._reply(rid, kind, value)
            if reply is not None:
                reply.end()  # before the frame: it may leave at once, and the client end first
            session.finish(frame)
            if metrics is not None and kind == "ok":
                metrics.commit_latency.record((trio.current_time() - arrived) * 1000)

        return done

    async def _claim_waiting(
        self, session: _Session, rid: int, request: dict, wait_ms: int, waiter: _Waiter
    ) -> None:
        """A claim that found nothing is proposed again when its topic changes, when a
        delayed message it set aside falls due, or once more at the end of the wait."""
        deadline = trio.current_time() + wait_ms / 1000
        outcome: list[tuple[str, object]] = []
        applied = trio.Event()

        def done(kind: str, value: object) -> None:
            outcome.append((kind, value))
            applied.set()

        with self._waiting(session, rid, request.get("topic")):
            if waiter.cancelled:  # before it was ever proposed
                session.finish(self._cancelled(rid))
                return
            while True:
                # Taken before proposing, so a change applied meanwhile is not missed.
                changed = self._change_of(request.get("topic"))
                command = self._command(session, rid, request)
                if command is None:
                    session.finish(b"", answered=True)
                    return
                outcome.clear()
                applied = trio.Event()
                await self.node.propose(command, done)
                await applied.wait()
                kind, value = outcome[0]
                now = trio.current_time()
                empty = kind == "ok" and isinstance(value, dict) and not value["offsets"]
                if empty and waiter.cancelled:
                    session.finish(self._cancelled(rid))
                    return
                if not empty or now >= deadline:
                    session.finish(self._reply(rid, kind, value))
                    return
                wake = deadline
                due_ms = value.get("next_due_ms")
                if due_ms is not None:
                    wake = min(wake, now + max(0, due_ms - self.node.clock_ms()) / 1000)
                if not await waiter.wait(changed, wake):
                    session.finish(self._cancelled(rid))
                    return

    async def _read_waiting(
        self, session: _Session, rid: int, request: dict, wait_ms: int, waiter: _Waiter
    ) -> None:
        """A read at the end of its topic is answered once a message arrives or the wait
        ends (a live tail's long poll)."""
        deadline = trio.current_time() + wait_ms / 1000
        with self._waiting(session, rid, request.get("topic")):
            if waiter.cancelled:
                session.finish(self._cancelled(rid))
                return
            while True:
                changed = self._change_of(request.get("topic"))
                reply = self._handle(rid, request)
                result = reply.get("result")
                if (
                    not reply["ok"]
                    or result["messages"]
                    or result["next"] < result["end"]
                    or trio.current_time() >= deadline
                ):
                    session.finish(_encode(reply, self.frame_bytes_max))
                    return
                if not await waiter.wait(changed, deadline):
                    session.finish(self._cancelled(rid))
                    return

    def _cancelled(self, rid: int) -> bytes:
        return encode_frame(_error(rid, ErrorCode.CANCELLED, "cancelled by the client"))

    def _add_waiter(self, session: _Session, rid: int, topic: object) -> _Waiter:
        waiter = session.waiters[rid] = _Waiter()
        self.waiting += 1
        if type(topic) is str:
            self._watchers[topic] = self._watchers.get(topic, 0) + 1
        return waiter

    @contextlib.contextmanager
    def _waiting(self, session: _Session, rid: int, topic: object):
        """The waiter `_add_waiter` made goes when its task ends, however it ends."""
        try:
            yield
        finally:
            self.waiting -= 1
            session.waiters.pop(rid, None)
            self._unwatch(topic)

    def _cancel(self, session: _Session, rid: int, request: dict) -> None:
        """`cancel` ends a waiting claim or read of this session: it is answered CANCELLED
        at once, or, a claim being proposed right then, with what it got."""
        target = request.get("request")
        waiter = session.waiters.get(target) if type(target) is int else None
        if waiter is not None:
            waiter.cancel()
        session.answer({"id": rid, "ok": True, "result": {"cancelled": waiter is not None}})

    def _handle(self, rid: int, request: dict) -> dict:
        """Queries, answered from this node's applied state (a follower's may lag)."""
        op = request.get("op")
        machine = self.node.machine
        try:
            if op == "status":
                status = self.node.status()
                if self.extra_status is not None:
                    status.update(self.extra_status())
                return {"id": rid, "ok": True, "status": status}
            if op == "list":
                after, limit = request.get("after"), request.get("limit", LIST_TOPICS_MAX)
                if (after is not None and type(after) is not str) or not (
                    type(limit) is int and 1 <= limit <= LIST_TOPICS_MAX
                ):
                    return _error(
                        rid,
                        ErrorCode.BAD_REQUEST,
                        f"list takes after (a name) and limit (1 to {LIST_TOPICS_MAX})",
                    )
                return {"id": rid, "ok": True, "result": machine.list_topics(after, limit)}
            if op == "describe":
                topic = request.get("topic")
                if type(topic) is not str:
                    return _error(rid, ErrorCode.BAD_REQUEST, "describe takes a topic")
                return {"id": rid, "ok": True, "result": machine.describe(topic)}
            if op == "read":
                topic, start = request.get("topic"), request.get("from", 0)
                limit = request.get("limit", 100)
                if (
                    type(topic) is not str
                    or type(start) is not int
                    or type(limit) is not int
                    or start < 0
                    or not 0 <= limit <= 10_000
                ):
                    return _error(
                        rid,
                        ErrorCode.BAD_REQUEST,
                        "read takes a topic, from >= 0 and 0 <= limit <= 10000",
                    )
                return {"id": rid, "ok": True, "result": machine.read(topic, start, limit)}
        except MachineError as error:
            reply = _error(rid, error.code, error.message)
            if error.code in _LAGGING and self.node.replica.role is not Role.LEADER:
                # A follower may not have applied a topic's creation yet: say so, and who
                # leads, so a client asks there rather than report it missing.
                reply["follower"] = True
                leader = self.node.replica.leader_hint
                if leader in self.client_addresses:
                    host, port = self.client_addresses[leader]
                    reply["leader"] = f"{host}:{port}"
            return reply
        except AttributeError:
            pass  # a machine without queries (the log machine of runtime tests)
        return _error(rid, ErrorCode.UNKNOWN_OPERATION, f"unknown operation {op!r}")


class _Session:
    """One client connection's state: its id, replies waiting to be written, and the bound
    on appends in flight."""

    def __init__(self, session_id: bytes, frame_bytes_max: int) -> None:
        self.id = session_id
        self.sequence = 0
        self.in_flight = 0
        self.frame_bytes_max = frame_bytes_max
        #: replies the socket has not taken yet. Unbounded: commands are bounded by
        #: `in_flight_max`, but queries, pings and refusals are answered without counting,
        #: so a client that pipelines them and never reads makes this grow
        self.outbox = Outbox()
        self._room: trio.Event | None = None  # the reader waits for an append to finish
        self.nursery: trio.Nursery | None = None  # where waiting claims and reads run
        self.waiters: dict[int, _Waiter] = {}  # request id -> a claim or read that waits

    def answer(self, reply: dict) -> None:
        self.outbox.put(_encode(reply, self.frame_bytes_max))

    def finish(self, frame: bytes, answered: bool = False) -> None:
        """A request counted in flight is over: `frame` answers it (unless `answered`)."""
        if not answered:
            self.outbox.put(frame)
        self.in_flight -= 1
        if self._room is not None:
            self._room.set()
            self._room = None

    async def wait_for_room(self) -> None:
        if self._room is None:
            self._room = trio.Event()
        await self._room.wait()

    async def flushed(self) -> None:
        await self.outbox.flushed()


class _Waiter:
    """A claim or read held for a message; the client may cancel it."""

    def __init__(self) -> None:
        self.cancelled = False
        self._scope: trio.CancelScope | None = None

    async def wait(self, event: trio.Event, until: float) -> bool:
        """Wait for the event or the time; False if cancelled (now or before)."""
        if self.cancelled:
            return False
        with trio.CancelScope(deadline=until) as scope:
            self._scope = scope
            await event.wait()
        self._scope = None
        return not self.cancelled

    def cancel(self) -> None:
        self.cancelled = True
        if self._scope is not None:
            self._scope.cancel()


async def _frames(stream: trio.SocketStream, decoder: FrameDecoder, read_all=lambda: None):
    """The frames of a stream; `read_all()` is called each time those read so far are
    handed out, before waiting for more."""
    while True:
        read_all()
        data = await stream.receive_some(1 << 16)
        if not data:
            return
        for body in decoder.feed(data):
            yield body


def _encode(reply: dict, frame_bytes_max: int) -> bytes:
    try:
        return encode_frame(reply, frame_bytes_max)
    except FrameTooLarge:
        return encode_frame(
            _error(reply.get("id"), ErrorCode.TOO_LARGE, "the reply exceeds the frame bound")
        )


def _error(rid: int | None, code: ErrorCode, message: str) -> dict:
    return {"id": rid, "ok": False, "error": int(code), "message": message}
