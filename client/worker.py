"""A worker pool: N concurrent handlers on a queue or shared subscription.

A handler that returns acks its delivery (unless it acked or nacked it itself); one that
raises nacks it, so it comes back after the subscription's backoff and goes to the dead
letters once it has used up `max_deliveries`, with what it raised in x-death-error. One that
raises `Reject` (or an error of a type in `no_retry`) dead-letters it at once; `RetryAfter`
nacks it with that delay. Leases are kept extended while handlers run.
`stop()` is graceful: nothing new is taken, running handlers get `grace_s` to finish, then
they are cancelled and their messages nacked without delay; what was prefetched and never
handled is released (handed back without counting a delivery). A plain (not
async) handler runs in a thread, which cannot be cancelled: it finishes, and is acked.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel

from .client import Client
from .consumer import Consumer
from .errors import InvalidArgument, LeaseLost, PaxqError
from .messages import Delivery
from .wire.protocol import DELAY_MS_MAX

log = logging.getLogger("paxq.client.worker")

Handler = Callable[[Delivery], Awaitable[object] | object]


class Reject(Exception):
    """Raised by a handler: no retry can mend this message; dead-letter it now. The dead
    letter's x-death-error is the exception this one was raised from, if any, else this."""


class RetryAfter(Exception):
    """Raised by a handler: try this message again after `delay_s` (not the backoff)."""

    def __init__(self, delay_s: float) -> None:
        check_delay("delay_s", delay_s)
        super().__init__(f"retry after {delay_s} s")
        self.delay_s = delay_s


def check_delay(argument: str, delay_s: object) -> None:
    """A redelivery delay a nack takes: seconds from 0 to the longest delay (30 days)."""
    if type(delay_s) not in (int, float) or not 0 <= delay_s <= DELAY_MS_MAX / 1000:
        raise InvalidArgument(argument, f"{delay_s!r}: seconds from 0 to {DELAY_MS_MAX // 1000:,}")


#: a worker whose deliveries are all waiting (and whose handler awaits nothing) yields to the
#: others after this many; yielding after each one costs a third of a fast pool's throughput
_CHECKPOINT_EVERY = 32
#: how long `on_dead` may take for one message
ON_DEAD_S = 10.0


