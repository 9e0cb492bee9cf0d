"""Task results kept in the cluster, as Celery's result backend keeps them: a task that stores
its result has it published by the worker to its queue's results topic (`<queue>.results`,
retained a day) under the run's id, so a retried run stores it once. The caller's client
follows that topic with one tail for all its runs, from the offset it had when the client
first enqueued such a task (every result of its runs lies after it), and hands each result
to whoever waits for it, keeping the latest few thousand for runs not yet asked about."""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

import anyio

from .errors import PaxqError, UnknownTopic
from .messages import Offset

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("paxq.client.results")

#: how long a results topic keeps a result
RESULTS_MAX_AGE_MS = 24 * 3600 * 1000
#: results held by one client, oldest dropped first (a run asked about after its result was
#: dropped waits for nothing: ResultTimeout)
RESULTS_KEPT_MAX = 10_000


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


async def store(client: Client, queue: str, record: dict) -> None:
    """Publish one run's result (the worker's side); created on first use."""
    body = json.dumps(record).encode()
    topic = results_topic(queue)
    try:
        await client.publish(topic, body, message_id=record["id"])
    except UnknownTopic:
        await create_results_topic(client, queue)
        await client.publish(topic, body, message_id=record["id"])


class Results:
    """One client's view of one results topic."""

    def __init__(self, client: Client, queue: str) -> None:
        self.client = client
        self.queue = queue
        self.topic = results_topic(queue)
        self._start: int | None = None
        self._opening = anyio.Lock()
        self._kept: OrderedDict[str, dict] = OrderedDict()
        self._waiting: dict[str, anyio.Event] = {}
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

    async def get(self, run_id: str, timeout_s: float | None) -> object:
        record = self._kept.get(run_id)
        if record is None:
            event = self._waiting.setdefault(run_id, anyio.Event())
            if not self._following:
                self._following, self._failure = True, None
                self.client.task_group.start_soon(self._follow, self._start or 0)
            try:
                with anyio.fail_after(timeout_s if timeout_s is not None else float("inf")):
                    await event.wait()
            except TimeoutError:
                raise ResultTimeout(
                    f"no result of run {run_id} on {self.topic} within {timeout_s} s"
                ) from None
            finally:
                if self._waiting.get(run_id) is event and not event.is_set():
                    del self._waiting[run_id]
            record = self._kept.get(run_id)
            if record is None:  # woken because following the topic failed
                raise self._failure or ResultTimeout(f"no result of run {run_id}")
        if record.get("ok"):
            return record.get("value")
        raise TaskFailed(f"{record.get('task')}: {record.get('error')}", run_id)

    async def _follow(self, start: int) -> None:
        try:
            async for message in self.client.tail(self.topic, start):
                try:
                    record = json.loads(message.body)
                    run_id = record["id"]
                except (ValueError, KeyError, TypeError):
                    log.warning("%s@%d: not a task result", self.topic, message.offset)
                    continue
                if run_id in self._kept:
                    continue  # stored again by a retried run: the first one counts
                if len(self._kept) >= RESULTS_KEPT_MAX:
                    self._kept.popitem(last=False)
                self._kept[run_id] = record
                event = self._waiting.pop(run_id, None)
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
        return await self._results.get(self.id, timeout_s)
