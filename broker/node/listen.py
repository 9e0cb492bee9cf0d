"""Listening sockets that belong to one service and close with it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

Handler = Callable[[trio.SocketStream], Awaitable[None]]


@asynccontextmanager
async def serving(
    handler: Handler,
    address: tuple[str, int],
    listeners: list[trio.SocketListener] | None = None,
) -> AsyncIterator[tuple[trio.Nursery, list[trio.SocketListener]]]:
    """Serve `handler` on `listeners` (opened on `address` when not given) inside a nursery;
    on exit, close the listeners at once so the port is free for whoever comes next."""
    if listeners is None:
        listeners = await trio.open_tcp_listeners(address[1], host=address[0])
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handler, listeners)
            yield nursery, listeners
    finally:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()
