"""The client port of a node (a first protocol; the client issue extends it).

    hello    -> {"paxq": "client", "v": 1}
             <- {"ok": true, "node": N}
    command  -> {"id": I, "op": "publish", "topic": "orders", "messages": [{"body": b"..."}]}
             <- {"id": I, "ok": true, "result": {"offset": n, "count": 1}}
    query    -> {"id": I, "op": "read" | "describe" | "list" | "status", ...}
             <- {"id": I, "ok": true, "result": ...}   (status: "status": {...})
    error    <- {"id": I, "ok": false, "error": code, "message": text,
                 "leader": "host:port" (NOT_LEADER), "detail": ... (e.g. LEASE_LOST offsets)}

Commands (`COMMANDS`: create, delete, publish, subscribe, unsubscribe, claim, ack, nack,
extend, purge) go through the log to the machine (`paxq.broker.machine`, whose module
docstring lists their arguments); queries read this node's applied state.

A follower answers a command with NOT_LEADER and the leader's client address rather than
forwarding it: one hop instead of two, no second timeout to reconcile, and a client that learns
the leader once talks to it directly from then on.

Bounds: connections per node, requests in flight per connection (past it the connection is not
read: backpressure), the frame size, and the command size (the batch byte bound).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable

import trio

from paxq.client.wire import ErrorCode, FrameDecoder, FrameTooLarge, WireError, encode_frame

from ..machine import MachineError
from ..machine import command as command_bytes
from .listen import serving
from .runtime import Node

log = logging.getLogger("paxq.node.clients")

CLIENT_PROTOCOL_VERSION = 1
#: operations that go through the log; every other one is a query of local state
COMMANDS = frozenset(
    {
        "create",
        "delete",
        "publish",
        "subscribe",
        "unsubscribe",
        "claim",
        "ack",
        "nack",
        "extend",
        "purge",
    }
)
_FAILURES = {
    "not leader": ErrorCode.NOT_LEADER,
    "overloaded": ErrorCode.OVERLOADED,
    "too large": ErrorCode.TOO_LARGE,
    "unknown": ErrorCode.UNKNOWN_OUTCOME,
}
_LOST = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError)


class ClientPort:
    def __init__(
        self,
        node: Node,
        client_addresses: dict[int, tuple[str, int]],
        *,
        connections_max: int = 1024,
        in_flight_max: int = 4096,
        frame_bytes_max: int = 2 << 20,
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
        frames = _frames(stream, decoder)
        hello = None
        with trio.move_on_after(self.hello_timeout_s):  # a silent socket may not hold a slot
            hello = await anext(frames, None)
        if not isinstance(hello, dict) or hello.get("paxq") != "client":
            await stream.send_all(
                encode_frame(_error(None, ErrorCode.BAD_REQUEST, "expected a client hello"))
            )
            return
        if hello.get("v") != CLIENT_PROTOCOL_VERSION:
            await stream.send_all(
                encode_frame(
                    _error(
                        None,
                        ErrorCode.UNSUPPORTED_VERSION,
                        f"this node speaks v{CLIENT_PROTOCOL_VERSION}",
                    )
                )
            )
            return
        await stream.send_all(encode_frame({"ok": True, "node": self.node.id}))
        session = _Session(os.urandom(8), self.frame_bytes_max)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write, stream, session)
            async for request in frames:
                if session.in_flight >= self.in_flight_max:
                    await session.wait_for_room()  # past the bound: stop reading (backpressure)
                await self._dispatch(session, request)
            # The client closed its side: answer what is still in flight, then end.
            while session.in_flight:
                await session.wait_for_room()
            await session.flushed()
            nursery.cancel_scope.cancel()

    async def _write(self, stream: trio.SocketStream, session: _Session) -> None:
        """One writer per session: replies that completed meanwhile go out in one write."""
        while True:
            await session.wake.wait()
            session.wake = trio.Event()
            data = b"".join(session.out)
            session.out.clear()
            session.writing = True
            await stream.send_all(data)
            session.writing = False
            session.sent.set()

    async def _dispatch(self, session: _Session, request: object) -> None:
        """Answer a query at once, or hand a command to the node with a callback that
        answers it once applied."""
        if not isinstance(request, dict) or type(request.get("id")) is not int:
            session.answer(_error(None, ErrorCode.BAD_REQUEST, "a request is a map with an int id"))
            return
        rid = request["id"]
        op = request.get("op")
        if op not in COMMANDS:
            session.answer(self._handle(rid, request))
            return
        arguments = {k: v for k, v in request.items() if k != "id" and k != "op"}
        session.sequence += 1
        try:
            command = command_bytes(session.id, session.sequence, op, arguments)
        except Exception:
            session.answer(_error(rid, ErrorCode.BAD_REQUEST, "arguments cannot be encoded"))
            return
        if len(command) > self.node.settings.paxos.batch_bytes_max:
            session.answer(_error(rid, ErrorCode.TOO_LARGE, "the command exceeds the batch bound"))
            return
        addresses = self.client_addresses

        def done(kind: str, value: object) -> None:
            if kind == "ok":
                if isinstance(value, MachineError):
                    reply = _error(rid, value.code, value.message)
                    if value.detail is not None:
                        reply["detail"] = value.detail
                    session.finish(_encode(reply, self.frame_bytes_max))
                else:
                    session.finish(
                        _encode({"id": rid, "ok": True, "result": value}, self.frame_bytes_max)
                    )
                return
            reply = _error(rid, _FAILURES[kind], kind)
            leader = self.node.replica.leader_hint
            if kind == "not leader" and leader in addresses:
                host, port = addresses[leader]
                reply["leader"] = f"{host}:{port}"
            session.finish(encode_frame(reply))

        session.in_flight += 1
        if not self.node.propose_nowait(command, done):
            await self.node.propose(command, done)  # the node's inbox is full: wait for room

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
                return {"id": rid, "ok": True, "result": machine.list_topics()}
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
            return _error(rid, error.code, error.message)
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
        self.out: list[bytes] = []
        self.writing = False
        self.wake = trio.Event()  # replies are waiting for the writer
        self._room: trio.Event | None = None  # the reader waits for an append to finish
        self.sent = trio.Event()

    def answer(self, reply: dict) -> None:
        self.out.append(_encode(reply, self.frame_bytes_max))
        self.wake.set()

    def finish(self, frame: bytes) -> None:
        self.out.append(frame)
        self.wake.set()
        self.in_flight -= 1
        if self._room is not None:
            self._room.set()
            self._room = None

    async def wait_for_room(self) -> None:
        if self._room is None:
            self._room = trio.Event()
        await self._room.wait()

    async def flushed(self) -> None:
        while self.out or self.writing:
            self.sent = trio.Event()
            await self.sent.wait()


async def _frames(stream: trio.SocketStream, decoder: FrameDecoder):
    while True:
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
