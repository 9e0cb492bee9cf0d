"""A consumer: deliveries of a queue or shared subscription, claimed ahead (prefetch) with a
long poll, their leases extended while they are held, handed back when it stops."""

from __future__ import annotations

import functools
import logging
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from .errors import LeaseLost, PaxqError, Unavailable
from .messages import Delivery
from .outage import Outage
from .wire.protocol import CLAIM_MAX, LEASES_MAX

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("paxq.client.consumer")

#: a consumer whose deliveries are waiting yields after this many of them (a wait yields
#: anyway); yielding after each one costs a fast loop 10 to 15 % of its throughput
_CHECKPOINT_EVERY = 32

#: claims out at once at most: the next one goes while the last waits for its slot, so the
#: time a claim takes through the log does not leave the consumer with nothing to hand out
_CLAIMS_IN_FLIGHT = 2

#: how long the consumer spends handing back what it holds when it stops
HAND_BACK_S = 5.0


class Consumer:
    """`async with client.consume("jobs") as deliveries: async for d in deliveries: ...`

    At most `prefetch` deliveries are held at once (claimed and not yet acked or nacked),
    and at most `prefetch` more acked whose acks are not answered yet (as RabbitMQ's prefetch
    counts a delivery until its ack reaches the broker, not until the ack is durable);
    each is extended by `lease_s` every `lease_s / 3` until it is finished, so a slow handler
    keeps its message and a dead one gives it back after at most `lease_s`. On leaving the
    block, what is still held goes back at once: released (uncounted) if the caller never took
    it, nacked (counted) if it took it and did not finish it.
    """

    def __init__(
        self,
        client: Client,
        topic: str,
        subscription: str | None,
        *,
        prefetch: int,
        lease_s: float,
        wait_s: float,
        consumer: str,
    ) -> None:
        if prefetch < 1 or lease_s <= 0 or wait_s < 0:
            raise ValueError("prefetch and lease_s must be positive, wait_s not negative")
        self.client = client
        self.topic = topic
        self.subscription = subscription
        self.prefetch = prefetch
        self.lease_s = lease_s
        self.wait_s = wait_s
        self.consumer = consumer
        self.held: dict[int, Delivery] = {}  # offset -> delivery, until acked or settled
        #: offset -> delivery whose ack is on its way, until answered: at most `prefetch`
        self.acking: dict[int, Delivery] = {}
        self._claiming = 0  # deliveries the claims out may bring
        self.lost = 0  # leases found gone while extending
        self._room = anyio.Event()
        # Claimed and not yet taken: at most `prefetch`, as every one of them is held.
        self._ready: deque[Delivery] = deque()
        self._arrived = anyio.Event()
        self._fetched_all = False  # no more deliveries will come
        self._taken = 0
        self._group: TaskGroup | None = None
        self._error: BaseException | None = None
        self._fetching: anyio.CancelScope | None = None  # made in the loop, at entry
        self._stop_asked = False

    async def __aenter__(self) -> Consumer:
        self._fetching = anyio.CancelScope()
        if self._stop_asked:
            self._fetching.cancel()
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._fetch)
        self._group.start_soon(self._keep)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._group is not None
        self._group.cancel_scope.cancel()
        try:
            await self._group.__aexit__(None, None, None)
        finally:
            # Acks on their way are answered first (the client's request timeout bounds
            # them); then what was never finished goes back.
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(self.client.request_timeout_s):
                    while self.acking or any(d.finished for d in self.held.values()):
                        await self._wait_for_room()
                with anyio.move_on_after(HAND_BACK_S):
                    await self.hand_back()
        return None

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Delivery:
        self._taken += 1
        if self._taken % _CHECKPOINT_EVERY == 0:
            await anyio.lowlevel.checkpoint()
        while not self._ready:
            if self._fetched_all:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            await self._arrived.wait()  # every waiter: the fetcher sets, then replaces it
        return self._ready.popleft()

    def take_nowait(self) -> Delivery | None:
        """The next delivery if one is here already, else None."""
        return self._ready.popleft() if self._ready else None

    def stop_fetching(self) -> None:
        """Claim nothing more (a claim waiting now is withdrawn, and what it got given
        back); iteration ends once what was fetched is taken."""
        self._stop_asked = True
        if self._fetching is not None:
            self._fetching.cancel()

    async def hand_back(self) -> None:
        """Give back everything held and not finished: what the caller never took is
        released (redelivered at once, the delivery uncounted); what it took and left
        unfinished, as when its loop raised on a message, is nacked without delay, and that
        delivery counts, so a message that breaks its consumer still reaches the dead
        letters."""
        waiting = {id(d) for d in self._ready}
        unfinished = [d for d in self.held.values() if not d.finished]
        unseen = [d for d in unfinished if id(d) in waiting]
        seen = [d for d in unfinished if id(d) not in waiting]
        nack_now = functools.partial(self.client.nack, delay_s=0)
        for give, deliveries in ((self.client.release, unseen), (nack_now, seen)):
            for start in range(0, len(deliveries), LEASES_MAX):
                await self._give_back(give, deliveries[start : start + LEASES_MAX])

    async def _give_back(self, give, deliveries: list[Delivery]) -> None:
        while deliveries:
            try:
                await give(deliveries)
                return
            except LeaseLost as error:  # the rest still go back now, not at their deadline
                gone = set(error.offsets)
                deliveries = [d for d in deliveries if d.offset not in gone]
                if not gone:
                    return
            except PaxqError as error:
                log.info("handing back %d deliveries: %s", len(deliveries), error)
                return

    async def _wait_for_room(self) -> None:
        if self._room.is_set():  # replaced only once set: every waiter wakes
            self._room = anyio.Event()
        await self._room.wait()

    def _acking(self, delivery: Delivery) -> None:
        if self.held.get(delivery.offset) is delivery:
            del self.held[delivery.offset]
            self.acking[delivery.offset] = delivery
            self._room.set()

    def _settled(self, delivery: Delivery) -> None:
        # Only this delivery: the offset may be held again since, under a newer lease.
        if self.held.get(delivery.offset) is delivery:
            del self.held[delivery.offset]
        elif self.acking.get(delivery.offset) is delivery:
            del self.acking[delivery.offset]
        self._room.set()

    def _room_to_claim(self) -> int:
        """Deliveries a claim may bring: `prefetch` unacked ones held at most, and as many
        acks unanswered (what a claim brings may all be acked before one is answered)."""
        held = len(self.held) + self._claiming
        return self.prefetch - max(held, len(self.acking) + self._claiming)

    async def _fetch(self) -> None:
        assert self._fetching is not None
        try:
            with self._fetching:
                async with anyio.create_task_group() as claims:
                    for _ in range(_CLAIMS_IN_FLIGHT):
                        claims.start_soon(self._fetch_until_stopped)
        finally:
            self._fetched_all = True
            self._arrived.set()

    async def _fetch_until_stopped(self) -> None:
        where = self.topic if self.subscription is None else f"{self.topic}/{self.subscription}"
        outage = Outage(f"consuming {where}", self.client.outage_s, log)
        least = max(1, min(CLAIM_MAX, self.prefetch) // 4)  # fewer, larger claims
        try:
            while True:
                while self._room_to_claim() < least:
                    await self._wait_for_room()
                room = min(CLAIM_MAX, self._room_to_claim())
                self._claiming += room
                outage.asking()
                try:
                    deliveries = await self.client.claim(
                        self.topic,
                        self.subscription,
                        max=room,
                        lease_s=self.lease_s,
                        wait_s=self.wait_s,
                        consumer=self.consumer,
                    )
                except Unavailable as error:  # an outage: on, up to the client's outage_s
                    await outage.failed(error)
                    continue
                finally:
                    self._claiming -= room
                outage.answered()
                for delivery in deliveries:
                    delivery.on_finish = self._settled
                    delivery.on_acking = self._acking
                    self.held[delivery.offset] = delivery
                self._ready.extend(deliveries)
                self._arrived.set()
                self._arrived = anyio.Event()
        except PaxqError as error:  # the topic went away, a bad argument: the end
            self._error = error
            self.stop_fetching()

    async def _keep(self) -> None:
        period = self.lease_s / 3
        while True:
            await anyio.sleep(period)
            held = [d for d in self.held.values() if not d.finished]
            for start in range(0, len(held), LEASES_MAX):
                await self._extend(held[start : start + LEASES_MAX])

    async def _extend(self, deliveries: list[Delivery]) -> None:
        while deliveries:
            try:
                await self.client.extend(deliveries, lease_s=self.lease_s)
                return
            except LeaseLost as error:
                gone = set(error.offsets)
                for delivery in deliveries:
                    if delivery.offset in gone:
                        self.lost += 1
                        delivery.settle()
                deliveries = [d for d in deliveries if d.offset not in gone]
                if not gone:
                    return
            except PaxqError as error:
                log.warning("extending %d leases on %s: %s", len(deliveries), self.topic, error)
                return
