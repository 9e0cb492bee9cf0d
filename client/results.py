"""Task results kept in the cluster, as Celery's result backend keeps them: a task that stores
its result has it published by the worker to its queue's results topic (`<queue>.results`,
retained a day) under the run's id and attempt, so a run redelivered after a crash stores it
once. The caller's client follows that topic with one tail for all its runs, from the offset
it had when it first enqueued such a task (every later result lies after it; a duplicate's
may lie before, and is looked for there), and hands each result to whoever waits for it,
keeping the latest few thousand. A success stands over a failure (a run redriven after it
failed for good)."""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

import anyio

from .errors import PaxqError, UnknownTopic
from .messages import Offset
from .wire.protocol import MESSAGE_BYTES_MAX

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("paxq.client.results")

#: how long a results topic keeps a result
RESULTS_MAX_AGE_MS = 24 * 3600 * 1000
#: results held by one client, oldest dropped first (a run asked about after its result was
#: dropped waits for nothing: ResultTimeout)
RESULTS_KEPT_MAX = 10_000
#: and their bytes at most (a result may be up to a message's 1 MiB)
RESULTS_KEPT_BYTES_MAX = 64 << 20


def results_topic(queue: str) -> str:
    return f"{queue}.results"


class TaskFailed(PaxqError):
    """The run failed for good (an error it must not retry on, or its retries used up):
    `message` is what it raised, as "Type: message"."""


class ResultTimeout(PaxqError, TimeoutError):
    """No result came within the time asked; the run may still be waiting or running."""

    retriable = True


async def create_results_topic(client: Client, queue: str) -> None:
    await client.create_topic(results_topic(queue), exist_ok=True, max_age_ms=RESULTS_MAX_AGE_MS)


async def store(client: Client, queue: str, record: dict, attempt: str) -> None:
    """Publish one run's result (the worker's side), created on first use. `attempt` names
    the message run (its queue offset): stored once per attempt, so a run redelivered after a
    crash stores its result once, and one redriven after a failure stores its success."""
    try:
        body = json.dumps(record).encode()
        error = None
    except (TypeError, ValueError) as refused:  # a value that is not JSON
        error = f"{type(refused).__name__}: {refused}"
    if error is None and len(body) > MESSAGE_BYTES_MAX:
        error = f"TooLarge: a result of {len(body):,} bytes; the largest is {MESSAGE_BYTES_MAX:,}"
    if error is not None:  # stored as the run's failure: the caller hears why
        record = {key: record[key] for key in ("id", "task")} | {"ok": False, "error": error}
        body = json.dumps(record).encode()
    topic = results_topic(queue)
    message_id = f"{record['id']}@{attempt}"
    try:
        await client.publish(topic, body, message_id=message_id)
    except UnknownTopic:
        await create_results_topic(client, queue)
        await client.publish(topic, body, message_id=message_id)


