"""A live tail: an ephemeral reader that follows a topic from an offset, with no state on the
server. It long-polls any node and resumes at its next offset after a reconnect, so a leader
change shows neither a gap nor a duplicate."""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

from .errors import InvalidArgument, Unavailable
from .messages import Message
from .outage import Outage

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("paxq.client.tail")


class Tail:
    """`async for message in client.tail("prices", start="earliest"): ...`"""

    def __init__(
        self, client: Client, topic: str, start: str | int, *, wait_s: float, batch: int
    ) -> None:
        if start not in ("earliest", "latest") and not (type(start) is int and start >= 0):
            raise InvalidArgument(
                "start", f"{start!r}: 'earliest', 'latest' or an offset (an int from 0)"
            )
        self.client = client
        self.topic = topic
        self.start = start
        self.wait_s = wait_s
        self.batch = batch
        self._next: int | None = start if type(start) is int else None
        self._buffer: deque[Message] = deque()
        #: offsets that retention dropped before this tail could read them
        self.skipped = 0
        self._outage: Outage | None = None

    @property
    def position(self) -> int | None:
        """The offset of the next message this tail returns (None before it starts)."""
        return self._buffer[0].offset if self._buffer else self._next

    def __aiter__(self) -> Tail:
        return self

    async def __anext__(self) -> Message:
        if self._outage is None:
            self._outage = Outage(f"tailing {self.topic}", self.client.outage_s, log)
        while not self._buffer:
            self._outage.asking()
            try:
                if self._next is None:
                    if self.start == "earliest":
                        self._next = 0
                    else:
                        self._next = (await self.client.describe(self.topic))["next"]
                result = await self.client.request(
                    "read",
                    {"topic": self.topic, "from": self._next, "limit": self.batch},
                    wait_s=self.wait_s,
                )
            except Unavailable as error:  # an outage: on, up to the client's outage_s
                await self._outage.failed(error)
                continue
            self._outage.answered()
            if result["from"] > self._next:  # type: ignore[index]
                self.skipped += result["from"] - self._next  # type: ignore[index]
            for m in result["messages"]:  # type: ignore[index]
                self._buffer.append(
                    Message(self.topic, m["offset"], m["body"], m["key"], m["headers"])
                )
            self._next = result["next"]  # type: ignore[index]
        return self._buffer.popleft()
