"""The blocking facade, for scripts and threaded programs:

    with BlockingClient("127.0.0.1:7411,127.0.0.1:7412,127.0.0.1:7413") as client:
        client.publish("jobs", b"hello")
        for delivery in client.consume("jobs", max_messages=1):
            delivery.ack()

One background thread runs the async client (on trio) for all the threads that share this
object; each call waits for its result there. Same methods, same errors, same guarantees.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .client import Client
from .messages import Delivery, Message
from .results import TaskRun

if TYPE_CHECKING:
    from .tasks import Task

T = TypeVar("T")


class BlockingTaskRun:
    """A TaskRun for synchronous code: `run.result(timeout_s=10)` blocks."""

    def __init__(self, run: TaskRun, client: BlockingClient) -> None:
        self.run = run
        self.id, self.offset, self.task = run.id, run.offset, run.task
        self._client = client

    @property
    def duplicate(self) -> bool:
        return self.run.duplicate

    def result(self, timeout_s: float | None = 30.0) -> object:
        return self._client.call(self.run.result, timeout_s)


class BlockingDelivery:
    """A Delivery whose ack, nack and extend block."""

    def __init__(self, delivery: Delivery, portal: BlockingPortal) -> None:
        self.delivery = delivery
        self._portal = portal

    def __getattr__(self, name: str) -> object:
        return getattr(self.delivery, name)

    def __repr__(self) -> str:
        return f"Blocking{self.delivery!r}"

    def ack(self) -> None:
        self._portal.call(self.delivery.ack)

    def ack_nowait(self, on_done=None) -> None:
        """Queued from the client's own thread; `on_done` runs there too."""
        self._portal.call(self.delivery.ack_nowait, on_done)

    def nack(
        self, delay_s: float | None = None, *, error: BaseException | str | None = None
    ) -> None:
        self._portal.call(functools.partial(self.delivery.nack, delay_s, error=error))

    def release(self) -> None:
        self._portal.call(self.delivery.release)

    def reject(self, *, error: BaseException | str | None = None) -> None:
        self._portal.call(functools.partial(self.delivery.reject, error=error))

    def extend(self, lease_s: float) -> None:
        self._portal.call(self.delivery.extend, lease_s)


class BlockingClient:
    """`Client`, with every call blocking. Close it (or use `with`) to stop its thread."""

    def __init__(
        self, seeds: Sequence[str | tuple[str, int]] | str | None = None, **options: object
    ) -> None:
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal("trio")
        self._portal = self._portal_cm.__enter__()
        try:
            # The client's task group must be entered and left by one task: the portal's
            # wrapper keeps one task for its whole life.
            self._client_cm = self._portal.wrap_async_context_manager(Client(seeds, **options))
            self.client: Client = self._client_cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._client_cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def call(self, function: Callable[..., Awaitable[T]], *args: object, **kwargs: object) -> T:
        """Run any coroutine function of the async client here, e.g.
        `client.call(client.client.describe, "jobs")`."""
        return self._portal.call(functools.partial(function, *args, **kwargs))

    # Each method: the async client's, waited for. -----------------------------------------

    def create_topic(self, topic: str, **options: object) -> bool:
        return self.call(self.client.create_topic, topic, **options)

    def create_queue(self, queue: str, **options: object) -> bool:
        return self.call(self.client.create_queue, queue, **options)

    def delete(self, topic: str) -> None:
        self.call(self.client.delete, topic)

    def subscribe(self, topic: str, subscription: str, **options: object) -> bool:
        return self.call(self.client.subscribe, topic, subscription, **options)

    def unsubscribe(self, topic: str, subscription: str) -> None:
        self.call(self.client.unsubscribe, topic, subscription)

    def purge(self, topic: str, subscription: str | None = None) -> int:
        return self.call(self.client.purge, topic, subscription)

    def topics(self) -> list[dict]:
        return self.call(self.client.topics)

    def describe(self, topic: str) -> dict:
        return self.call(self.client.describe, topic)

    def status(self) -> dict:
        return self.call(self.client.status)

    def publish(self, topic: str, body: bytes | str, **options: object) -> int:
        return self.call(self.client.publish, topic, body, **options)

    def publish_many(self, topic: str, messages: Sequence[bytes | str | dict]) -> list[int]:
        return self.call(self.client.publish_many, topic, messages)

    def claim(self, topic: str, subscription: str | None = None, **options: object):
        deliveries = self.call(self.client.claim, topic, subscription, **options)
        return [BlockingDelivery(d, self._portal) for d in deliveries]

    def ack(self, deliveries: Sequence[BlockingDelivery | Delivery]) -> None:
        self.call(self.client.ack, [_unwrap(d) for d in deliveries])

    def enqueue(self, task: Task, *args: object, **kwargs: object) -> BlockingTaskRun:
        """Queue one run of a task (as `await task.enqueue(client, ...)`)."""
        return BlockingTaskRun(self.call(task.enqueue, self.client, *args, **kwargs), self)

    def nack(self, deliveries: Sequence[BlockingDelivery | Delivery], **options: object) -> int:
        return self.call(self.client.nack, [_unwrap(d) for d in deliveries], **options)

    def release(self, deliveries: Sequence[BlockingDelivery | Delivery]) -> int:
        return self.call(self.client.release, [_unwrap(d) for d in deliveries])

    def redrive(self, dead_letters: str, **options: object) -> int:
        return self.call(self.client.redrive, dead_letters, **options)

    def reject(self, deliveries: Sequence[BlockingDelivery | Delivery], **options: object) -> int:
        return self.call(self.client.reject, [_unwrap(d) for d in deliveries], **options)

    def read(self, topic: str, start: int = 0, **options: object) -> tuple[list[Message], int]:
        return self.call(self.client.read, topic, start, **options)

    @contextmanager
    def consume(
        self,
        topic: str,
        subscription: str | None = None,
        *,
        max_messages: int | None = None,
        **options: object,
    ) -> Iterator[Iterator[BlockingDelivery]]:
        """`with client.consume("jobs") as deliveries: for d in deliveries: ...`; the
        leases of what is held are kept extended meanwhile, and handed back on leaving."""
        consumer = self.client.consume(topic, subscription, **options)  # type: ignore[arg-type]
        with self._portal.wrap_async_context_manager(consumer) as running:

            def deliveries() -> Iterator[BlockingDelivery]:
                count = 0
                while max_messages is None or count < max_messages:
                    try:
                        delivery = self._portal.call(running.__anext__)
                    except StopAsyncIteration:
                        return
                    count += 1
                    yield BlockingDelivery(delivery, self._portal)

            yield deliveries()

    def tail(self, topic: str, start: str | int = "latest", **options: object) -> Iterator[Message]:
        """Messages of a topic as they come, from `start` on (blocks between them)."""
        tail = self.client.tail(topic, start, **options)  # type: ignore[arg-type]
        while True:
            yield self._portal.call(tail.__anext__)


def _unwrap(delivery: BlockingDelivery | Delivery) -> Delivery:
    return delivery.delivery if isinstance(delivery, BlockingDelivery) else delivery
