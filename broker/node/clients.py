"""The client port of a node (a first, minimal protocol; the client issue extends it).

    hello    -> {"paxq": "client", "v": 1}
             <- {"ok": true, "node": N}
    request  -> {"id": I, "op": "append", "data": bytes}
             <- {"id": I, "ok": true, "offset": n}
    request  -> {"id": I, "op": "read", "from": n, "limit": k}
             <- {"id": I, "ok": true, "entries": [bytes, ...], "length": L}
    request  -> {"id": I, "op": "status"}
             <- {"id": I, "ok": true, "status": {...}}
    error    <- {"id": I, "ok": false, "error": code, "message": text, "leader": "host:port"}

A follower answers an append with NOT_LEADER and the leader's client address rather than
forwarding it: one hop instead of two, no second timeout to reconcile, and a client that learns
the leader once talks to it directly from then on.

Bounds: connections per node, requests in flight per connection (past it the connection is not
read: backpressure), the frame size, and the command size (the batch byte bound).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Callable

import trio

from paxq.client.wire import ErrorCode, FrameDecoder, FrameTooLarge, WireError, encode_frame

from .listen import serving
from .runtime import COMMAND_HEADER_BYTES, CommandFailed, Node

log = logging.getLogger("paxq.node.clients")

CLIENT_PROTOCOL_VERSION = 1
_SEQUENCE = struct.Struct(">Q")
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
        session = os.urandom(8)
        sequence = 0
        write_lock = trio.Lock()
        limiter = trio.CapacityLimiter(self.in_flight_max)
        async with trio.open_nursery() as nursery:
            async for request in frames:
                sequence += 1
                await limiter.acquire_on_behalf_of(sequence)  # past the bound: stop reading
                header = session + _SEQUENCE.pack(sequence)
                nursery.start_soon(
                    self._answer, stream, write_lock, limiter, sequence, header, request
                )

    async def _answer(
        self, stream, write_lock, limiter, token, header: bytes, request: object
    ) -> None:
        try:
            reply = await self._handle(header, request)
            try:
                frame = encode_frame(reply, self.frame_bytes_max)
            except FrameTooLarge:
                rid = reply.get("id")
                frame = encode_frame(
                    _error(
                        rid, ErrorCode.TOO_LARGE, "the reply exceeds the frame bound; ask for less"
                    )
                )
            async with write_lock:
                await stream.send_all(frame)
        finally:
            limiter.release_on_behalf_of(token)

    async def _handle(self, header: bytes, request: object) -> dict:
        if not isinstance(request, dict) or type(request.get("id")) is not int:
            return _error(None, ErrorCode.BAD_REQUEST, "a request is a map with an integer id")
        rid = request["id"]
        op = request.get("op")
        if op == "append":
            data = request.get("data")
            if type(data) is not bytes:
                return _error(rid, ErrorCode.BAD_REQUEST, "append takes data as bytes")
            if len(data) + COMMAND_HEADER_BYTES > self.node.settings.paxos.batch_bytes_max:
                return _error(rid, ErrorCode.TOO_LARGE, "the entry exceeds the batch byte bound")
            try:
                offset = await self.node.submit(header + data)
            except CommandFailed as failed:
                reply = _error(rid, _FAILURES[failed.reason], failed.reason)
                if failed.reason == "not leader" and failed.leader in self.client_addresses:
                    host, port = self.client_addresses[failed.leader]
                    reply["leader"] = f"{host}:{port}"
                return reply
            return {"id": rid, "ok": True, "offset": offset}
        if op == "read":
            start, limit = request.get("from", 0), request.get("limit", 100)
            if (
                type(start) is not int
                or type(limit) is not int
                or start < 0
                or not 0 <= limit <= 10_000
            ):
                return _error(
                    rid, ErrorCode.BAD_REQUEST, "read takes from >= 0 and 0 <= limit <= 10000"
                )
            machine = self.node.machine
            first, entries = machine.read(start, limit)
            return {
                "id": rid,
                "ok": True,
                "from": first,
                "entries": entries,
                "length": machine.length,
            }
        if op == "status":
            status = self.node.status()
            if self.extra_status is not None:
                status.update(self.extra_status())
            return {"id": rid, "ok": True, "status": status}
        return _error(rid, ErrorCode.UNKNOWN_OPERATION, f"unknown operation {op!r}")


async def _frames(stream: trio.SocketStream, decoder: FrameDecoder):
    while True:
        data = await stream.receive_some(1 << 16)
        if not data:
            return
        for body in decoder.feed(data):
            yield body


def _error(rid: int | None, code: ErrorCode, message: str) -> dict:
    return {"id": rid, "ok": False, "error": int(code), "message": message}
