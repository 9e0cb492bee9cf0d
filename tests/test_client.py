"""The client library against a real 3-node cluster in this process (RocksDB, loopback TCP):
leader discovery, retries that never duplicate, batching, long polls, consumers that keep
their leases, live tails, worker pools, tasks, the blocking facade and asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import anyio
import cbor2
import pytest
import trio
import trio.testing
from test_client_port import serving
from test_node import leader_of

from paxq.client import (
    BadRequest,
    BlockingClient,
    Client,
    ClusterError,
    InvalidArgument,
    LeaseLost,
    QueueFull,
    RequestError,
    Tasks,
    TooLarge,
    TopicExists,
    UnknownOutcome,
    UnknownTopic,
    Unreachable,
    WorkerPool,
)
from paxq.client.batching import Batcher, Job, Sequencer
from paxq.client.connection import connect, parse_address
from paxq.client.errors import _BY_CODE, PaxqError, error_from_reply
from paxq.client.wire import ErrorCode
from paxq.client.wire.protocol import LIST_TOPICS_MAX, MESSAGE_BYTES_MAX

LIMIT_S = 60


@asynccontextmanager
async def cluster_client(tmp_path: Path, size: int, **options):
    """A cluster of `size` nodes in this process with a leader, and a Client of it."""
    with trio.fail_after(LIMIT_S):
        async with serving(tmp_path, size) as (nodes, clients):
            await leader_of(nodes)
            async with Client(seeds_of(clients), **options) as client:
                yield nodes, clients, client


def seeds_of(clients: dict) -> list[str]:
    return [f"{host}:{port}" for host, port in clients.values()]


async def follower_first(nodes: dict, clients: dict) -> list[str]:
    leader = await leader_of(nodes)
    order = sorted(clients, key=lambda i: i == leader.id)  # the leader last
    return [f"{clients[i][0]}:{clients[i][1]}" for i in order]


def test_every_error_code_has_its_exception() -> None:
    assert set(_BY_CODE) == set(ErrorCode)
    for code, cls in _BY_CODE.items():
        error = error_from_reply({"ok": False, "error": int(code), "message": "m"})
        assert type(error) is cls and error.code == code and error.message == "m"
    newer = error_from_reply({"ok": False, "error": 999, "message": "from the future"})
    assert type(newer) is PaxqError and newer.code == 999


def test_everything_the_client_raises_is_one_tree_that_says_what_to_retry() -> None:
    import paxq.client as api

    # (Reject and RetryAfter are what a handler raises to instruct its pool, not errors.)
    raised = [
        getattr(api, name)
        for name in api.__all__
        if isinstance(getattr(api, name), type)
        and issubclass(getattr(api, name), Exception)
        and name not in ("Reject", "RetryAfter")
    ]
    assert len(raised) > 20 and all(issubclass(cls, PaxqError) for cls in raised)
    # This side did wrong, or the cluster answered; never both.
    assert issubclass(InvalidArgument, RequestError) and issubclass(TooLarge, RequestError)
    assert issubclass(api.UnknownTask, RequestError)
    assert issubclass(LeaseLost, ClusterError) and issubclass(QueueFull, ClusterError)
    assert not any(
        issubclass(cls, RequestError) and issubclass(cls, ClusterError) for cls in raised
    )
    retriable = {cls.__name__ for cls in raised if cls.retriable}
    assert retriable == {"NotLeader", "Overloaded", "Unavailable", "ResultTimeout"}


async def test_a_sequencer_never_outruns_the_window() -> None:
    sequencer = Sequencer(window=4)
    taken = [await sequencer.take() for _ in range(4)]
    assert taken == [0, 1, 2, 3]
    with trio.move_on_after(0.05) as blocked:
        await sequencer.take()  # 4 would push 0 out of the window while 0 is unanswered
    assert blocked.cancelled_caught
    sequencer.release(2)
    with trio.move_on_after(0.05) as still:
        await sequencer.take()  # the oldest unanswered one (0) still holds it back
    assert still.cancelled_caught
    sequencer.release(0)
    assert await sequencer.take() == 4


async def test_a_batcher_bounds_what_is_unanswered_not_only_what_is_queued() -> None:
    answer = trio.Event()
    sent: list[int] = []
    answered: list[int] = []

    async def send(jobs: list[Job[int]]) -> None:
        sent.extend(job.item for job in jobs)
        await answer.wait()
        for job in jobs:
            job.finish(job.item)

    async with anyio.create_task_group() as group:
        batcher: Batcher[int] = Batcher(
            group, send, items_max=2, bytes_max=100, in_flight_max=8, pending_max=4
        )
        for i in range(4):
            batcher.submit_nowait(i, 1, lambda job: answered.append(job.item))
        await trio.testing.wait_all_tasks_blocked()
        assert (sent, batcher.pending) == ([0, 1, 2, 3], 4)  # all out, none queued
        with pytest.raises(anyio.WouldBlock):  # and still no room: none is answered
            batcher.submit_nowait(4, 1, answered.append)
        with trio.move_on_after(1) as blocked:
            await batcher.submit_waiting(4, 1, lambda job: answered.append(job.item))
        assert blocked.cancelled_caught
        answer.set()
        await batcher.submit_waiting(4, 1, lambda job: answered.append(job.item))
        await trio.testing.wait_all_tasks_blocked()
        assert (sorted(answered), batcher.pending) == ([0, 1, 2, 3, 4], 0)
        group.cancel_scope.cancel()


async def test_a_lone_caller_sends_its_own_batch_and_the_rest_queue_behind_it() -> None:
    """Nothing queued and a batch may go: the caller sends it from its own task (no hop
    through the gathering task); callers that find one queued, or a linger, queue."""
    release = trio.Event()
    tasks: list[object] = []

    async def send(jobs: list[Job[int]]) -> None:
        tasks.append((trio.lowlevel.current_task(), [job.item for job in jobs]))
        await release.wait()
        for job in jobs:
            job.finish(job.item * 10)

    async with anyio.create_task_group() as group:
        batcher: Batcher[int] = Batcher(group, send, items_max=8, bytes_max=100, in_flight_max=1)
        results: list[object] = []

        async def caller(item: int) -> None:
            results.append((item, await batcher.submit(item, 1)))

        async with trio.open_nursery() as callers:
            callers.start_soon(caller, 1)
            await trio.testing.wait_all_tasks_blocked()
            [(first_task, first)] = tasks
            assert first == [1]
            assert first_task in {t for t in callers.child_tasks}  # the caller's own task
            callers.start_soon(caller, 2)  # the one slot is out: these wait and share a batch
            callers.start_soon(caller, 3)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert sorted(results) == [(1, 10), (2, 20), (3, 30)]
        assert [sorted(items) for _, items in tasks] == [[1], [2, 3]]  # (callers in any order)
        assert tasks[1][0] not in {first_task}
        lingering: Batcher[int] = Batcher(group, send, items_max=8, bytes_max=100, linger_s=0.01)
        assert await lingering.submit(4, 1) == 40
        assert tasks[2][0] is not trio.lowlevel.current_task()  # with a linger: gathered
        group.cancel_scope.cancel()


async def test_a_cancelled_lone_publish_leaves_the_connection_to_the_others(
    tmp_path: Path,
) -> None:
    """A caller cancelled while its own request is out stops waiting; the request still
    goes whole, and the connection serves the others (it is not closed as cut short)."""
    async with cluster_client(tmp_path, 1) as (_, _, client):
        await client.create_queue("cancelled")
        connection = await client._connection(True, 5)
        connection._socket = None  # written through the stream's own send, as under asyncio
        with trio.move_on_after(0) as scope:
            await client.publish("cancelled", b"never waited for")
        assert scope.cancelled_caught
        assert not connection.closed
        assert await client.publish("cancelled", b"after") in (0, 1)
        assert (await client._connection(True, 5)) is connection


async def test_publish_claim_ack_through_a_follower_first(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with serving(tmp_path, 3) as (nodes, clients):
            seeds = await follower_first(nodes, clients)
            async with Client(seeds) as client:
                assert await client.create_queue("jobs", max_deliveries=3) is True
                assert client.leader == seeds[-1]  # found through the follower's answer
                with pytest.raises(TopicExists):
                    await client.create_queue("jobs")
                assert await client.create_queue("jobs", exist_ok=True) is False
                offsets = []

                async def publish(i: int) -> None:
                    offsets.append(await client.publish("jobs", f"job {i}", key=f"k{i % 3}"))

                async with trio.open_nursery() as nursery:
                    for i in range(300):
                        nursery.start_soon(publish, i)
                assert sorted(offsets) == list(range(300))
                deliveries = await client.claim("jobs", max=300, lease_s=30)
                assert [d.offset for d in deliveries] == list(range(300))
                assert {d.text() for d in deliveries} == {f"job {i}" for i in range(300)}
                await client.ack(deliveries[:299])
                with pytest.raises(LeaseLost) as lost:
                    await client.ack(deliveries[298:])  # 298 is acked: 299 still goes through
                assert lost.value.offsets == [298]
                described = await client.describe("jobs")
                assert described["subscriptions"][""]["acked"] == 300
                assert described["subscriptions"][""]["depth"] == 0
                with pytest.raises(UnknownTopic):
                    await client.publish("nope", b"x")
                await client.delete("jobs")
                assert [t["topic"] for t in await client.topics()] == []


async def test_concurrent_publishes_share_requests(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 3, publish_in_flight=1) as (nodes, _clients, client):
        await client.create_topic("t")
        before = nodes[0].machine.slots
        async with trio.open_nursery() as nursery:
            for i in range(1000):
                nursery.start_soon(client.publish, "t", b"%d" % i)
        producers = list(
            client_results
            for (topic_id, producer), client_results in nodes[0].machine.producers.known.items()
            if producer == client.producer_id
        )
        # One request out at a time, the rest gathering meanwhile: far fewer
        # sequences (requests) than messages.
        assert producers and max(producers[0]) + 1 < 100
        assert (await client.describe("t"))["next"] == 1000
        assert nodes[0].machine.slots - before < 200


class Cut:
    """A TCP proxy to one node that forwards requests but, for the first `publish` or `ack`
    it sees, drops the connection instead of forwarding the reply: the client cannot know
    whether it was applied."""

    def __init__(self, target: tuple[str, int], ops: set[str]) -> None:
        self.target = target
        self.ops = ops
        self.cut: list[str] = []
        self.address: tuple[str, int] | None = None

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.address = ("127.0.0.1", listeners[0].socket.getsockname()[1])
        task_status.started()
        await trio.serve_listeners(self._session, listeners)

    async def _session(self, down: trio.SocketStream) -> None:
        from paxq.client.wire import FrameDecoder, encode_frame

        up = await trio.open_tcp_stream(*self.target)
        decoder = FrameDecoder()
        cutting = trio.Event()
        async with down, up, trio.open_nursery() as nursery:

            async def upward() -> None:
                while data := await down.receive_some(1 << 16):
                    for frame in decoder.feed(data):
                        if isinstance(frame, dict) and frame.get("op") in self.ops:
                            self.ops.discard(frame["op"])
                            self.cut.append(frame["op"])
                            cutting.set()
                    await up.send_all(data)

            async def downward() -> None:
                replies = FrameDecoder()
                while data := await up.receive_some(1 << 16):
                    if cutting.is_set():
                        await trio.sleep(0.2)  # let the node apply it, then vanish
                        nursery.cancel_scope.cancel()
                        return
                    for frame in replies.feed(data):
                        frame.pop("leader", None)  # the client must stay behind the proxy
                        await down.send_all(encode_frame(frame))

            nursery.start_soon(upward)
            nursery.start_soon(downward)


async def test_a_lost_reply_is_retried_without_a_duplicate(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with serving(tmp_path, 1) as (nodes, clients), trio.open_nursery() as nursery:
            await leader_of(nodes)
            cut = Cut(clients[0], {"publish", "ack"})
            await nursery.start(cut.serve)
            async with Client([cut.address]) as client:
                await client.create_queue("q")
                assert await client.publish("q", b"once") == 0
                assert await client.publish("q", b"twice") == 1
                [first, second] = await client.claim("q", max=2)
                await client.ack([first])  # its reply is cut: the resend is answered
                await client.ack([second])
                assert cut.cut == ["publish", "ack"]
                assert client.retries >= 2
                described = await client.describe("q")
                assert described["next"] == 2, "the cut publish was not appended twice"
                assert described["subscriptions"][""]["acked"] == 2
                # Without a producer sequence, a cut purge is reported, not resent.
                cut.ops.add("purge")
                with pytest.raises(UnknownOutcome):
                    await client.purge("q")
            nursery.cancel_scope.cancel()


async def test_a_long_poll_claim_is_woken_by_a_publish(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 3) as (nodes, _clients, client):
        await client.create_queue("q")
        got: list = []

        async def claimer() -> None:
            got.extend(await client.claim("q", wait_s=50))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(claimer)
            while not sum(port.waiting for port in _ports(nodes)):
                await trio.sleep(0.01)  # the claim is held on the leader
            await client.publish("q", b"wake up")
        # Well inside the 50 s wait (the test's own limit is 60 s).
        assert [d.body for d in got] == [b"wake up"]
        # A waiting claim that is cancelled leaves nothing leased behind it.
        with trio.move_on_after(0.3):
            await client.claim("q", wait_s=50)
        await client.publish("q", b"for the next one")
        [delivery] = await client.claim("q", wait_s=10)
        assert delivery.body == b"for the next one" and delivery.deliveries == 1


def _ports(nodes: dict) -> list:
    ports = []
    for node in nodes.values():
        callback = node.on_applied
        if callback is not None:
            ports.append(callback.__self__)
    return ports


async def test_a_delayed_message_wakes_its_waiting_claim(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 1) as (_nodes, _clients, client):
        await client.create_queue("later")
        await client.publish("later", b"soon", delay_s=0.5)
        start = trio.current_time()
        [delivery] = await client.claim("later", wait_s=30)
        assert delivery.body == b"soon"
        assert trio.current_time() - start < 20  # woken at its due time, not at 30 s


async def test_a_consumer_keeps_its_leases_and_hands_back_on_exit(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 3) as (_nodes, _clients, client):
        await client.create_queue("slow")
        await client.publish_many("slow", [b"a", b"b", b"c", b"d"])
        async with client.consume("slow", prefetch=4, lease_s=1.2) as deliveries:
            first = await anext(deliveries)
            # Held for two and a half lease lengths: the consumer extends it.
            await trio.sleep(3.0)
            await first.ack()
            assert first.deliveries == 1
        # The three still held went back at once, not after their leases.
        stats = (await client.describe("slow"))["subscriptions"][""]
        assert (stats["in_flight"], stats["depth"], stats["acked"]) == (0, 3, 1)
        again = await client.claim("slow", max=3)
        assert sorted(d.body for d in again) == [b"b", b"c", b"d"]
        # ... released: no handler saw them, so that delivery did not count.
        assert [d.deliveries for d in again] == [1, 1, 1]
        assert await client.release(again[:2]) == 2
        await again[2].release()
        assert [d.deliveries for d in await client.claim("slow", max=3)] == [1, 1, 1]


async def test_a_message_that_breaks_its_consumer_still_counts_a_delivery(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 1) as (_nodes, _clients, client):
        await client.create_queue("poison", max_deliveries=2)
        await client.publish("poison", b"bad")
        for _ in range(2):  # a loop that raises on it, as a crashing worker process would
            with pytest.raises(ValueError):
                async with client.consume("poison") as deliveries:
                    async for _delivery in deliveries:
                        raise ValueError("cannot parse")
        # Taken and left unfinished twice: each hand-back counted, so it is a dead letter.
        stats = (await client.describe("poison"))["subscriptions"][""]
        assert stats["dead_lettered"] == 1


async def test_a_live_tail_follows_in_order_and_resumes_by_offset(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 3) as (_nodes, _clients, client):
        await client.create_topic("prices")
        await client.publish_many("prices", [b"1", b"2"])
        seen: list[bytes] = []
        tail = client.tail("prices", "earliest")

        async def follow(count: int) -> None:
            async for message in tail:
                seen.append(message.body)
                if len(seen) == count:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow, 5)
            for body in (b"3", b"4", b"5"):
                await client.publish("prices", body)
        assert seen == [b"1", b"2", b"3", b"4", b"5"]
        assert tail.position == 5
        await client.publish("prices", b"6")
        resumed = client.tail("prices", tail.position)
        assert (await anext(resumed)).body == b"6"
        latest = client.tail("prices")  # from the end: only what comes next
        async with trio.open_nursery() as nursery:
            got = []

            async def one() -> None:
                got.append(await anext(latest))

            nursery.start_soon(one)
            while latest.position is None:
                await trio.sleep(0.01)
            await client.publish("prices", b"7")
        assert [m.body for m in got] == [b"7"]


async def test_a_worker_pool_acks_retries_and_dead_letters(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 3) as (_nodes, _clients, client):
        await client.create_queue("work", max_deliveries=3, backoff_base_ms=20)
        await client.publish_many("work", [b"ok-%d" % i for i in range(40)] + [b"poison"])
        handled: list[bytes] = []

        async def handler(delivery) -> None:
            if delivery.body == b"poison":
                raise ValueError("cannot handle this")
            await trio.sleep(0.01)
            handled.append(delivery.body)

        pool = WorkerPool(client, "work", handler, concurrency=4, grace_s=5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run)
            while True:
                stats = (await client.describe("work"))["subscriptions"][""]
                if stats["acked"] == 40 and stats["dead_lettered"] == 1:
                    break
                await trio.sleep(0.05)
            pool.stop()
        assert sorted(handled) == sorted(b"ok-%d" % i for i in range(40))
        assert (pool.done, pool.failed) == (40, 3)
        [dead] = await client.claim("work.dlq")
        assert dead.body == b"poison" and dead.headers["x-death-deliveries"] == 3
        assert dead.headers["x-death-reason"] == "nacked"
        assert dead.headers["x-death-error"] == "ValueError: cannot handle this"


async def test_stopping_a_pool_hands_back_what_runs_past_the_grace(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 1) as (_nodes, _clients, client):
        await client.create_queue("long")
        await client.publish_many("long", [b"forever", b"quick"])
        started = trio.Event()

        async def handler(delivery) -> None:
            if delivery.body == b"forever":
                started.set()
                await trio.sleep_forever()

        pool = WorkerPool(client, "long", handler, concurrency=1, grace_s=0.2)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run)
            await started.wait()
            pool.stop()
        stats = (await client.describe("long"))["subscriptions"][""]
        assert (stats["in_flight"], stats["depth"]) == (0, 2)  # both back, none lost


tasks = Tasks(default_queue="tasks")
results: list[int] = []


@tasks.task
async def add(a: int, b: int) -> None:
    results.append(a + b)


@tasks.task(queue="sync-tasks")
def multiply(a: int, b: int) -> None:  # a plain function: run in a thread
    results.append(a * b)


async def test_tasks_run_like_celery_or_dramatiq(tmp_path: Path) -> None:
    results.clear()
    async with cluster_client(tmp_path, 1) as (_nodes, _clients, client):
        for queue in tasks.queues:
            await client.create_queue(queue)
        await add.enqueue(client, 2, b=3)
        await multiply.enqueue(client, 4, 5)
        # Options of one call stay out of the task's arguments (which may use the same names).
        later = add.with_options(delay_s=3600, key="k", headers={"who": "test"})
        run = await later.enqueue(client, 1, b=1)
        [queued] = (await client.read("tasks", run.offset, limit=1))[0]
        assert (queued.key, queued.headers) == (b"k", {"who": "test"})
        assert json.loads(queued.body)["kwargs"] == {"b": 1} and add.options == {}
        assert json.loads(queued.body)["id"] == run.id and len(run.id) == 24
        with pytest.raises(InvalidArgument, match="countdown: not a task option"):
            add.with_options(countdown=5)
        assert json.loads(add.message(1, 2)) == {
            "task": "test_client.add",
            "args": [1, 2],
            "kwargs": {},
        }
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tasks.work, client)
            while len(results) < 2:
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
        assert sorted(results) == [5, 20]  # the delayed one is not due for an hour


async def test_topics_are_listed_a_page_at_a_time(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 1) as (_nodes, _clients, client):
        names = [f"t{i:05}-" + "x" * 190 for i in range(LIST_TOPICS_MAX + 5)]
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(partial(client.create_topic, name))
        page = await client.request("list", {})
        assert len(page) == LIST_TOPICS_MAX  # one frame's worth, by name
        assert [t["topic"] for t in await client.topics()] == names


def test_a_task_in_a_script_is_named_as_a_worker_that_imports_it_names_it(tmp_path: Path) -> None:
    script = tmp_path / "jobs.py"
    script.write_text(
        "from paxq.client import Tasks\n"
        "tasks = Tasks()\n"
        "@tasks.task\n"
        "def send(to): ...\n"
        "if __name__ == '__main__':\n"
        "    print(send.name)\n"
        "    import jobs\n"
        "    print(jobs.send.name)\n"
    )
    ran = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert ran.stdout.split() == ["jobs.send", "jobs.send"], ran.stderr


async def test_a_blocking_script_and_an_asyncio_program(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with serving(tmp_path, 3) as (nodes, clients):
            await leader_of(nodes)
            seeds = ",".join(seeds_of(clients))

            def script() -> list[bytes]:
                with BlockingClient(seeds) as client:
                    client.create_queue("mixed")
                    client.publish("mixed", "from a thread")
                    client.create_queue("tasks")
                    assert client.enqueue(add, 1, b=2).offset == 0  # a task, from sync code
                    with client.consume("mixed", max_messages=1) as deliveries:
                        bodies = []
                        for delivery in deliveries:
                            bodies.append(delivery.body)
                            delivery.ack()
                    with pytest.raises(QueueFull):
                        client.create_queue("tiny", max_messages=1)
                        client.publish("tiny", "1")
                        client.publish("tiny", "2")
                    return bodies

            assert await trio.to_thread.run_sync(script) == [b"from a thread"]

            async def asyncio_program() -> list[bytes]:
                async with Client(seeds) as client:
                    await client.publish("mixed", b"from asyncio")
                    [delivery] = await client.claim("mixed", wait_s=5)
                    await delivery.ack()
                    return [delivery.body]

            got = await trio.to_thread.run_sync(lambda: asyncio.run(asyncio_program()))
            assert got == [b"from asyncio"]


async def test_a_closed_client_fails_fast_and_producer_ids_never_repeat(tmp_path: Path) -> None:
    first, second = Client("127.0.0.1:1", producer_id="billing"), Client("127.0.0.1:1")
    again = Client("127.0.0.1:1", producer_id="billing")
    assert first.producer_id.startswith("billing.") and first.producer_id != again.producer_id
    assert second.producer_id != first.producer_id
    with trio.fail_after(LIMIT_S):
        async with serving(tmp_path, 1) as (nodes, clients):
            await leader_of(nodes)
            async with Client(seeds_of(clients)) as client:
                await client.create_topic("t")
                await client.publish("t", b"before")
            with pytest.raises((PaxqError, RuntimeError)):
                await client.publish("t", b"after")  # raises: it does not hang


async def test_one_delivery_acked_twice_at_once_fails_only_itself(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 1) as (_nodes, _clients, client):
        await client.create_queue("q")
        await client.publish_many("q", [b"a", b"b"])
        a, b = await client.claim("q", max=2)
        outcomes: list[object] = []

        async def ack(delivery) -> None:
            try:
                await client.ack([delivery])
                outcomes.append("acked")
            except PaxqError as error:
                outcomes.append(type(error))

        async with trio.open_nursery() as nursery:
            for delivery in (a, a, b):  # the same offset twice, in one batch
                nursery.start_soon(ack, delivery)
        assert sorted(map(str, outcomes)) == sorted(map(str, ["acked", "acked", LeaseLost]))


async def test_a_held_claim_ends_with_its_connection(tmp_path: Path) -> None:
    from paxq.client.connection import connect

    async with cluster_client(tmp_path, 1) as (nodes, clients, client):
        await client.create_queue("q")
        with trio.move_on_after(0.5):
            async with connect(clients[0]) as raw:  # a worker that dies waiting
                await raw.request("claim", topic="q", wait_ms=50_000)
        while sum(port.waiting for port in _ports(nodes)):
            await trio.sleep(0.01)  # the node let go of it
        await client.publish("q", b"for a live worker")
        [delivery] = await client.claim("q", wait_s=10)
        assert delivery.deliveries == 1


async def test_a_claim_answered_after_its_caller_gave_up_gives_its_messages_back(
    tmp_path: Path,
) -> None:
    from paxq.client.connection import connect

    async with cluster_client(tmp_path, 1) as (_nodes, clients, client):
        await client.create_queue("q")
        await client.publish_many("q", [b"a", b"b"])
        async with connect(clients[0]) as raw:  # the reply a given-up claim gets later
            reply = await raw.request("claim", topic="q", max=2)
        assert (await client.describe("q"))["subscriptions"][""]["in_flight"] == 2
        await client._orphan("claim", {"topic": "q"}, reply)
        assert (await client.describe("q"))["subscriptions"][""]["in_flight"] == 0
        again = await client.claim("q", max=2)
        assert [(d.body, d.deliveries) for d in again] == [(b"a", 1), (b"b", 1)]


async def test_a_follower_that_may_lag_sends_a_missing_topic_to_the_leader(
    tmp_path: Path,
) -> None:
    from paxq.client.connection import connect

    with trio.fail_after(LIMIT_S):
        async with serving(tmp_path, 3) as (nodes, clients):
            seeds = await follower_first(nodes, clients)
            async with connect(seeds[0]) as follower:
                reply = await follower.request("describe", topic="nowhere")
            # A follower's "unknown" may only mean it has not applied the creation yet.
            assert reply["error"] == ErrorCode.UNKNOWN_TOPIC
            assert reply["follower"] is True and reply["leader"] == seeds[-1]
            async with Client(seeds[0]) as client:  # only the follower as a seed
                with pytest.raises(UnknownTopic):
                    await client.describe("nowhere")  # the leader's answer is the answer
                assert client.leader == seeds[-1]


async def test_a_node_that_hangs_up_during_the_hello_is_skipped(tmp_path: Path) -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        await trio.aclose_forcefully(stream)  # as a node killed mid-hello does

    with trio.fail_after(LIMIT_S):
        async with serving(tmp_path, 1) as (nodes, clients), trio.open_nursery() as nursery:
            await leader_of(nodes)
            [listener] = await nursery.start(partial(trio.serve_tcp, hang_up, 0, host="127.0.0.1"))
            dead = f"127.0.0.1:{listener.socket.getsockname()[1]}"
            async with Client([dead, *seeds_of(clients)]) as client:
                await client.create_topic("t")
                assert await client.publish("t", b"x") == 0
                assert client.retries >= 1
            nursery.cancel_scope.cancel()


async def test_a_client_that_never_reached_a_node_says_what_happened_at_each_address() -> None:
    async def http(stream: trio.SocketStream) -> None:  # as a node's metrics port answers
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.receive_some(1024)
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()

    async def ssh(stream: trio.SocketStream) -> None:  # its first bytes read as a length
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(b"SSH-2.0-OpenSSH_9.2\r\n")
            await trio.sleep_forever()

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        refused = f"127.0.0.1:{probe.getsockname()[1]}"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            addresses = [refused, "nonexistent.invalid:7000"]
            for handler in (http, ssh, silent):
                [listener] = await nursery.start(
                    partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
                )
                addresses.append(f"127.0.0.1:{listener.socket.getsockname()[1]}")
            async with Client(addresses, first_contact_s=2.5) as client:
                began = trio.current_time()
                with pytest.raises(Unreachable) as caught:
                    await client.publish("t", b"x")
                waited = trio.current_time() - began
            nursery.cancel_scope.cancel()
    assert waited < client.request_timeout_s, "not the whole deadline of a call"
    failures = caught.value.failures
    assert list(failures) == addresses
    assert "connection refused" in failures[refused]
    assert "unknown host" in failures["nonexistent.invalid:7000"]
    assert "answered HTTP: not a paxq client port" in failures[addresses[2]]
    assert "not a paxq client port" in failures[addresses[3]]
    assert "answered no hello within" in failures[addresses[4]]
    text = str(caught.value)
    assert text.startswith("no paxq node answered within") and all(a in text for a in addresses)


async def test_wrong_arguments_are_refused_before_anything_is_sent() -> None:
    async with Client(["127.0.0.1:1"]) as client:  # nothing listens: nothing may be sent

        async def refused(argument: str, call, *words: str) -> None:
            with pytest.raises(InvalidArgument) as caught:
                await call
            assert caught.value.argument == argument, caught.value
            assert all(word in str(caught.value) for word in words), caught.value
            assert isinstance(caught.value, BadRequest | ValueError | TypeError)

        await refused("key", client.publish("t", b"x", key=5), "int")
        big = b"k" * 1025
        await refused("key", client.publish("t", b"x", key=big), "1,025 bytes", "1,024")
        await refused("body", client.publish("t", 5), "bytes or str, not int")
        await refused("delay_s", client.publish("t", b"x", delay_s="soon"), "'soon'")
        await refused("delay_s", client.publish("t", b"x", delay_s=-1), "from 0 to 2,592,000")
        await refused("delay_s", client.publish_soon("t", b"x", delay_s=True), "True")
        await refused("headers", client.publish("t", b"x", headers={"a": 1.5}), "'a'")
        await refused("headers", client.publish("t", b"x", headers=["a"]), "a dict")
        await refused("max", client.claim("q", max=0), "from 1 to 1,000")
        await refused("lease_s", client.claim("q", lease_s=-1), "-1")
        with pytest.raises(InvalidArgument, match="start: 'bogus'"):
            client.tail("t", start="bogus")
        assert client.retries == 0


async def test_a_message_id_stores_a_message_once_across_producers(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 1) as (_nodes, clients, client):
        await client.create_queue("orders")
        first = await client.publish("orders", b"order 7", message_id="order-7")
        assert (first, first.duplicate) == (0, False)
        async with Client(seeds_of(clients)) as restarted:  # another run of the producer
            again = await restarted.publish("orders", b"order 7", message_id="order-7")
            assert (again, again.duplicate) == (0, True)
            batch = [
                {"body": b"order 8", "message_id": "order-8"},
                {"body": b"order 7", "message_id": "order-7"},
                b"no id",
            ]
            offsets = await restarted.publish_many("orders", batch)
            assert offsets == [1, 0, 2] and [o.duplicate for o in offsets] == [False, True, False]
        await client.create_queue("tasks")
        one = await add.with_options(message_id="run-1").enqueue(client, 1, b=1)
        two = await add.with_options(message_id="run-1").enqueue(client, 1, b=1)
        assert (one.offset, two.offset, two.duplicate) == (0, 0, True)
        assert one.id == two.id == "run-1"  # the message id names the run
        assert [d.body for d in await client.claim("orders", max=10)] == [
            b"order 7",
            b"order 8",
            b"no id",
        ]
        with pytest.raises(InvalidArgument, match="message_id"):
            await client.publish("orders", b"x", message_id="")


async def test_the_documented_message_limit_is_the_real_one(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 1) as (_nodes, clients, client):
        await client.create_queue("q")
        # The largest message goes through the log and comes back whole, key and headers
        # counted: MESSAGE_BYTES_MAX of body + key + encoded headers.
        headers = {"a": "b"}
        room = MESSAGE_BYTES_MAX - 3 - len(cbor2.dumps(headers))
        largest = {"body": b"x" * room, "key": b"key", "headers": headers}
        assert await client.publish_many("q", [largest, b"y" * MESSAGE_BYTES_MAX]) == [0, 1]
        [first] = await client.claim("q")
        assert (first.body, first.key, first.headers) == (b"x" * room, b"key", headers)
        [second] = await client.claim("q", max=10)  # one reply holds one of these
        assert len(second.body) == MESSAGE_BYTES_MAX
        await client.ack([first])
        await client.ack([second])

        # Requests are cut by the messages' real sizes: five of 256 KiB in headers go in five.
        heavy = {"body": b"", "headers": {f"h{i}": b"v" * 4000 for i in range(64)}}
        assert await client.publish_many("q", [heavy] * 5) == [2, 3, 4, 5, 6]

        # One byte more is refused by the client at once, naming both sizes.
        with pytest.raises(TooLarge, match="message of 1,048,577 bytes; the largest is 1,048,576"):
            await client.publish("q", b"z" * (MESSAGE_BYTES_MAX + 1))
        with pytest.raises(TooLarge, match="message of 2,097,152 bytes"):
            await client.publish_soon("q", b"z" * (2 << 20))
        assert client.retries == 0

        # The node holds the same limit for clients that do not check, and its own command
        # bound; neither costs the session.
        async with connect(parse_address(seeds_of(clients)[0])) as raw:
            over = {"body": b"z" * (MESSAGE_BYTES_MAX + 1)}
            reply = await raw.request("publish", topic="q", messages=[over])
            assert reply["error"] == ErrorCode.TOO_LARGE
            assert "message of 1,048,577 bytes; the largest is 1,048,576" in reply["message"]
            two = [{"body": b"z" * (600 << 10)}] * 2
            reply = await raw.request("publish", topic="q", messages=two)
            assert reply["error"] == ErrorCode.TOO_LARGE
            assert "the largest is 1,114,112" in reply["message"], reply
            assert (await raw.request("status"))["ok"] is True
        messages, after = await client.read("q", 6, limit=10)  # nothing past the last
        assert [m.offset for m in messages] == [6] and after == 7

        # A request over the client's own frame bound is TooLarge at once, not a WireError.
        async with Client(seeds_of(clients), frame_bytes_max=1000) as small:
            with pytest.raises(TooLarge, match=r"publish: a request frame of 2,0\d\d bytes; the"):
                await small.publish("q", b"x" * 2000)
            assert small.retries == 0


async def test_a_node_just_lost_is_tried_last_while_no_leader_is_known() -> None:
    client = Client(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])
    client._lost(("127.0.0.1", 2))  # e.g. a paused leader: its kernel still accepts
    picked = [client._next_address()[1] for _ in range(4)]
    assert 2 not in picked and set(picked) == {1, 3}
    client._lost(("127.0.0.1", 1))
    client._lost(("127.0.0.1", 3))
    assert client._next_address()[1] == 2, "all lost just now: the one lost longest ago"


async def test_acks_without_waiting_share_requests_and_report_each_outcome(
    tmp_path: Path,
) -> None:
    async with cluster_client(tmp_path, 3) as (_nodes, _clients, client):
        await client.create_queue("q")
        await client.publish_many("q", [b"m%d" % i for i in range(300)])
        outcomes: dict[int, object] = {}
        answered = trio.Event()

        def done(delivery, error) -> None:
            outcomes[delivery.offset] = error
            if len(outcomes) == 300:
                answered.set()

        async with client.consume("q", prefetch=300) as deliveries:
            taken = []
            async for delivery in deliveries:
                taken.append(delivery)
                delivery.ack_nowait(done)
                assert delivery.finished  # an ack is on its way: no extend, no hand-back
                if len(taken) == 300:
                    deliveries.stop_fetching()
            await answered.wait()
            assert deliveries.held == {}  # each one held until its ack was answered
        assert set(outcomes) == {d.offset for d in taken} and set(outcomes.values()) == {None}
        stats = (await client.describe("q"))["subscriptions"][""]
        assert (stats["acked"], stats["depth"], stats["in_flight"]) == (300, 0, 0)

        # A lease that is gone is reported to its callback, not raised at the caller.
        await client.publish("q", b"late")
        [stale] = await client.claim("q", lease_s=0.05)
        await trio.sleep(0.3)
        [again] = await client.claim("q")
        lost = trio.Event()
        errors: list[object] = []
        stale.ack_nowait(lambda _d, error: (errors.append(error), lost.set()))
        await lost.wait()
        assert [type(e) for e in errors] == [LeaseLost]
        await again.ack()


async def test_a_pool_takes_the_next_delivery_before_its_ack_is_answered(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 3) as (_nodes, _clients, client):
        await client.create_queue("q")
        await client.publish_many("q", [b"m%d" % i for i in range(200)])
        acked: list[int] = []
        most_acking = 0

        async def handler(delivery) -> None:
            nonlocal most_acking
            most_acking = max(most_acking, pool.acking)

        pool = WorkerPool(client, "q", handler, concurrency=1, prefetch=200)
        pool.on_acked = lambda d: acked.append(d.offset)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run)
            while len(acked) < 200:
                await trio.sleep(0.01)
            pool.stop()
        # One handler, and yet many acks out at once: it did not wait for each answer.
        assert most_acking > 1
        assert (pool.done, pool.acking, sorted(acked)) == (200, 0, sorted(set(acked)))
        stats = (await client.describe("q"))["subscriptions"][""]
        assert (stats["acked"], stats["in_flight"]) == (200, 0)


async def test_publish_soon_confirms_each_message_through_its_callback(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 3, publish_pending_max=100) as (_n, _c, client):
        await client.create_queue("q")
        confirmed: list[int] = []
        errors: list[object] = []
        all_in = trio.Event()

        def done(offset, error) -> None:
            (confirmed.append(offset) if error is None else errors.append(error))
            if len(confirmed) + len(errors) == 2000:
                all_in.set()

        for i in range(2000):  # 20 times the queue's bound: the caller waits for room
            await client.publish_soon("q", b"%d" % i, on_done=done)
        await all_in.wait()
        assert errors == [] and sorted(confirmed) == list(range(2000))
        bodies = sorted(int(d.body) for d in await client.claim("q", max=1000))
        bodies += sorted(int(d.body) for d in await client.claim("q", max=1000))
        assert sorted(bodies) == list(range(2000))

        failed = trio.Event()
        client_errors: list[object] = []
        await client.publish_soon(
            "nowhere", b"x", on_done=lambda o, e: (client_errors.append((o, e)), failed.set())
        )
        await failed.wait()
        [(offset, error)] = client_errors
        assert offset is None and isinstance(error, UnknownTopic)


async def test_every_idle_worker_wakes_when_deliveries_arrive(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 1) as (_nodes, _clients, client):
        await client.create_queue("q")
        most_active = 0

        async def handler(delivery) -> None:
            nonlocal most_active
            most_active = max(most_active, pool.active)
            await trio.sleep(0.2)

        pool = WorkerPool(client, "q", handler, concurrency=4, prefetch=8, wait_s=1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run)
            await trio.sleep(0.3)  # all four wait on an empty queue
            await client.publish_many("q", [b"m%d" % i for i in range(8)])
            while pool.done < 8:
                await trio.sleep(0.01)
            pool.stop()
        assert most_active == 4


async def test_a_consumer_keeps_a_second_claim_out_within_its_prefetch(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 1) as (_nodes, _clients, client):
        await client.create_queue("q")
        await client.publish_many("q", [b"%d" % i for i in range(20)])
        out = most_out = 0
        claim = client.claim

        async def counted(*args, **kwargs):
            nonlocal out, most_out
            out += 1
            most_out = max(most_out, out)
            try:
                return await claim(*args, **kwargs)
            finally:
                out -= 1

        client.claim = counted
        taken = []
        async with client.consume("q", prefetch=8, wait_s=0.5) as deliveries:
            async for delivery in deliveries:
                taken.append(delivery)
                assert len(deliveries.held) <= 8  # what claims brought never passes it
                if len(taken) % 2 == 0:
                    await client.ack(taken[-2:])
                if len(taken) == 20:
                    # Nothing left: both claims wait (long poll) at once.
                    await trio.testing.wait_all_tasks_blocked()
                    assert out == 2
                    break
        assert most_out == 2
        assert sorted(int(d.body) for d in taken) == list(range(20))
