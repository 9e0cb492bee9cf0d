"""A subscription's replicated state: how far it has read its topic, what is leased out,
what waits for (re)delivery, what is done.

Offsets below `floor` are done (acknowledged, dead-lettered, purged or dropped by retention).
Between `floor` and `cursor` each offset is in exactly one place: `done`, `leases`,
`waiting` (a heap by the stamp it becomes deliverable at) or, with per-key ordering,
`blocked` behind an earlier message of its key. Offsets from `cursor` on were never handed out.
"""

from __future__ import annotations

import heapq
from collections import deque

from .topics import NO_KEY, Topic

#: a lease: [token, deadline_ms, consumer]
Lease = list


class Subscription:
    __slots__ = (
        "acked",
        "backoff_base_ms",
        "backoff_max_ms",
        "blocked",
        "counts",
        "created_ms",
        "cursor",
        "dead_letter",
        "dead_letter_dropped",
        "dead_lettered",
        "done",
        "done_bytes",
        "floor",
        "held",
        "key_ordered",
        "leases",
        "max_deliveries",
        "name",
        "topic",
        "waiting",
    )

    def __init__(
        self,
        name: str,
        topic: Topic,
        start: int,
        created_ms: int,
        max_deliveries: int,
        dead_letter: str | None,
        key_ordered: bool,
        backoff_base_ms: int,
        backoff_max_ms: int,
    ) -> None:
        self.name = name
        self.topic = topic
        self.created_ms = created_ms
        self.cursor = self.floor = start
        #: offset -> stored size, for offsets done above the floor (a queue still holds them
        #: in its arrays, but not against its limits)
        self.done: dict[int, int] = {}
        self.done_bytes = 0
        self.leases: dict[int, Lease] = {}
        self.counts: dict[int, int] = {}  # deliveries so far, for offsets not done
        self.waiting: list[tuple[int, int]] = []  # heap of (deliverable at, offset)
        self.key_ordered = key_ordered
        self.held: dict[int, int] = {}  # key hash -> the offset that has the key out
        self.blocked: dict[int, deque[int]] = {}  # key hash -> offsets waiting behind it
        self.max_deliveries = max_deliveries  # 0: no limit
        self.dead_letter = dead_letter  # None: dropped after the limit, counted
        self.backoff_base_ms = backoff_base_ms
        self.backoff_max_ms = backoff_max_ms
        self.dead_lettered = 0
        #: dead letters that had nowhere to go (their queue full, or no room for a new one)
        self.dead_letter_dropped = 0
        self.acked = 0

    # --------------------------------------------------------------------------- reading

    def _live(self, offset: int) -> bool:
        return (
            offset >= self.floor
            and offset >= self.topic.first
            and offset not in self.done
            and offset not in self.leases
        )

    def claimable(self, now_ms: int, limit: int, scan_max: int, bytes_max: int) -> list[int]:
        """Offsets to deliver now, at most `limit` and (past the first) at most `bytes_max`
        of stored payload: due redeliveries first, then new messages from the cursor. Moves
        the cursor past what it hands out or sets aside (delayed messages, and messages whose
        key is out)."""
        out: list[int] = []
        waiting = self.waiting
        topic = self.topic
        size = 0
        while waiting and len(out) < limit and waiting[0][0] <= now_ms:
            offset = waiting[0][1]
            if self._live(offset):
                size += topic.size_of(offset)
                if out and size > bytes_max:
                    return out
                out.append(offset)
            heapq.heappop(waiting)
        if self.cursor < topic.first:
            self.cursor = topic.first
        end = min(topic.next, self.cursor + scan_max)
        delayed = topic.delayed
        key_ordered = self.key_ordered
        held = self.held
        while len(out) < limit and self.cursor < end:
            offset = self.cursor
            key = topic.key_of(offset) if key_ordered else NO_KEY
            if key != NO_KEY and key in held:
                self.blocked.setdefault(key, deque()).append(offset)
                self.cursor += 1
                continue
            at = delayed.get(offset, 0) if delayed else 0
            if at <= now_ms:
                size += topic.size_of(offset)
                if out and size > bytes_max:
                    break  # left for the next claim, cursor and all
                out.append(offset)
            else:
                heapq.heappush(waiting, (at, offset))
            if key != NO_KEY:
                held[key] = offset  # a delayed message holds its key too
            self.cursor += 1
        return out

    def lease_many(
        self, offsets: list[int], tokens: list[int], deadline_ms: int, consumer: str
    ) -> list[int]:
        """Lease each offset out under its token; returns their delivery counts."""
        counts = self.counts
        leases = self.leases
        out = []
        for offset, token in zip(offsets, tokens, strict=True):
            count = counts.get(offset, 0) + 1
            counts[offset] = count
            out.append(count)
            leases[offset] = [token, deadline_ms, consumer]
        return out

    def lost(self, leases: list[tuple[int, int]], now_ms: int) -> list[int]:
        """The offsets among `leases` whose token is not the current, unexpired one."""
        out = []
        for offset, token in leases:
            lease = self.leases.get(offset)
            if lease is None or lease[0] != token or lease[1] <= now_ms:
                out.append(offset)
        return out

    # -------------------------------------------------------------------------- changing

    def finish(self, offsets: list[int], now_ms: int) -> None:
        """The offsets are done (acked, dead-lettered or purged): never delivered again."""
        leases, counts, done, topic = self.leases, self.counts, self.done, self.topic
        floor = self.floor
        for offset in offsets:
            leases.pop(offset, None)
            counts.pop(offset, None)
            if offset < floor or offset in done:
                continue
            size = topic.size_of(offset)
            done[offset] = size
            self.done_bytes += size
            if self.key_ordered and offset >= topic.first:
                self._release(topic.key_of(offset), offset, now_ms)
        self._advance_floor()

    def give_back(self, offset: int, available_ms: int) -> bool:
        """A lease ended without an ack (nack or expiry). False if the message has used up
        its deliveries (the caller dead-letters it); otherwise it waits for redelivery."""
        self.leases.pop(offset, None)
        if self.max_deliveries and self.counts.get(offset, 0) >= self.max_deliveries:
            return False
        heapq.heappush(self.waiting, (available_ms, offset))
        return True

    def release(self, offset: int, now_ms: int) -> None:
        """A lease handed back unprocessed: available at once, and this delivery is not
        counted (toward max_deliveries, the backoff or the next delivery's number)."""
        self.leases.pop(offset, None)
        count = self.counts.get(offset, 0) - 1
        if count > 0:
            self.counts[offset] = count
        else:
            self.counts.pop(offset, None)
        heapq.heappush(self.waiting, (now_ms, offset))

    def backoff_ms(self, offset: int) -> int:
        """Exponential by delivery count: base, 2 x base, 4 x base ... up to the max."""
        count = max(1, self.counts.get(offset, 1))
        return min(self.backoff_max_ms, self.backoff_base_ms << min(count - 1, 40))

    def _release(self, key: int, offset: int, now_ms: int) -> None:
        if key == NO_KEY or self.held.get(key) != offset:
            return
        queue = self.blocked.get(key)
        topic = self.topic
        while queue:
            following = queue.popleft()
            if following >= topic.first and following not in self.done:
                self.held[key] = following
                at = max(now_ms, topic.delayed.get(following, 0))
                heapq.heappush(self.waiting, (at, following))
                if not queue:
                    del self.blocked[key]
                return
        self.blocked.pop(key, None)
        del self.held[key]

    def _advance_floor(self) -> None:
        done = self.done
        floor = self.floor
        while floor < self.cursor and floor in done:
            self.done_bytes -= done.pop(floor)
            floor += 1
        self.floor = floor

    def purge(self, now_ms: int) -> int:
        """Everything published so far is done. Returns how many messages that dropped."""
        topic = self.topic
        dropped = self.depth
        self.floor = self.cursor = topic.next
        self.done.clear()
        self.done_bytes = 0
        self.leases.clear()
        self.counts.clear()
        self.waiting.clear()
        self.held.clear()
        self.blocked.clear()
        return dropped

    def skip_below(self, first: int, now_ms: int) -> None:
        """Retention dropped the topic's offsets below `first`: forget them here. Costs
        O(offsets dropped) or O(state), whichever is less: a topic at its limit drops a few
        offsets on every publish."""
        old = self.floor
        if old >= first:
            return
        self.floor = first
        if self.cursor < first:
            self.cursor = first
        # done, leases and counts only hold offsets in [old floor, cursor)
        done = self.done
        for table in (done, self.leases, self.counts):
            if not table:
                continue
            below = (
                [o for o in range(old, first) if o in table]
                if first - old < len(table)
                else [o for o in table if o < first]
            )
            for offset in below:
                value = table.pop(offset)
                if table is done:
                    self.done_bytes -= value
        if self.held:
            for key, offset in [(k, o) for k, o in self.held.items() if o < first]:
                self._release(key, offset, now_ms)
        self._advance_floor()

    # ----------------------------------------------------------------------------- stats

    @property
    def depth(self) -> int:
        """Messages not yet done: unread, leased, waiting or blocked."""
        return max(0, self.topic.next - max(self.floor, self.topic.first) - len(self.done))

    def stats(self, now_ms: int) -> dict:
        topic = self.topic
        start = max(self.floor, topic.first)
        delayed = sum(1 for at, o in self.waiting if at > now_ms and self._live(o))
        delayed += sum(1 for o, at in topic.delayed.items() if o >= self.cursor and at > now_ms)
        depth = self.depth
        oldest = now_ms - topic.time_of(start) if depth and start < topic.next else 0
        return {
            "depth": depth,
            "in_flight": len(self.leases),
            "delayed": delayed,
            "dead_lettered": self.dead_lettered,
            "dead_letter_dropped": self.dead_letter_dropped,
            "acked": self.acked,
            "oldest_unacked_age_ms": max(0, oldest),
            "cursor": self.cursor,
        }
