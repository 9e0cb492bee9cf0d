"""What readers get: a Message (from a live tail) and a Delivery (a leased message of a
queue or shared subscription, which its holder acks, nacks or extends)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import Client

Headers = dict[str, str | bytes | int]


class Offset(int):
    """A published message's offset; `duplicate` is True when the topic had taken a message
    of the same `message_id` within its window, whose offset this is (nothing was stored)."""

    duplicate: bool

    def __new__(cls, offset: int, duplicate: bool = False) -> Offset:
        value = super().__new__(cls, offset)
        value.duplicate = duplicate
        return value

    def __repr__(self) -> str:
        return f"Offset({int(self)}, duplicate=True)" if self.duplicate else f"Offset({int(self)})"


@dataclass(frozen=True)
class Message:
    topic: str
    offset: int
    body: bytes
    key: bytes | None = None
    headers: Headers | None = None

    def text(self) -> str:
        return self.body.decode()


@dataclass(eq=False, slots=True)
class Delivery:
    """One lease on one message. `token` names this attempt: once the lease is gone (expired,
    or the message handed to another consumer), ack, nack and extend raise LeaseLost."""

    topic: str
    subscription: str | None
    offset: int
    body: bytes
    key: bytes | None
    headers: Headers | None
    deliveries: int  # 1 on the first delivery
    token: int
    deadline_ms: int  # the cluster's stamped time the lease ends at
    published_ms: int
    _client: Client = field(repr=False)
    #: set once acked, nacked or found lost, or an ack is on its way: the consumer stops
    #: extending it
    finished: bool = False
    #: called once when it is settled (the consumer that holds it counts it off)
    on_finish: Callable[[Delivery], None] | None = field(default=None, repr=False)
    #: called once when an ack of it is queued (the consumer counts it off its prefetch)
    on_acking: Callable[[Delivery], None] | None = field(default=None, repr=False)

    def text(self) -> str:
        return self.body.decode()

    @property
    def client(self) -> Client:
        """The client it came through (to publish what handling it produces)."""
        return self._client

    @property
    def lease(self) -> list[int]:
        return [self.offset, self.token]

    def acking(self) -> None:
        """An ack of it is on its way: finished, not extended, off the prefetch."""
        self.finished = True
        on_acking, self.on_acking = self.on_acking, None
        if on_acking is not None:
            on_acking(self)

    def settle(self) -> None:
        """Mark it finished (acked, nacked or lost): nobody extends it any more."""
        self.finished = True
        on_finish, self.on_finish = self.on_finish, None
        if on_finish is not None:
            on_finish(self)

    async def ack(self) -> None:
        """Done with it: it is never delivered again. Raises LeaseLost if the lease is gone."""
        await self._client.ack([self])

    def ack_nowait(
        self, on_done: Callable[[Delivery, BaseException | None], object] | None = None
    ) -> None:
        """Ack it without waiting: the ack goes with others in the next request, and
        `on_done(delivery, error)` hears how it went (error None, LeaseLost, ...)."""
        self._client.ack_nowait([self], on_done)

    async def nack(
        self, delay_s: float | None = None, *, error: BaseException | str | None = None
    ) -> None:
        """Give it back for another delivery: after `delay_s`, or by the subscription's
        exponential backoff when None. Past `max_deliveries` it goes to the dead letters,
        with `error` (why it failed) in its x-death-error header."""
        await self._client.nack([self], delay_s=delay_s, error=error)

    async def release(self) -> None:
        """Hand it back unprocessed, at once and without counting this delivery."""
        await self._client.release([self])

    async def reject(self, *, error: BaseException | str | None = None) -> None:
        """Dead-letter it at once (no retry can mend it), with `error` as x-death-error."""
        await self._client.reject([self], error=error)

    async def extend(self, lease_s: float) -> None:
        """Hold it for `lease_s` more, counted from now."""
        await self._client.extend([self], lease_s=lease_s)
