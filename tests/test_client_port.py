"""The client port of a real node (RocksDB, loopback TCP): typed errors for bad requests, and
no client, however broken, can stop the node from serving the others."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import trio
from test_node import free_addresses, leader_of

from paxq.broker.machine import claimed
from paxq.broker.node import Node, NodeSettings, PeerSettings
from paxq.broker.node.clients import ClientPort
from paxq.broker.node.metrics import NodeMetrics
from paxq.broker.node.tracing import CommitTracing
from paxq.broker.paxos import Config
from paxq.client.connection import connect
from paxq.client.wire import ErrorCode, FrameDecoder, encode_frame
from paxq.client.wire.protocol import HELLO
from paxq.storage import Identity, RocksJournal

LIMIT_S = 30


@asynccontextmanager
async def serving(
    tmp_path: Path, size: int = 1, clock_ms=None, metrics=False, tracer=None, **port_options
):
    peers = await free_addresses(size)
    clients = await free_addresses(size)
    config = Config(nodes=tuple(range(size)))
    nodes, ports = {}, {}
    async with trio.open_nursery() as nursery:
        for i in range(size):
            journal = RocksJournal.open(tmp_path / f"n{i}", Identity("t", i), True)
            settings = NodeSettings(PeerSettings("t", i, peers), config, command_timeout_s=0.3)
            nodes[i] = Node(
                settings,
                journal,
                clock_ms=clock_ms,
                metrics=NodeMetrics("t", i) if metrics else None,
                tracing=CommitTracing(tracer, i) if tracer is not None else None,
            )
            ports[i] = ClientPort(nodes[i], clients, **port_options)
            await nursery.start(nodes[i].run)
            await nursery.start(ports[i].serve)
        try:
            yield nodes, clients
        finally:
            nursery.cancel_scope.cancel()
    for node in nodes.values():
        node.journal.close()


async def raw(address, payload: bytes) -> bytes:
    """Send raw bytes after a proper hello; return what the node sends back until it closes."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(encode_frame(HELLO) + payload)
        received = b""
        with trio.move_on_after(5):
            while data := await stream.receive_some(1 << 16):
                received += data
        return received


async def still_serves(address) -> None:
    async with connect(address) as connection:
        assert (await connection.request("status"))["ok"] is True


