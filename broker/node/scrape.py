"""The Prometheus scrape endpoint of a node: `GET /metrics` over HTTP/1.1, one request per
connection. Requests are bounded (8 KiB of head, 5 s to send it, 64 connections at once);
anything but a GET of /metrics is answered 404 or 400, and what cannot begin a request line
(a paxq client's hello, sent to the wrong port) at once."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import trio

from .listen import serving

HEAD_BYTES_MAX = 8 << 10
HEAD_TIMEOUT_S = 5.0
CONNECTIONS_MAX = 64
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ScrapeEndpoint:
    def __init__(self, address: tuple[str, int], render: Callable[[], str]) -> None:
        self.address = address
        self.render = render
        self.connections = 0
        self.scrapes = 0

    async def serve(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with serving(self._session, self.address) as (_, listeners):
            task_status.started(listeners)
            await trio.sleep_forever()

    async def _session(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self.connections >= CONNECTIONS_MAX:
                return
            self.connections += 1
            try:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._answer(stream)
            finally:
                self.connections -= 1

    async def _answer(self, stream: trio.SocketStream) -> None:
        head = b""
        with trio.move_on_after(HEAD_TIMEOUT_S):
            while b"\r\n\r\n" not in head and len(head) <= HEAD_BYTES_MAX:
                data = await stream.receive_some(4096)
                if not data:
                    break
                head += data
                if not head[:1].isupper():  # no request line starts so (a paxq client's hello)
                    break
        line = head.split(b"\r\n", 1)[0].split()
        if b"\r\n\r\n" not in head or len(line) != 3 or not line[2].startswith(b"HTTP/1."):
            await stream.send_all(_response(400, "bad request\n"))
            return
        method, target = line[0], line[1].split(b"?", 1)[0]
        if method != b"GET" or target != b"/metrics":
            await stream.send_all(_response(404, "only GET /metrics here\n"))
            return
        self.scrapes += 1
        await stream.send_all(_response(200, self.render(), CONTENT_TYPE))


def _response(status: int, body: str, content_type: str = "text/plain") -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
    data = body.encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode() + data
