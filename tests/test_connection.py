"""One client connection against a scripted node over memory streams, on trio's MockClock:
how it tells a silent node (paused, cut off) from a slow one."""

from __future__ import annotations

from functools import partial

import anyio
import pytest
import trio
import trio.testing

from paxq.client.connection import Connection, ConnectionLost
from paxq.client.wire import FrameDecoder, encode_frame


class _Memory(anyio.abc.ByteStream):
    """A trio memory stream under anyio's byte-stream interface (what Connection reads)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self._stream.receive_some(max_bytes)
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        await self._stream.send_all(item)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def _node(stream: trio.abc.Stream, seen: list[tuple[float, str]], answer_after_s: float):
    """Answers pings at once when `answer_after_s` is finite, and every other request that
    long after it came; records what arrived and when."""
    decoder = FrameDecoder()
    async with trio.open_nursery() as nursery:
        while data := await stream.receive_some(65536):
            for frame in decoder.feed(data):
                seen.append((trio.current_time(), frame["op"]))
                if answer_after_s == float("inf"):
                    continue  # paused: reads nothing out, answers nothing

                async def answer(frame=frame) -> None:
                    if frame["op"] != "ping":
                        await trio.sleep(answer_after_s)
                    await stream.send_all(encode_frame({"id": frame["id"], "ok": True}))

                nursery.start_soon(answer)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.mark.parametrize("silence_s", [1.0, 0.3])
async def test_a_silent_node_fails_the_connection_within_its_silence_bound(
    clock, silence_s: float
) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    seen: list[tuple[float, str]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_node, theirs, seen, float("inf"))
        connection = Connection(_Memory(ours), ("node", 1), 1 << 20, silence_s)
        connection.start(nursery)
        start = trio.current_time()
        with pytest.raises(ConnectionLost, match="answered nothing"):
            await connection.request("publish", {"topic": "t"})
        waited = trio.current_time() - start
        assert silence_s <= waited <= silence_s * 5 / 4 + 1e-9
        assert [op for _, op in seen] == ["publish", "ping"], "it asked before giving up"
        assert connection.closed
        nursery.cancel_scope.cancel()


async def test_a_slow_node_that_answers_pings_keeps_its_connection(clock) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    seen: list[tuple[float, str]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_node, theirs, seen, 5.0)
        connection = Connection(_Memory(ours), ("node", 1), 1 << 20, 1.5)
        connection.start(nursery)
        start = trio.current_time()
        reply = await connection.request("publish", {"topic": "t"})
        assert reply["ok"] is True and trio.current_time() - start == pytest.approx(5.0)
        assert [op for _, op in seen].count("ping") >= 3, "pinged while it waited"
        assert not connection.closed
        nursery.cancel_scope.cancel()


async def test_an_idle_connection_is_never_pinged(clock) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    seen: list[tuple[float, str]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_node, theirs, seen, float("inf"))
        connection = Connection(_Memory(ours), ("node", 1), 1 << 20, 1.5)
        connection.start(nursery)
        await trio.sleep(60)
        assert seen == [] and not connection.closed
        nursery.cancel_scope.cancel()


async def test_a_node_that_accepts_but_answers_no_hello_fails_within_the_silence_bound(
    clock,
) -> None:
    """A paused node's kernel still accepts connections: the hello waits `silence_s` at
    most, not the whole connect timeout."""
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, hold, 0, host="127.0.0.1"))
        address = ("127.0.0.1", listener.socket.getsockname()[1])
        start = trio.current_time()
        with pytest.raises(ConnectionLost, match=r"answered no hello within 1\.0s"):
            await Connection.open(address, None, timeout_s=5.0, silence_s=1.0)
        assert trio.current_time() - start == pytest.approx(1.0)
        nursery.cancel_scope.cancel()