async def test_bad_requests_get_typed_errors(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with serving(tmp_path, frame_bytes_max=4096) as (nodes, clients):
            await leader_of(nodes)
            async with connect(clients[0]) as c:
                assert (await c.request("fly"))["error"] == ErrorCode.UNKNOWN_OPERATION
                assert (await c.request("create", topic="t"))["ok"] is True

                async def publish(body: object) -> dict:
                    return await c.request("publish", topic="t", messages=[{"body": body}])

                assert (await publish("text"))["error"] == ErrorCode.BAD_REQUEST
                assert (await c.request("publish", topic="nope", messages=[{"body": b""}]))[
                    "error"
                ] == ErrorCode.UNKNOWN_TOPIC
                assert (await publish(b"x" * 3000))["ok"] is True
                too_big = await c.request("read", topic="t", **{"from": 0, "limit": 10})
                assert too_big["ok"] is True  # one 3 KB entry still fits 4 KiB
                await publish(b"y" * 3000)
                reply = await c.request("read", topic="t", **{"from": 0, "limit": 10})
                assert reply["error"] == ErrorCode.TOO_LARGE  # the reply would not fit a frame
                bad = await c.request("read", topic="t", **{"from": -1})
                assert bad["error"] == ErrorCode.BAD_REQUEST


async def test_broken_clients_never_stop_the_node(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with serving(tmp_path, hello_timeout_s=0.5) as (nodes, clients):
            await leader_of(nodes)
            address = clients[0]
            # A frame announced at 100 MiB: refused with TOO_LARGE, the connection closed.
            answer = await raw(address, (100 << 20).to_bytes(4, "big"))
            bodies = list(FrameDecoder().feed(answer))
            assert bodies[-1]["error"] == ErrorCode.TOO_LARGE
            # Garbage instead of CBOR.
            answer = await raw(address, (3).to_bytes(4, "big") + b"\xff\xff\xff")
            assert list(FrameDecoder().feed(answer))[-1]["error"] == ErrorCode.BAD_FRAME
            # Thousands of requests, then the client vanishes without reading a reply.
            stream = await trio.open_tcp_stream(*address)
            await stream.send_all(encode_frame(HELLO))
            await stream.send_all(
                b"".join(encode_frame({"id": i, "op": "list"}) for i in range(2000))
            )
            await trio.aclose_forcefully(stream)
            # A silent socket is told so and dropped after the hello timeout, not left holding
            # a connection slot.
            silent = await trio.open_tcp_stream(*address)
            received = b""
            with trio.fail_after(5):
                while data := await silent.receive_some(1 << 16):
                    received += data
            await silent.aclose()
            assert list(FrameDecoder().feed(received))[-1]["error"] == ErrorCode.BAD_REQUEST
            await still_serves(address)


async def test_an_unknown_outcome_is_not_reported_as_retryable(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with serving(tmp_path, size=3) as (nodes, clients):
            leader = await leader_of(nodes)
            leader.peers.send_frame = lambda peer, frame: False  # its network loses everything
            async with connect(clients[leader.id]) as c:
                reply = await c.request("create", topic="maybe")
            assert reply["error"] == ErrorCode.UNKNOWN_OUTCOME
            assert "leader" not in reply
            assert not leader.core.waiting_count, "no waiter is left behind"


async def test_the_queue_operations_over_real_sockets(tmp_path: Path) -> None:
    """Every command and query through a 3-node cluster's client port; a lease expires on
    the leader's clock with no traffic at all (the node stamps time when it is due)."""
    wall = [1_000_000]  # the nodes' wall clock, in ms: moved by the test only
    with trio.fail_after(LIMIT_S):
        async with serving(tmp_path, size=3, clock_ms=lambda: wall[0]) as (nodes, clients):
            leader = await leader_of(nodes)
            async with connect(clients[leader.id]) as c:

                async def ok(op: str, **fields) -> object:
                    reply = await c.request(op, **fields)
                    assert reply["ok"], reply
                    return reply["result"]

                await ok("create", topic="jobs", kind="queue", max_deliveries=2)
                assert (await c.request("create", topic="jobs"))["error"] == ErrorCode.TOPIC_EXISTS
                messages = [{"body": b"a", "key": b"k"}, {"body": b"b"}]
                assert await ok("publish", topic="jobs", messages=messages) == {
                    "offset": 0,
                    "count": 2,
                }
                taken = claimed(await ok("claim", topic="jobs", max=2, lease_ms=5_000))
                assert [m["body"] for m in taken] == [b"a", b"b"]
                assert taken[0]["deadline_ms"] >= wall[0] + 5_000
                first, second = ([m["offset"], m["token"]] for m in taken)
                assert await ok("ack", topic="jobs", leases=[first]) == {"acked": 1}
                lost = await c.request("ack", topic="jobs", leases=[first])
                assert (lost["error"], lost["detail"]) == (ErrorCode.LEASE_LOST, [0])
                assert await ok("extend", topic="jobs", leases=[second], lease_ms=5_000)
                described = await ok("describe", topic="jobs")
                assert described["subscriptions"][""]["in_flight"] == 1
                # Time passes on the leader's clock only; nobody sends anything.
                wall[0] += 60_000
                while (await ok("describe", topic="jobs"))["subscriptions"][""]["in_flight"]:
                    await trio.sleep(0.02)
                [again] = claimed(await ok("claim", topic="jobs"))
                assert (again["offset"], again["deliveries"]) == (1, 2)
                assert await ok("nack", topic="jobs", leases=[[1, again["token"]]]) == {
                    "nacked": 1,
                    "dead_lettered": 1,
                }
                dead = await ok("read", topic="jobs.dlq")
                assert dead["messages"][0]["headers"]["x-death-deliveries"] == 2
                assert [t["topic"] for t in await ok("list")] == ["jobs", "jobs.dlq"]
                await ok("create", topic="news")
                await ok("subscribe", topic="news", subscription="s", start="earliest")
                await ok("publish", topic="news", messages=[{"body": b"n"}])
                [n] = claimed(await ok("claim", topic="news", subscription="s"))
                await ok("ack", topic="news", subscription="s", leases=[[0, n["token"]]])
                assert await ok("purge", topic="news") == {"purged": 1}
                await ok("unsubscribe", topic="news", subscription="s")
                await ok("delete", topic="news")
            # A follower refuses commands with the leader's address, and answers queries.
            follower = next(i for i in nodes if i != leader.id)
            async with connect(clients[follower]) as c:
                reply = await c.request("publish", topic="jobs", messages=[{"body": b"x"}])
                assert reply["error"] == ErrorCode.NOT_LEADER and reply["leader"]
                while True:
                    reply = await c.request("describe", topic="jobs")
                    if reply["ok"] and reply["result"]["subscriptions"][""]["dead_lettered"]:
                        break
                    await trio.sleep(0.02)


async def test_a_waiting_claim_cancelled_in_the_same_read_is_answered_at_once(
    tmp_path: Path,
) -> None:
    """The claim and its cancel come in one read: the cancel finds the claim (registered
    when it was read, not when its task starts) and the claim is answered CANCELLED at
    once, not after its wait."""
    with trio.fail_after(LIMIT_S):
        async with serving(tmp_path) as (nodes, clients):
            await leader_of(nodes)
            async with connect(clients[0]) as c:
                reply = await c.request("create", topic="idle", kind="queue")
                assert reply["ok"], reply
            stream = await trio.open_tcp_stream(*clients[0])
            async with stream:
                claim = {"id": 1, "op": "claim", "topic": "idle", "wait_ms": 60_000}
                cancel = {"id": 2, "op": "cancel", "request": 1}
                await stream.send_all(
                    encode_frame(HELLO) + encode_frame(claim) + encode_frame(cancel)
                )
                decoder = FrameDecoder(1 << 20)
                replies: dict[int, dict] = {}
                with trio.fail_after(5):  # far below the claim's 60 s wait
                    while 1 not in replies:
                        for frame in decoder.feed(await stream.receive_some(1 << 16)):
                            if "id" in frame:
                                replies[frame["id"]] = frame
                assert replies[1]["error"] == ErrorCode.CANCELLED
