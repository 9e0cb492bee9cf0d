"""Tasks and workers as Celery and Dramatiq users expect them, against a real cluster in this
process: what cannot succeed goes to the dead letters at once saying why, per-task retry
settings, results kept in the cluster, and dead letters moved back (redrive)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
from test_client import cluster_client

from paxq.client import (
    BlockingClient,
    Client,
    InvalidArgument,
    Reject,
    ResultTimeout,
    RetryAfter,
    TaskFailed,
    Tasks,
    UnknownTopic,
    WorkerPool,
)

tasks = Tasks(default_queue="jobs")
calls: list[str] = []


class Unpayable(Exception):
    pass


@tasks.task(no_retry=(Unpayable,))
async def charge(amount: int) -> None:
    calls.append("charge")
    raise Unpayable(f"card declined for {amount}")


@tasks.task(max_retries=2, retry_delay_s=0)
async def flaky() -> None:
    calls.append("flaky")
    raise ConnectionError("the mail server hung up")


@tasks.task(store_result=True)
def add(a: int, b: int) -> int:  # a plain function: its result is stored too
    return a + b


@tasks.task(store_result=True, no_retry=(ZeroDivisionError,))
async def divide(a: int, b: int) -> float:
    return a / b


@tasks.task(store_result=True)
async def unstorable() -> object:
    return {1, 2}  # a set is not JSON


async def dead_letters(client: Client, queue: str, count: int) -> list:
    """The first `count` dead letters of `queue`, waiting for them (the test's bound)."""
    found = []
    while len(found) < count:
        try:
            found += await client.claim(f"{queue}.dlq", max=count - len(found), wait_s=1)
        except UnknownTopic:  # created with its first dead letter
            await trio.sleep(0.01)
    return found


async def test_what_cannot_succeed_is_dead_lettered_at_once_saying_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls.clear()
    caplog.set_level(logging.INFO, logger="paxq.client.worker")
    async with cluster_client(tmp_path, 1) as (_nodes, _clients, client):
        await client.create_queue("jobs", max_deliveries=5, backoff_base_ms=1)
        await client.publish("jobs", b"\xff not json")
        await client.publish("jobs", b'{"task": "billing.refund", "args": []}')
        await charge.enqueue(client, 30)
        await flaky.enqueue(client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tasks.work, client)
            dead = await dead_letters(client, "jobs", 4)
            nursery.cancel_scope.cancel()
        by_offset = {int(d.headers["x-death-offset"]): d.headers for d in dead}
        assert [by_offset[o]["x-death-reason"] for o in range(4)] == ["rejected"] * 4
        # The first three at their first delivery, the flaky one after its 2 retries: 3 runs,
        # although the queue allows 5.
        assert [by_offset[o]["x-death-deliveries"] for o in range(4)] == [1, 1, 1, 3]
        assert calls == ["charge", "flaky", "flaky", "flaky"]
        assert by_offset[0]["x-death-error"].startswith("UnknownTask: jobs@0: not a task message")
        assert by_offset[1]["x-death-error"].startswith(
            "UnknownTask: jobs@1: no task 'billing.refund' registered here "
            "(known: test_tasks.add, test_tasks.charge, test_tasks.divide, "
        )
        assert by_offset[2]["x-death-error"] == "Unpayable: card declined for 30"
        assert by_offset[3]["x-death-error"] == "ConnectionError: the mail server hung up"
        # One line each for what was rejected, no traceback; a retried failure logs its own.
        rejected = [r for r in caplog.records if "rejected (dead-lettered)" in r.getMessage()]
        assert len(rejected) == 4 and not any(r.exc_info for r in rejected)
        retried = [r for r in caplog.records if r.getMessage().startswith("handler failed")]
        assert len(retried) == 2 and all(r.exc_info for r in retried)


async def test_a_handler_rejects_and_a_pool_knows_errors_not_to_retry(tmp_path: Path) -> None:
    async def handler(delivery) -> None:
        if delivery.body == b"bad":
            raise Reject("a corrupt order") from ValueError("no customer id")
        raise KeyError("sku")

    async with cluster_client(tmp_path, 1) as (_nodes, _clients, client):
        await client.create_queue("orders", max_deliveries=3)
        await client.publish_many("orders", [b"bad", b"missing"])
        pool = WorkerPool(client, "orders", handler, no_retry=(KeyError,))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run)
            dead = await dead_letters(client, "orders", 2)
            pool.stop()
        errors = sorted(d.headers["x-death-error"] for d in dead)
        assert errors == ["KeyError: 'sku'", "ValueError: no customer id"]
        assert (pool.failed, pool.rejected) == (2, 2)


