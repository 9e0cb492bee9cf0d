"""Sharing requests: a batcher gathers what concurrent callers submit into one request, and a
sequencer hands out a producer's sequence numbers without outrunning the machine's window."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskGroup
from opentelemetry import context as otel_context

from .errors import Unavailable

log = logging.getLogger("paxq.client.batching")

Item = TypeVar("Item")


class Job(Generic[Item]):
    """One submitted item and, once its batch is answered, its result or error. A caller
    that waits has `done`; one that does not has `on_finish`, called once with the job."""

    __slots__ = ("context", "done", "error", "finished", "item", "on_finish", "result", "size")

    def __init__(
        self,
        item: Item,
        size: int,
        context: object = None,
        on_finish: Callable[[Job[Item]], None] | None = None,
    ) -> None:
        self.item = item
        self.size = size
        self.context = context  # who submitted it, when tracing (client.tracing.Caller)
        self.done: anyio.Event | None = None if on_finish is not None else anyio.Event()
        self.on_finish = on_finish
        self.finished = False
        self.result: object = None
        self.error: BaseException | None = None

    def finish(self, result: object = None, error: BaseException | None = None) -> None:
        if not self.finished:
            self.finished = True
            self.result, self.error = result, error
            if self.done is not None:
                self.done.set()
            else:
                try:
                    self.on_finish(self)  # type: ignore[misc]
                except Exception:  # the others in its batch must be answered all the same
                    log.exception("a job's callback raised")


def _ignore(_job: Job) -> None:
    pass


class Batcher(Generic[Item]):
    """Items submitted while `in_flight_max` batches are out (or during `linger_s`) go
    together in the next one, up to `items_max` and `bytes_max` (a batch always takes one).
    `send(jobs)` must finish every job it is given. At most `pending_max` items are
    submitted and not yet answered (queued or in a batch out): past that, submitters wait
    for room (backpressure, as NATS's `publish_async_max_pending`)."""

    def __init__(
        self,
        task_group: TaskGroup,
        send: Callable[[list[Job[Item]]], Awaitable[None]],
        *,
        items_max: int,
        bytes_max: int,
        linger_s: float = 0.0,
        in_flight_max: int = 4,
        pending_max: int = 10_000,
    ) -> None:
        if items_max < 1 or bytes_max < 1 or in_flight_max < 1 or pending_max < 1:
            raise ValueError("batch bounds must be positive")
        self._group = task_group
        self._send = send
        self.items_max = items_max
        self.bytes_max = bytes_max
        self.linger_s = linger_s
        self._slots = anyio.Semaphore(in_flight_max)
        self.pending_max = pending_max
        self.pending = 0  # submitted, not yet answered
        self._room = anyio.Event()  # set (and replaced) when answers make room
        self._queue: deque[Job[Item]] = deque()
        self._queued_bytes = 0
        self._wake = anyio.Event()
        self._running = False
        self._closed: BaseException | None = None

    async def submit(self, item: Item, size: int, context: object = None) -> object:
        await self._wait_for_room()
        if not (self._queue or self.linger_s) and self._closed is None and self._slots.value:
            # Nothing waits and a batch may go: the caller sends its own, from its own task
            # (a lone caller's request costs no hop through the gathering task).
            self._slots.acquire_nowait()
            job = Job(item, size, context, _ignore)
            self.pending += 1
            await self._deliver([job])
        else:
            job = Job(item, size, context)
            self._enqueue(job)
            await job.done.wait()  # type: ignore[union-attr]
        if job.error is not None:
            raise job.error
        return job.result

    def submit_nowait(
        self,
        item: Item,
        size: int,
        on_finish: Callable[[Job[Item]], None],
        context: object = None,
    ) -> None:
        """Queue an item without waiting for it; `on_finish(job)` is called once it is
        answered. No room is waited for: with `pending_max` items unanswered this raises
        anyio.WouldBlock."""
        if self.pending >= self.pending_max:
            raise anyio.WouldBlock
        self._enqueue(Job(item, size, context, on_finish))

    async def submit_waiting(
        self,
        item: Item,
        size: int,
        on_finish: Callable[[Job[Item]], None],
        context: object = None,
    ) -> None:
        """As submit_nowait, but waits for room."""
        await self._wait_for_room()
        self._enqueue(Job(item, size, context, on_finish))

    async def _wait_for_room(self) -> None:
        while True:
            if self._closed is not None:
                raise self._closed
            if self.pending < self.pending_max:
                return
            await self._room.wait()

    def _answered(self, count: int) -> None:
        self.pending -= count
        room = self._room
        if not room.is_set():
            room.set()
            self._room = anyio.Event()

    def _enqueue(self, job: Job[Item]) -> None:
        if self._closed is not None:
            raise self._closed
        self.pending += 1
        self._queue.append(job)
        self._queued_bytes += job.size
        self._wake.set()
        if not self._running:
            self._running = True
            self._group.start_soon(self._run)

    async def _run(self) -> None:
        # This task (and the sends it starts) inherited the context of the first submitter:
        # none of it is theirs, least of all their tracing span.
        otel_context.attach(otel_context.Context())
        try:
            await self._gather()
        finally:
            # The client is closing (its task group is cancelled): nobody may wait forever.
            self._closed = Unavailable("the client is closed")
            dropped = len(self._queue)
            while self._queue:
                self._queue.popleft().finish(error=self._closed)
            self._answered(dropped)

    async def _gather(self) -> None:
        queue = self._queue
        while True:
            while not queue:
                self._wake = anyio.Event()
                await self._wake.wait()
            if self.linger_s:
                with anyio.move_on_after(self.linger_s):
                    while len(queue) < self.items_max and self._queued_bytes < self.bytes_max:
                        self._wake = anyio.Event()
                        await self._wake.wait()
            await self._slots.acquire()  # while every slot is out, more items gather
            batch: list[Job[Item]] = []
            size = 0
            while queue and len(batch) < self.items_max:
                if batch and size + queue[0].size > self.bytes_max:
                    break
                job = queue.popleft()
                size += job.size
                batch.append(job)
            self._queued_bytes -= size
            self._group.start_soon(self._deliver, batch)

    async def _deliver(self, batch: list[Job[Item]]) -> None:
        try:
            await self._send(batch)
        except Exception as error:
            for job in batch:
                job.finish(error=error)
        finally:
            self._slots.release()
            for job in batch:  # a send that forgot a job must not leave its caller hanging
                job.finish(error=RuntimeError("the batch ended without an answer"))
            self._answered(len(batch))


class Sequencer:
    """A producer's sequence numbers on one topic. A number is taken only while fewer than
    `window` below it are still unanswered: the machine remembers the last `window` results,
    so every retry of an unanswered one still finds its answer (or that it never ran)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.next = 0
        self._out: set[int] = set()
        self._changed = anyio.Event()

    async def take(self) -> int:
        while self._out and self.next - min(self._out) >= self.window:
            await self._changed.wait()
        seq = self.next
        self.next += 1
        self._out.add(seq)
        return seq

    def release(self, seq: int) -> None:
        self._out.discard(seq)
        self._changed.set()
        self._changed = anyio.Event()
