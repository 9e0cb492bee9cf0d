"""How long-lived readers (`consume`, `tail`, `WorkerPool`) wait through an outage: one rule
for all of them, counted from the first request that went unanswered, and said as it goes."""

from __future__ import annotations

import logging

import anyio

from .errors import Unavailable

#: a reader says it is still waiting at most this often
_SAY_EVERY_S = 10.0
#: between a failed request (which retried for its whole deadline) and the next
_PAUSE_S = 1.0


class Outage:
    """Call `asking()` before each request, `answered()` after each answer and
    `await failed(error)` after each Unavailable: it returns (after a pause) while the reader
    may go on waiting, and raises Unavailable, saying for how long and why, once `outage_s`
    (None: forever) have passed since the first request that went unanswered. An error that
    is not retriable (Unreachable: no node ever answered this client) is raised at once."""

    def __init__(self, what: str, outage_s: float | None, log: logging.Logger) -> None:
        self.what = what  # (outage_s as Client checked it)
        self.outage_s = None if outage_s == float("inf") else outage_s
        self.log = log
        self._asked = anyio.current_time()
        self._down_since: float | None = None  # when the first unanswered request went
        self._said: float | None = None

    def asking(self) -> None:
        self._asked = anyio.current_time()

    def answered(self) -> None:
        if self._down_since is not None:
            down = anyio.current_time() - self._down_since
            self.log.warning("%s: the cluster answers again after %.0fs", self.what, down)
        self._down_since = self._said = None

    async def failed(self, error: Unavailable) -> None:
        if not error.retriable:
            raise error
        now = anyio.current_time()
        if self._down_since is None:
            self._down_since = self._asked
        down = now - self._down_since
        limit = self.outage_s
        if limit is not None and down >= limit:
            raise Unavailable(
                f"{self.what}: no answer from the cluster for {down:.0f}s, the most "
                f"outage_s={limit:g} allows (last: {error.message})",
                error.detail,
            ) from error
        if self._said is None or now - self._said >= _SAY_EVERY_S:
            until = "for as long as it takes" if limit is None else f"until {limit:g}s"
            self.log.warning(
                "%s: no answer from the cluster for %.0fs; trying %s (last: %s)",
                self.what,
                down,
                until,
                error.message,
            )
            self._said = now
        pause = _PAUSE_S if limit is None else min(_PAUSE_S, max(0.0, limit - down))
        await anyio.sleep(pause)
