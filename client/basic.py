"""A minimal client connection (trio): hello, then requests and replies by id.

The command line and the tests use it; the full client (leader discovery, retries, producers,
consumers) comes with the client issue and builds on the same frames.
"""

from __future__ import annotations

import itertools

import trio

from .wire import FrameDecoder, MalformedFrame, encode_frame

CLIENT_PROTOCOL_VERSION = 1


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {text!r}")
    return host, int(port)


class Connection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._decoder = FrameDecoder()
        self._buffered: list[object] = []
        self._ids = itertools.count(1)
        self.node: int | None = None

    @classmethod
    async def open(cls, address: tuple[str, int]) -> Connection:
        connection = cls(await trio.open_tcp_stream(*address))
        try:
            answer = await connection._exchange({"paxq": "client", "v": CLIENT_PROTOCOL_VERSION})
        except BaseException:  # a failed or cancelled hello must not leak the socket
            await trio.aclose_forcefully(connection._stream)
            raise
        if not isinstance(answer, dict) or answer.get("ok") is not True:
            await connection.aclose()
            raise ConnectionRefusedError(f"{address} refused the connection: {answer!r}")
        connection.node = answer.get("node")
        return connection

    async def request(self, op: str, **fields: object) -> dict:
        """Send one request and wait for its reply (replies to this connection come in order
        of completion; this simple client has one request out at a time)."""
        rid = next(self._ids)
        reply = await self._exchange({"id": rid, "op": op, **fields})
        if not isinstance(reply, dict) or reply.get("id") not in (rid, None):
            raise MalformedFrame(f"unexpected reply {reply!r}")
        return reply

    async def _exchange(self, body: object) -> object:
        await self._stream.send_all(encode_frame(body))
        while not self._buffered:
            data = await self._stream.receive_some(1 << 16)
            if not data:
                raise ConnectionResetError("the node closed the connection")
            self._buffered.extend(self._decoder.feed(data))
        return self._buffered.pop(0)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
