"""One connection to one node: the hello, then any number of requests in flight, matched to
their replies by id (replies come back in the order they complete, not the order sent).

Written on anyio, so it runs under trio and under asyncio alike.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import sniffio
from anyio.abc import ByteStream, SocketAttribute, TaskGroup

from .errors import (
    ConnectionLost,
    InvalidArgument,
    PaxqError,
    TooLarge,
    UnsupportedVersion,
    error_from_reply,
)
from .wire import FRAME_BYTES_MAX, FrameDecoder, FrameTooLarge, WireError, encode_frame
from .wire.protocol import HELLO, PING

Address = tuple[str, int]


#: the client addresses of `paxq dev`, the seeds when none are given nor set in PAXQ_NODES
DEV_SEEDS = ("127.0.0.1:7411", "127.0.0.1:7412", "127.0.0.1:7413")


def default_seeds() -> list[str]:
    """PAXQ_NODES ("host:port,host:port,...") if set, else the `paxq dev` cluster."""
    text = os.environ.get("PAXQ_NODES", "")
    return [part.strip() for part in text.split(",") if part.strip()] or list(DEV_SEEDS)


def parse_address(text: str, argument: str = "seeds") -> Address:
    """("host", port) of "host:port"; InvalidArgument (a ValueError) naming `argument`."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(argument, f"{text!r} is not host:port (a port from 1 to 65535)")
    return host, int(port)


def format_address(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


class _Pending:
    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.reply: dict | None = None


#: claims given up on, remembered per connection until their replies come
_ABANDONED_MAX = 1024
#: the most a cancelled request spends ending itself cleanly on the node
_SETTLE_S = 10.0
#: the most bytes read from the socket at once
_READ_BYTES = 1 << 16
#: a connection with requests waiting that hears nothing for this long is taken for dead (a
#: paused or cut-off node keeps its socket open and answers nothing); a ping goes out after
#: a quarter of it, so a node that is only slow to commit says so in time
SILENCE_S = 1.0
#: errors that mean the connection is gone
_BROKEN = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
    WireError,
)


