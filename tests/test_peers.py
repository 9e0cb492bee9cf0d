"""The peer transport over real TCP on 127.0.0.1: delivery, refusals, bad input, bounds,
reconnection. Every test is bounded in time and waits for conditions, never for luck."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio

from paxq.broker.node import Decoder, PeerSettings, PeerTransport
from paxq.broker.node.peers import PROTOCOL_VERSION
from paxq.broker.paxos import Ballot, Config, Heartbeat
from paxq.client.wire import ErrorCode, FrameDecoder, encode_frame

LIMIT_S = 15


def beat(src: int, commit: int) -> Heartbeat:
    return Heartbeat(src, Ballot(1, src), commit)


class Node:
    def __init__(self, transport: PeerTransport, inbox: trio.MemoryReceiveChannel) -> None:
        self.transport = transport
        self.inbox = inbox
        self.scope: trio.CancelScope | None = None
        self.stopped = trio.Event()  # set once its transport has fully shut down

    async def stop(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()

    async def receive(self, count: int) -> list:
        return [await self.inbox.receive() for _ in range(count)]


@asynccontextmanager
async def cluster(size: int, cluster_id: str = "test", **overrides):
    """`size` transports wired to each other on loopback ports the OS picks."""
    listeners = [await trio.open_tcp_listeners(0, host="127.0.0.1") for _ in range(size)]
    addresses = {
        i: ("127.0.0.1", group[0].socket.getsockname()[1]) for i, group in enumerate(listeners)
    }
    config = Config(nodes=tuple(range(size)))
    nodes = []
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            for i in range(size):
                send, receive = trio.open_memory_channel(1000)
                settings = PeerSettings(cluster_id, i, addresses, **overrides)
                node = Node(PeerTransport(settings, Decoder(config), send), receive)
                node.scope = trio.CancelScope()
                nodes.append(node)
                await nursery.start(_run, node, listeners[i])
            yield nodes, addresses
            nursery.cancel_scope.cancel()


async def _run(node: Node, listeners, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    try:
        with node.scope:
            await node.transport.serve(listeners, task_status=task_status)
    finally:
        node.stopped.set()


async def handshake(address, hello: object) -> tuple[trio.SocketStream, object]:
    stream = await trio.open_tcp_stream(*address)
    await stream.send_all(encode_frame(hello))
    decoder = FrameDecoder()
    while True:
        data = await stream.receive_some(4096)
        assert data, "closed before answering"
        for body in decoder.feed(data):
            return stream, body


def hello(node: int, cluster_id: str = "test", version: int = PROTOCOL_VERSION) -> dict:
    return {"paxq": "peer", "v": version, "cluster": cluster_id, "node": node}


async def test_messages_arrive_in_order_both_ways() -> None:
    async with cluster(3) as (nodes, _):
        for commit in range(500):
            assert nodes[0].transport.send(1, beat(0, commit))
            assert nodes[2].transport.send(1, beat(2, commit))
        got = await nodes[1].receive(1000)
        from_0 = [m.commit for peer, m in got if peer == 0]
        from_2 = [m.commit for peer, m in got if peer == 2]
        assert from_0 == list(range(500)) and from_2 == list(range(500))
        nodes[1].transport.send(0, beat(1, 7))
        assert await nodes[0].receive(1) == [(1, beat(1, 7))]


@pytest.mark.parametrize(
    ("greeting", "code"),
    [
        (hello(9), ErrorCode.NOT_A_MEMBER),
        (hello(0), ErrorCode.NOT_A_MEMBER),  # node 0 itself is no peer of node 0
        (hello(1, cluster_id="other"), ErrorCode.WRONG_CLUSTER),
        (hello(1, version=1), ErrorCode.UNSUPPORTED_VERSION),  # an older peer protocol
        ({"hello": "there"}, ErrorCode.BAD_REQUEST),
    ],
)
async def test_a_wrong_peer_is_refused_with_a_typed_error(greeting: dict, code) -> None:
    async with cluster(2) as (nodes, addresses):
        stream, answer = await handshake(addresses[0], greeting)
        assert answer["ok"] is False and answer["error"] == code
        assert await stream.receive_some(10) == b"", "the connection is closed after refusal"
        assert nodes[0].transport.refused_handshakes == 1


async def test_a_peer_speaking_for_another_is_cut_off_and_the_rest_go_on() -> None:
    async with cluster(3) as (nodes, addresses):
        stream, answer = await handshake(addresses[0], hello(1))
        assert answer == {"ok": True}
        await stream.send_all(encode_frame([6, 2, 1, 2, 5]))  # a heartbeat claiming src 2
        assert await stream.receive_some(10) == b""
        assert nodes[0].transport.closed_for_bad_input == 1
        nodes[2].transport.send(0, beat(2, 3))
        assert await nodes[0].receive(1) == [(2, beat(2, 3))]


@pytest.mark.parametrize(
    "payload",
    [
        (1 << 31).to_bytes(4, "big"),  # announces a frame far over the bound
        (2).to_bytes(4, "big") + b"\xff\xff",  # not CBOR
        encode_frame([77, 1]),  # an unknown message
        encode_frame([6, 1, "one", 1, 5]),  # a field of the wrong type
    ],
)
async def test_bad_input_closes_only_that_connection(payload: bytes) -> None:
    async with cluster(2, frame_bytes_max=1 << 20) as (nodes, addresses):
        stream, answer = await handshake(addresses[0], hello(1))
        assert answer == {"ok": True}
        await stream.send_all(payload)
        assert await stream.receive_some(10) == b""
        assert nodes[0].transport.closed_for_bad_input == 1
        nodes[1].transport.send(0, beat(1, 1))  # the real node 1 still gets through
        assert await nodes[0].receive(1) == [(1, beat(1, 1))]


async def test_the_queue_to_an_unreachable_peer_is_bounded() -> None:
    async with cluster(2, send_queue_max=10) as (nodes, _):
        await nodes[1].stop()  # node 1 is gone
        with trio.fail_after(LIMIT_S):
            while nodes[0].transport.connected(1):
                await trio.sleep(0.01)
        accepted = [nodes[0].transport.send(1, beat(0, i)) for i in range(25)]
        assert accepted.count(True) <= 10
        assert nodes[0].transport.dropped(1) == 25 - accepted.count(True)


async def test_messages_queued_while_a_peer_was_down_arrive_when_it_returns() -> None:
    async with cluster(2, reconnect_max_s=0.2) as (nodes, addresses):
        await nodes[1].stop()
        with trio.fail_after(LIMIT_S):
            while nodes[0].transport.connected(1):
                await trio.sleep(0.01)
        for commit in range(5):
            assert nodes[0].transport.send(1, beat(0, commit))
        # Node 1 comes back on the same port with a fresh transport.
        send, receive = trio.open_memory_channel(100)
        settings = PeerSettings("test", 1, addresses)
        reborn = PeerTransport(settings, Decoder(Config(nodes=(0, 1))), send)
        listeners = await trio.open_tcp_listeners(addresses[1][1], host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            await nursery.start(reborn.serve, listeners)
            with trio.fail_after(LIMIT_S):
                got = [await receive.receive() for _ in range(5)]
            assert [m.commit for _, m in got] == [0, 1, 2, 3, 4]
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "answer", [{"ok": False, "error": [1]}, {"ok": False, "error": 999}, ["not", "a", "map"]]
)
async def test_a_malformed_refusal_from_a_peer_does_not_stop_the_transport(answer) -> None:
    async def impostor(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(encode_frame(answer))
        await stream.aclose()

    (fake,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    (mine,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    addresses = {
        0: ("127.0.0.1", mine.socket.getsockname()[1]),
        1: ("127.0.0.1", fake.socket.getsockname()[1]),
    }
    send, _ = trio.open_memory_channel(10)
    settings = PeerSettings("test", 0, addresses, reconnect_min_s=0.01, reconnect_max_s=0.02)
    transport = PeerTransport(settings, Decoder(Config(nodes=(0, 1))), send)
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, impostor, [fake])
            await nursery.start(transport.serve, [mine])
            while transport.refused_by_peers < 3:  # it keeps dialling: it is still alive
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
