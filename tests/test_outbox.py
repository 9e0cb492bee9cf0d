"""The outbox over a real socket pair: direct writes, partial writes, the queue, its bounds,
and a broken connection's leftover. Bounded in time; every wait is for a condition."""

from __future__ import annotations

import socket

import trio
import trio.testing

from paxq.broker.node.outbox import Outbox

LIMIT_S = 10


def _pair() -> tuple[trio.SocketStream, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # small: fills quickly
    theirs.setblocking(False)
    return trio.SocketStream(trio.socket.from_stdlib_socket(ours)), theirs


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not data:
            return out
        out += data


async def _read_until(sock: socket.socket, size: int) -> bytes:
    out = b""
    while len(out) < size:
        await trio.lowlevel.wait_readable(sock)
        out += sock.recv(1 << 20)
    return out


async def test_a_frame_goes_out_from_the_callers_turn_when_nothing_waits() -> None:
    stream, theirs = _pair()
    outbox = Outbox(frames_max=4)
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.pump, stream, 1 << 20)
            await trio.testing.wait_all_tasks_blocked()
            assert outbox.put(b"hello")
            # No checkpoint since the put: only a direct write can have sent it.
            assert _read_all(theirs) == b"hello"
            assert outbox.empty
            nursery.cancel_scope.cancel()


async def test_what_the_socket_does_not_take_follows_in_order() -> None:
    stream, theirs = _pair()
    outbox = Outbox()
    big = bytes(range(256)) * 4096  # 1 MiB: more than the send buffer takes at once
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.pump, stream, 1 << 16)
            await trio.testing.wait_all_tasks_blocked()
            assert outbox.put(big)
            assert not outbox.empty  # the rest waits for the pump
            assert outbox.put(b"after")  # queued behind the rest, never around it
            got = await _read_until(theirs, len(big) + 5)
            assert got == big + b"after"
            await outbox.flushed()
            assert outbox.empty
            nursery.cancel_scope.cancel()


async def test_frames_wait_for_a_connection_within_their_bounds() -> None:
    outbox = Outbox(frames_max=3, bytes_max=100)
    assert not outbox.connected
    assert outbox.put(b"one")
    assert not outbox.put(b"x" * 98)  # past bytes_max with what waits: dropped, counted
    assert outbox.put(b"two")
    assert outbox.put(b"six")
    assert not outbox.put(b"ten")  # past frames_max
    assert outbox.dropped == 2
    stream, theirs = _pair()
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.pump, stream, 1 << 20)
            assert await _read_until(theirs, 9) == b"onetwosix"
            await outbox.flushed()
            assert outbox.bytes == 0
            nursery.cancel_scope.cancel()


async def test_the_rest_of_a_partly_written_frame_dies_with_its_connection() -> None:
    stream, theirs = _pair()
    outbox = Outbox()
    big = b"a" * (1 << 20)
    broken: list[Exception] = []

    async def pump() -> None:
        try:
            await outbox.pump(stream, 1 << 16)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            broken.append(error)

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            await trio.testing.wait_all_tasks_blocked()
            assert outbox.put(big)
            assert not outbox.empty
            theirs.close()  # the peer goes: the pump's write breaks
        assert broken
        assert not outbox.connected
        assert outbox.empty  # nothing of the old frame is left to start the next connection
        assert outbox.put(b"next")  # queued for the next connection, whole
        again, other = _pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.pump, again, 1 << 20)
            assert await _read_until(other, 4) == b"next"
            nursery.cancel_scope.cancel()