class Connection:
    """Requests in flight on one node. `request` returns the reply map; it raises
    ConnectionLost if the connection ends first. A reader task (in the task group given to
    `open`) hands replies to their requests."""

    def __init__(
        self,
        stream: ByteStream,
        address: Address,
        frame_bytes_max: int,
        silence_s: float | None = SILENCE_S,
    ) -> None:
        self.address = address
        self.node: int | None = None
        self.leader: str | None = None  # the node's leader when it said hello, if known
        self.frame_bytes_max = frame_bytes_max
        self._stream = stream
        #: the socket, for writes that need not wait: under trio, whose streams buffer
        #: nothing of their own (asyncio's transports do, which a write around would pass)
        self._socket: socket.socket | None = (
            stream.extra(SocketAttribute.raw_socket, None)
            if sniffio.current_async_library() == "trio"
            else None
        )
        self._decoder = FrameDecoder(frame_bytes_max)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._send_lock = anyio.Lock()
        self._closed = False
        self.error: str | None = None  # why the node ended the connection, if it said
        #: claims given up after they were sent: their late replies go to `on_orphan`
        #: (which gives back any messages they got rather than leave them leased)
        self._abandoned: OrderedDict[int, tuple[str, dict]] = OrderedDict()
        self.on_orphan: Callable[[str, dict, dict], Awaitable[None]] | None = None
        self._group: TaskGroup | None = None
        #: None: never give up on a silent node (tools that wait on one node on purpose)
        self.silence_s = silence_s
        self._heard = 0.0  # when the node last sent anything, or the first request waited

    @classmethod
    async def open(
        cls,
        address: Address,
        task_group: TaskGroup | None,
        *,
        timeout_s: float = 5.0,
        frame_bytes_max: int = FRAME_BYTES_MAX,
        silence_s: float | None = SILENCE_S,
    ) -> Connection:
        """Connect and say hello within `timeout_s`; raises OSError, TimeoutError or a
        PaxqError (e.g. UnsupportedVersion, Overloaded) if the node refuses. The reader
        starts in `task_group` (without one: call `start` before the first request)."""
        began = anyio.current_time()
        with anyio.fail_after(timeout_s):
            stream = await anyio.connect_tcp(*address)
        connection = cls(stream, address, frame_bytes_max, silence_s)
        # A paused node's kernel still accepts connections: its silence must not cost the
        # whole connect timeout.
        hello_s = max(0.001, began + timeout_s - anyio.current_time())
        hello_s = hello_s if silence_s is None else min(hello_s, silence_s)
        try:
            with anyio.fail_after(hello_s):
                await stream.send(encode_frame(HELLO))
                answer = await connection._first_frame()
        except TimeoutError as error:  # (an OSError: before _BROKEN)
            await anyio.aclose_forcefully(stream)
            raise ConnectionLost(
                f"{format_address(address)} accepted the connection but answered no hello "
                f"within {hello_s:.1f}s: the node is paused or overloaded"
            ) from error
        except WireError as error:  # something else listens there
            await anyio.aclose_forcefully(stream)
            raise ConnectionLost(
                f"{format_address(address)} answered the hello with something that is "
                f"not paxq ({error}): not a paxq client port"
            ) from error
        except _BROKEN as error:  # the node went away during the hello
            await anyio.aclose_forcefully(stream)
            raise ConnectionLost(f"{format_address(address)}: {error!r}") from error
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        if not isinstance(answer, dict) or answer.get("ok") is not True:
            await anyio.aclose_forcefully(stream)
            if isinstance(answer, dict) and "error" in answer:
                raise error_from_reply(answer)
            raise UnsupportedVersion(f"{format_address(address)} answered the hello {answer!r}")
        connection.node = answer.get("node")
        leader = answer.get("leader")
        connection.leader = leader if type(leader) is str else None
        if task_group is not None:
            connection.start(task_group)
        return connection

    def start(self, task_group: TaskGroup) -> None:
        self._group = task_group
        task_group.start_soon(self._read)
        if self.silence_s is not None:
            task_group.start_soon(self._watch, self.silence_s)

    async def _watch(self, silence_s: float) -> None:
        """Fail the connection once it has requests waiting and the node has said nothing
        for `silence_s`; ping it first, so that a busy node is not taken for a dead one."""
        step = silence_s / 4
        pinged = float("-inf")
        while not self._closed:
            await anyio.sleep(step)
            if not self._pending:
                continue
            now = anyio.current_time()
            quiet = now - self._heard
            if quiet >= silence_s:
                self._fail(
                    f"{format_address(self.address)} answered nothing for {quiet:.1f}s "
                    f"(silence_s={silence_s}): the node is paused, overloaded or cut off"
                )
                await anyio.aclose_forcefully(self._stream)
                return
            if quiet >= step and pinged <= self._heard:  # the last ping was answered
                pinged = now
                frame = encode_frame({"id": next(self._ids), "op": PING})
                with anyio.move_on_after(step) as scope:
                    try:
                        async with self._send_lock:
                            await self._stream.send(frame)
                    except _BROKEN as error:
                        self._fail(f"sending failed: {error!r}")
                if scope.cancelled_caught:
                    # Part of the frame may be out: the stream can no longer be framed.
                    self._fail("a ping could not be sent: the node does not read")
                    await anyio.aclose_forcefully(self._stream)
                    return

    async def _first_frame(self) -> object:
        first = True
        while True:
            data = await self._stream.receive(_READ_BYTES)
            if first and data.startswith(b"HTTP/"):  # e.g. a node's metrics port
                raise ConnectionLost(
                    f"{format_address(self.address)} answered HTTP: not a paxq client port "
                    "(a node's metrics port?)"
                )
            first = False
            for frame in self._decoder.feed(data):
                # The hello is answered before anything else is sent: one frame, no more.
                return frame

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def request(self, op: str, fields: dict | None = None, /, **more: object) -> dict:
        """Send one request (`fields` and `more` are its arguments); wait for and return
        its reply, ok or error."""
        fields = {**(fields or {}), **more}
        if self._closed:
            raise ConnectionLost(self.error or "the connection is closed")
        rid = next(self._ids)
        try:
            frame = encode_frame({**fields, "id": rid, "op": op}, self.frame_bytes_max)
        except FrameTooLarge as error:  # nothing sent: this request can never go as it is
            raise TooLarge(f"{op}: a request {error.message}", error.detail) from error
        if not self._pending:
            self._heard = anyio.current_time()  # silence counts from the first waiting one
        pending = self._pending[rid] = _Pending()
        sending = False
        try:
            try:
                self._send_lock.acquire_nowait()
            except anyio.WouldBlock:
                await self._send_lock.acquire()
                written = 0
            else:  # nothing else on its way out: what the socket takes at once goes now
                written = self._write_now(frame)
            try:
                sending = True
                if written < len(frame):
                    # Shielded: a cancel cutting the frame short would leave the stream
                    # unframed and end the connection for every request on it. A node that
                    # does not take it within _SETTLE_S ends it all the same.
                    with anyio.CancelScope(shield=True), anyio.move_on_after(_SETTLE_S) as late:
                        await self._stream.send(frame[written:] if written else frame)
                    if late.cancelled_caught:
                        self._fail("the node does not read")
            except _BROKEN as error:
                self._fail(f"sending failed: {error!r}")
            finally:
                self._send_lock.release()
            await pending.done.wait()
        except BaseException:
            if sending and not self._closed:
                with anyio.CancelScope(shield=True), anyio.move_on_after(_SETTLE_S):
                    await self._abandon(rid, op, fields, pending)
            self._pending.pop(rid, None)
            raise
        self._pending.pop(rid, None)
        if pending.reply is None:
            raise ConnectionLost(self.error or "the connection closed")
        return pending.reply

    def _write_now(self, frame: bytes) -> int:
        """Write what the socket takes without waiting; the bytes written (0: none, the
        stream's own send finds out why)."""
        if self._socket is None:
            return 0
        try:
            return self._socket.send(frame)
        except OSError:  # full (BlockingIOError) or broken
            return 0

    async def _abandon(self, rid: int, op: str, fields: dict, pending: _Pending) -> None:
        """The caller gave up on a sent request (cancelled, timed out). A waiting one is
        cancelled on the node, which answers at once; a claim's answer with messages goes
        to `on_orphan` (they are given back) before the cancellation goes on. A claim that
        was not waiting may answer later: its reply is handed over when it comes."""
        if "wait_ms" in fields and pending.reply is None:
            cancel = encode_frame({"id": next(self._ids), "op": "cancel", "request": rid})
            try:
                async with self._send_lock:
                    await self._stream.send(cancel)
            except _BROKEN as error:
                self._fail(f"sending failed: {error!r}")
            except BaseException:
                self._fail("the node does not read")  # out of time, a frame maybe cut short
                raise
            with anyio.move_on_after(_SETTLE_S / 2):
                await pending.done.wait()
        if pending.reply is not None:
            if op == "claim" and self.on_orphan is not None:
                await self.on_orphan(op, fields, pending.reply)
        elif op == "claim":
            self._abandoned[rid] = (op, fields)
            while len(self._abandoned) > _ABANDONED_MAX:
                self._abandoned.popitem(last=False)

    async def _read(self) -> None:
        try:
            while True:
                data = await self._stream.receive(_READ_BYTES)
                self._heard = anyio.current_time()
                for reply in self._decoder.feed(data):
                    if not isinstance(reply, dict):
                        raise ConnectionLost(f"unexpected frame {reply!r}")
                    rid = reply.get("id")
                    pending = self._pending.get(rid)  # type: ignore[arg-type]
                    if pending is not None:
                        pending.reply = reply
                        pending.done.set()
                    elif rid in self._abandoned:
                        op, fields = self._abandoned.pop(rid)
                        if self.on_orphan is not None and self._group is not None:
                            self._group.start_soon(self.on_orphan, op, fields, reply)
                    elif reply.get("id") is None and reply.get("ok") is False:
                        # The node ends the session over something it says here.
                        self.error = str(error_from_reply(reply))
        except (*_BROKEN, ConnectionLost, WireError) as error:  # (a reply that cannot be read)
            self._fail(self.error or f"the connection ended: {error!r}")
        except anyio.get_cancelled_exc_class():
            self._fail("the client closed")
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self._stream)

    def _fail(self, why: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.error = self.error or why
        for pending in self._pending.values():
            pending.done.set()  # with no reply: ConnectionLost

    async def aclose(self) -> None:
        self._fail("closed")
        with anyio.CancelScope(shield=True):
            await anyio.aclose_forcefully(self._stream)


@asynccontextmanager
async def connect(
    address: Address | str, *, timeout_s: float = 5.0, frame_bytes_max: int = FRAME_BYTES_MAX
) -> AsyncIterator[Connection]:
    """One connection to one node, for tools and tests; most code wants `paxq.client.Client`,
    which finds the leader and retries."""
    if isinstance(address, str):
        address = parse_address(address)
    connection = await Connection.open(
        address, None, timeout_s=timeout_s, frame_bytes_max=frame_bytes_max
    )
    try:
        async with anyio.create_task_group() as group:
            connection.start(group)
            try:
                yield connection
            finally:
                await connection.aclose()
                group.cancel_scope.cancel()
    except BaseExceptionGroup as errors:
        # The caller's own exception, not wrapped by this helper's task group.
        if len(errors.exceptions) == 1:
            raise errors.exceptions[0] from None
        raise


async def call(connection: Connection, op: str, **fields: object) -> object:
    """The result of one request on one connection; raises the typed error it got."""
    reply = await connection.request(op, fields)
    if reply.get("ok") is not True:
        raise error_from_reply(reply)
    return reply.get("result", reply.get("status"))


__all__ = [
    "DEV_SEEDS",
    "Address",
    "Connection",
    "ConnectionLost",
    "PaxqError",
    "call",
    "connect",
    "default_seeds",
    "format_address",
    "parse_address",
]