class WorkerPool:
    def __init__(
        self,
        client: Client,
        topic: str,
        handler: Handler,
        *,
        subscription: str | None = None,
        concurrency: int = 8,
        prefetch: int | None = None,
        lease_s: float = 30.0,
        wait_s: float = 10.0,
        grace_s: float = 30.0,
        name: str = "",
        on_acked: Callable[[Delivery], object] | None = None,
        no_retry: tuple[type[BaseException], ...] = (),
        on_dead: Callable[[Delivery, BaseException], Awaitable[object]] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be positive")
        self.client = client
        self.topic = topic
        self.subscription = subscription
        self.handler = handler
        self._is_async = inspect.iscoroutinefunction(handler)
        self.concurrency = concurrency
        # Twice the handlers: the next deliveries are claimed while these run. A pool's
        # throughput is about prefetch / claim latency: raise it for short jobs.
        self.prefetch = prefetch or 2 * concurrency
        self.lease_s = lease_s
        self.wait_s = wait_s
        self.grace_s = grace_s
        self.name = name
        #: called after each ack the cluster confirmed (e.g. to record or count it)
        self.on_acked = on_acked
        #: error types a handler may raise that retrying cannot mend: dead-lettered at once
        self.no_retry = no_retry
        #: awaited (up to ON_DEAD_S) after a handler's failure dead-lettered its message
        #: (rejected, or its deliveries used up), with the error, e.g. to record it where
        #: the caller looks; not for a lease that ran out nor a handler cancelled by stop()
        self.on_dead = on_dead
        self.done = 0  # handled and acked
        self.failed = 0  # raised: nacked, or rejected
        self.rejected = 0  # of those, dead-lettered at once (Reject, no_retry)
        self.lost = 0  # handled, but the lease was gone by the ack: another worker has it
        self.active = 0
        self.acking = 0  # handled, its ack sent and not yet answered
        self._acks_answered = anyio.Event()
        self._stopping = anyio.Event()
        self._taking: set[anyio.CancelScope] = set()
        self._handling: anyio.CancelScope | None = None
        self._consumer: Consumer | None = None

    def stop(self) -> None:
        """Stop taking work; `run` returns once what runs is finished or handed back."""
        self._stopping.set()
        if self._consumer is not None:
            self._consumer.stop_fetching()
        for scope in self._taking:
            scope.cancel()

    async def run(self) -> None:
        """Work until `stop()` (or cancellation, which hands back at once)."""
        consumer = self.client.consume(
            self.topic,
            self.subscription,
            prefetch=max(self.prefetch, self.concurrency),
            lease_s=self.lease_s,
            wait_s=self.wait_s,
            consumer=self.name,
        )
        self._consumer = consumer
        if self._stopping.is_set():
            consumer.stop_fetching()  # stopped before it ran
        async with consumer, anyio.create_task_group() as workers:
            with anyio.CancelScope() as handling:
                self._handling = handling
                async with anyio.create_task_group() as handlers:
                    for _ in range(self.concurrency):
                        handlers.start_soon(self._work, consumer)
                    workers.start_soon(self._deadline, handling)
            workers.cancel_scope.cancel()
        # Counted once answered; the client's request timeout bounds the wait.
        with anyio.CancelScope(shield=True):
            while self.acking:
                self._acks_answered = anyio.Event()
                await self._acks_answered.wait()

    async def _deadline(self, handling: anyio.CancelScope) -> None:
        await self._stopping.wait()
        await anyio.sleep(self.grace_s)
        handling.cancel()  # the handlers still running are out of time

    async def _work(self, consumer: Consumer) -> None:
        taken = 0
        while not self._stopping.is_set():
            delivery = consumer.take_nowait()
            if delivery is not None:
                taken += 1
                if taken % _CHECKPOINT_EVERY == 0:
                    await anyio.lowlevel.checkpoint()  # others run, and cancellation lands
                await self._handle(delivery)
                continue
            with anyio.CancelScope() as taking:
                self._taking.add(taking)
                try:
                    delivery = await consumer.__anext__()
                except StopAsyncIteration:
                    self.stop()
                    return
                finally:
                    self._taking.discard(taking)
            if taking.cancel_called:
                return
            await self._handle(delivery)

    async def _handle(self, delivery: Delivery) -> None:
        self.active += 1
        try:
            if self._is_async:
                await self.handler(delivery)  # type: ignore[misc]
            else:
                await anyio.to_thread.run_sync(self.handler, delivery)
        except anyio.get_cancelled_exc_class():
            if not delivery.finished:  # not acked or nacked by the handler already
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    # Its handler saw it: counted, so a message that hangs every handler
                    # until the grace runs out still reaches the dead letters.
                    await _quietly(delivery.nack(delay_s=0))
            raise
        except Exception as error:
            self.failed += 1
            if not delivery.finished:
                with anyio.CancelScope(shield=True):
                    await self._failed(delivery, error)
        else:
            await self._ack(delivery)
        finally:
            self.active -= 1

    async def _failed(self, delivery: Delivery, error: Exception) -> None:
        where = f"{self.topic}@{delivery.offset}"
        cause = error
        if isinstance(error, Reject | RetryAfter) and isinstance(error.__cause__, Exception):
            cause = error.__cause__
        if isinstance(error, (Reject, *self.no_retry)):
            self.rejected += 1
            # One line, no traceback: a bad message is the sender's mistake, said once.
            log.error("%s rejected (dead-lettered): %s: %s", where, type(cause).__name__, cause)
            dead = bool(await _quietly(self.client.reject([delivery], error=cause)))
        else:
            delay_s = error.delay_s if isinstance(error, RetryAfter) else None
            log.warning("handler failed on %s", where, exc_info=cause)
            dead = bool(await _quietly(self.client.nack([delivery], delay_s=delay_s, error=cause)))
        if dead and self.on_dead is not None:
            # Bounded: stopping the pool must not wait out an outage for it.
            with anyio.move_on_after(ON_DEAD_S) as bounded:
                try:
                    await self.on_dead(delivery, cause)
                except Exception:
                    log.exception("on_dead raised on %s", where)
            if bounded.cancelled_caught:
                log.warning("on_dead gave up on %s after %s s", where, ON_DEAD_S)

    async def _ack(self, delivery: Delivery) -> None:
        """The work is done: ack it without waiting (with the acks of other handlers, in one
        request), and take the next delivery. The consumer counts it among its acks on their
        way until the ack is answered. An ack that went out may be applied: it is
        not withdrawn when the pool is cancelled, and `run` waits for its answer."""
        if delivery.finished:  # the handler acked or nacked it itself
            self.done += 1
            return
        self.acking += 1
        try:
            delivery.ack_nowait(self._acked)
        except anyio.WouldBlock:  # more acks unanswered than the client holds: wait for them
            failure: PaxqError | None = None
            with anyio.CancelScope(shield=True):
                try:
                    await delivery.ack()
                except PaxqError as error:
                    failure = error
            self._acked(delivery, failure)
        except PaxqError as error:  # the client is closed
            self._acked(delivery, error)
            delivery.settle()

    def _acked(self, delivery: Delivery, error: BaseException | None) -> None:
        self.acking -= 1
        if self.acking == 0:
            self._acks_answered.set()
        if error is None:
            self.done += 1
            if self.on_acked is not None:
                try:
                    self.on_acked(delivery)
                except Exception:
                    log.exception("on_acked raised")
        elif isinstance(error, LeaseLost):
            self.lost += 1
            log.warning("%s@%d: lease lost before the ack", self.topic, delivery.offset)
        else:
            log.warning("%s@%d: ack failed: %s", self.topic, delivery.offset, error)


async def _quietly(call: Awaitable[object]) -> object:
    """The call's result, or None if it failed (said in the log)."""
    try:
        return await call
    except PaxqError as error:
        log.info("giving a message back: %s", error)
        return None