async def test_a_task_that_stores_results_hands_them_to_its_caller(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 1) as (_nodes, clients, client):
        await client.create_queue("jobs")
        sums = [await add.enqueue(client, i, b=1) for i in range(20)]
        failing = await divide.enqueue(client, 1, 0)
        odd = await unstorable.enqueue(client)
        seeds = [f"{h}:{p}" for h, p in clients.values()]
        async with Client(seeds) as worker, trio.open_nursery() as nursery:
            if True:
                nursery.start_soon(tasks.work, worker)
                assert await sums[7].result(timeout_s=20) == 8
                assert [await run.result(timeout_s=20) for run in sums] == list(range(1, 21))
                with pytest.raises(TaskFailed, match="divide: ZeroDivisionError: division by"):
                    await failing.result(timeout_s=20)
                with pytest.raises(TaskFailed, match="TypeError: Object of type set"):
                    await odd.result(timeout_s=20)
                assert await sums[7].result(timeout_s=0) == 8  # asked again: still there
                nursery.cancel_scope.cancel()
        # A run nobody works: no result within the time asked.
        idle = await add.enqueue(client, 1, b=2)  # no worker runs now
        with pytest.raises(ResultTimeout, match=f"no result of run {idle.id}"):
            await idle.result(timeout_s=0.2)
        with pytest.raises(Exception, match="does not store results"):
            await (await charge.enqueue(client, 1)).result()

        # From synchronous code: the same run, blocking.
        async with Client(seeds) as worker, trio.open_nursery() as nursery:
            nursery.start_soon(tasks.work, worker)

            def script() -> object:
                with BlockingClient(seeds) as blocking:
                    return blocking.enqueue(add, 40, b=2).result(timeout_s=20)

            assert await trio.to_thread.run_sync(script) == 42
            nursery.cancel_scope.cancel()


async def test_redrive_moves_dead_letters_back_once(tmp_path: Path) -> None:
    async with cluster_client(tmp_path, 1) as (_nodes, _clients, client):
        await client.create_queue("q", max_deliveries=1)
        await client.publish("q", b"a", key="k", headers={"who": "test"})
        await client.publish_many("q", [b"b", b"c"])
        await client.nack(await client.claim("q", max=3))
        assert (await client.describe("q.dlq"))["next"] == 3
        assert await client.redrive("q.dlq", max=1) == 1
        assert await client.redrive("q.dlq") == 2
        assert await client.redrive("q.dlq") == 0
        back = await client.claim("q", max=10)
        assert sorted(d.body for d in back) == [b"a", b"b", b"c"]
        first = next(d for d in back if d.body == b"a")
        assert (first.key, first.headers, first.deliveries) == (b"k", {"who": "test"}, 1)

        # A subscription's dead letters go back through a topic all subscriptions read: only
        # where they are told to go.
        await client.create_topic("events")
        await client.subscribe("events", "audit", start="earliest", max_deliveries=1)
        await client.publish("events", b"e")
        await client.nack(await client.claim("events", "audit"))
        with pytest.raises(InvalidArgument, match="died in subscription 'audit' of topic"):
            await client.redrive("events.audit.dlq")
        [kept] = await client.claim("events.audit.dlq")  # handed back, not counted
        assert kept.deliveries == 1
        await kept.release()
        assert await client.redrive("events.audit.dlq", to="q") == 1
        [moved] = await client.claim("q")
        assert moved.body == b"e"


@tasks.task(store_result=True, queue="fragile")
async def fragile(n: int) -> int:
    if n in broken:
        raise ValueError(f"{n} is broken")
    return n * 10


broken: set[int] = set()


@tasks.task(retry_delay_s=0, queue="fragile")
async def refuses() -> None:
    raise Reject("bad input")