class Results:
    """One client's view of one results topic."""

    def __init__(self, client: Client, queue: str) -> None:
        self.client = client
        self.queue = queue
        self.topic = results_topic(queue)
        self._start: int | None = None
        self._opening = anyio.Lock()
        self._kept: OrderedDict[str, dict] = OrderedDict()
        self._kept_bytes = 0
        self._waiting: dict[str, anyio.Event] = {}
        self._waiters: dict[str, int] = {}
        self._following = False
        self._failure: PaxqError | None = None

    async def open(self) -> None:
        """Before the first run is enqueued: where its results will lie from."""
        if self._start is not None:
            return
        async with self._opening:
            if self._start is None:
                await create_results_topic(self.client, self.queue)
                # Any node's answer will do: one that lags gives an earlier offset.
                self._start = (await self.client.describe(self.topic))["next"]

    async def get(self, run_id: str, timeout_s: float | None, earlier: bool = False) -> object:
        """The run's result; `earlier`: it may have been stored before this client began to
        follow (a duplicate of a run queued before), so the topic is read from its start up
        to there first."""
        try:
            with anyio.fail_after(timeout_s if timeout_s is not None else float("inf")):
                record = self._kept.get(run_id)
                if record is None and earlier:
                    await self._read_earlier()
                    record = self._kept.get(run_id)
                if record is None:
                    record = await self._wait(run_id)
        except TimeoutError:
            raise ResultTimeout(
                f"no result of run {run_id} on {self.topic} within {timeout_s} s"
            ) from None
        if record.get("ok"):
            return record.get("value")
        raise TaskFailed(f"{record.get('task')}: {record.get('error')}", run_id)

    async def _wait(self, run_id: str) -> dict:
        event = self._waiting.setdefault(run_id, anyio.Event())
        self._waiters[run_id] = self._waiters.get(run_id, 0) + 1
        if not self._following:
            self._following, self._failure = True, None
            self.client.task_group.start_soon(self._follow, self._start or 0)
        try:
            await event.wait()
        finally:
            self._waiters[run_id] -= 1
            if not self._waiters[run_id]:  # the last one waiting for it: forget the event
                del self._waiters[run_id]
                if self._waiting.get(run_id) is event:
                    del self._waiting[run_id]
        record = self._kept.get(run_id)
        if record is None:  # woken because following the topic failed
            raise self._failure or ResultTimeout(f"no result of run {run_id}")
        return record

    async def _read_earlier(self) -> None:
        offset = (await self.client.describe(self.topic))["first"]
        end = self._start or 0
        while offset < end:
            messages, offset = await self.client.read(self.topic, offset, limit=1000)
            if not messages:
                break
            for message in messages:
                if message.offset < end:
                    self._keep(message.body, message.offset)

    def _keep(self, body: bytes, offset: int) -> str | None:
        """Holds a record; its run id if it is the one to answer with. A success stands over
        a failure (a run redriven after it failed for good); otherwise the first stands (the
        same attempt stored again after a crash)."""
        try:
            record = json.loads(body)
            run_id = record["id"]
        except (ValueError, KeyError, TypeError):
            run_id = None
        if not isinstance(run_id, str):
            log.warning("%s@%d: not a task result", self.topic, offset)
            return None
        held = self._kept.get(run_id)
        if held is not None and (held.get("ok") or not record.get("ok")):
            return None
        if held is not None:
            self._kept_bytes -= held["_bytes"]
        record["_bytes"] = len(body)
        self._kept[run_id] = record
        self._kept.move_to_end(run_id)
        self._kept_bytes += len(body)
        while len(self._kept) > RESULTS_KEPT_MAX or self._kept_bytes > RESULTS_KEPT_BYTES_MAX:
            _, dropped = self._kept.popitem(last=False)
            self._kept_bytes -= dropped["_bytes"]
        return run_id

    async def _follow(self, start: int) -> None:
        try:
            async for message in self.client.tail(self.topic, start):
                run_id = self._keep(message.body, message.offset)
                event = self._waiting.pop(run_id, None) if run_id is not None else None
                if event is not None:
                    event.set()
        except PaxqError as error:  # an outage past the client's outage_s, ...
            log.warning("following %s stopped: %s", self.topic, error)
            self._failure = error
            waiting, self._waiting = self._waiting, {}
            for event in waiting.values():
                event.set()
        finally:
            self._following = False


class TaskRun:
    """One enqueued run of a task: its id, its message's offset, and (for a task that stores
    results) `await run.result(timeout_s=30)`."""

    def __init__(self, task: str, run_id: str, offset: Offset, results: Results | None) -> None:
        self.task = task
        self.id = run_id
        self.offset = offset
        self._results = results

    @property
    def duplicate(self) -> bool:
        """Its message_id was taken within the window: this run was queued once before."""
        return self.offset.duplicate

    def __repr__(self) -> str:
        return f"TaskRun({self.task!r}, id={self.id!r}, offset={int(self.offset)})"

    async def result(self, timeout_s: float | None = 30.0) -> object:
        """The task's return value once a worker has run it; raises TaskFailed if it failed
        for good, ResultTimeout after `timeout_s` (None: wait for ever)."""
        if self._results is None:
            raise PaxqError(f"{self.task} does not store results (store_result=True does)")
        return await self._results.get(self.id, timeout_s, earlier=self.duplicate)