async def test_results_of_duplicates_redriven_runs_and_shared_waiters(tmp_path: Path) -> None:
    broken.clear()
    async with cluster_client(tmp_path, 1) as (_nodes, clients, client):
        seeds = [f"{h}:{p}" for h, p in clients.values()]
        await client.create_queue("fragile", max_deliveries=1)
        first = await fragile.with_options(message_id="order-1").enqueue(client, 1)
        async with Client(seeds) as worker, trio.open_nursery() as nursery:
            nursery.start_soon(tasks.work, worker, ["fragile"])
            assert await first.result(timeout_s=20) == 10
            # Another process enqueues the same run: a duplicate, answered with the first
            # run's result, stored before that process began to follow the results.
            async with Client(seeds) as other:
                again = await fragile.with_options(message_id="order-1").enqueue(other, 1)
                assert again.duplicate and await again.result(timeout_s=20) == 10
            nursery.cancel_scope.cancel()

        # Two callers wait for one run; the first gives up, the second still gets it.
        run = await fragile.enqueue(client, 2)

        gave_up = trio.Event()
        got: list[object] = []

        async def impatient() -> None:
            with pytest.raises(ResultTimeout):
                await run.result(timeout_s=0.05)
            gave_up.set()

        async def patient() -> None:
            got.append(await run.result(timeout_s=20))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(patient)
            nursery.start_soon(impatient)
            await gave_up.wait()  # the impatient one gave up while the patient one waits
            async with Client(seeds) as worker, trio.open_nursery() as working:
                working.start_soon(tasks.work, worker, ["fragile"])
                while not got:
                    await trio.sleep(0.01)
                working.cancel_scope.cancel()
        assert got == [20]

        # A run that failed for good, redriven once mended: its success stands over the failure.
        broken.add(3)
        failed = await fragile.enqueue(client, 3)
        async with Client(seeds) as worker, trio.open_nursery() as nursery:
            nursery.start_soon(tasks.work, worker, ["fragile"])
            with pytest.raises(TaskFailed, match="ValueError: 3 is broken"):
                await failed.result(timeout_s=20)
            broken.clear()
            assert await client.redrive("fragile.dlq") == 1
            with trio.fail_after(20):
                while True:
                    try:
                        assert await failed.result(timeout_s=20) == 30
                        break
                    except TaskFailed:
                        await trio.sleep(0.05)  # the failure until the success is seen
            nursery.cancel_scope.cancel()

        # Something that is not a result on the topic harms no one.
        await client.publish("fragile.results", b'{"id": []}')
        await client.publish("fragile.results", b"not json")
        later = await fragile.enqueue(client, 4)
        async with Client(seeds) as worker, trio.open_nursery() as nursery:
            nursery.start_soon(tasks.work, worker, ["fragile"])
            assert await later.result(timeout_s=20) == 40
            nursery.cancel_scope.cancel()


async def test_a_tasks_own_reject_and_a_bad_retry_delay_and_a_bounded_redrive(
    tmp_path: Path,
) -> None:
    with pytest.raises(InvalidArgument, match="delay_s: -1: seconds from 0"):
        RetryAfter(-1)
    with pytest.raises(InvalidArgument, match="retry_delay_s"):
        tasks.task(retry_delay_s=10**9)(lambda: None)
    async with cluster_client(tmp_path, 1) as (_nodes, _clients, client):
        await client.create_queue("fragile", max_deliveries=5)
        await refuses.enqueue(client)
        pool = tasks.pools(client, ["fragile"])[0]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run)
            [dead] = await dead_letters(client, "fragile", 1)
            # Rejected by the task itself, at once: its retry_delay_s does not turn it into a
            # retry. Moved back while the worker still rejects it: moved once, not again.
            assert (dead.headers["x-death-reason"], dead.deliveries) == ("rejected", 1)
            await dead.release()
            assert await client.redrive("fragile.dlq") == 1
            await dead_letters(client, "fragile", 1)  # dead again, at a new offset
            pool.stop()
        with pytest.raises(InvalidArgument, match=r"'fragile\.dlq' is where they are"):
            await client.redrive("fragile.dlq", to="fragile.dlq")
