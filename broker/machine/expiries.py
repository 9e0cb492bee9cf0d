"""When leases end: a heap that finds the next deadline at once.

One heap entry per claim or extension (the leases it gives one deadline), not one per lease:
a heap push and pop per message were a sixth of a consuming node's time. Entries of leases
since acked, given back or extended stay until they come up or the heap is compacted, and
are skipped then. Which leases end by a stamp, and in which order, does not depend on how
they were grouped (a replica that rebuilt its heap from a snapshot groups them otherwise) nor
on the heap's shape, so replicas need not compact or strip alike.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable

#: a lease's expiry: (deadline_ms, topic id, subscription, offset, token)
Expiry = tuple[int, int, str, int, int]
#: (deadline_ms, topic id, subscription, sequence, [(offset, token), ...])
_Group = tuple[int, int, str, int, deque[tuple[int, int]]]
#: the heap is rebuilt without its stale entries when it outgrows twice the live ones
COMPACT_MIN = 4096


class Expiries:
    """`live(entry)`: is the entry's lease still the one it was pushed for?"""

    def __init__(self, live: Callable[[Expiry], bool]) -> None:
        self._live = live
        self._heap: list[_Group] = []
        self.count = 0  # entries, stale ones too
        self._sequence = 0  # breaks ties in the heap: groups are never compared
        self._bound = COMPACT_MIN

    def add(self, deadline: int, topic_id: int, name: str, leases: list[tuple[int, int]]) -> None:
        """`leases` [(offset, token), ...] of one subscription end at `deadline`."""
        if not leases:
            return
        self._sequence += 1
        heapq.heappush(self._heap, (deadline, topic_id, name, self._sequence, deque(leases)))
        self.count += len(leases)
        if self.count > self._bound:
            # Amortised O(1): stale entries would otherwise pile up for a lease's length.
            self.rebuild(
                (deadline, topic_id, name, offset, token)
                for deadline, topic_id, name, _, group in self._heap
                for offset, token in group
            )

    def due(self, now: int) -> list[Expiry]:
        """Takes out every entry whose deadline is `now` or before, in one order on every
        replica; stale ones too (the caller skips them)."""
        heap = self._heap
        out: list[Expiry] = []
        while heap and heap[0][0] <= now:
            deadline, topic_id, name, _, group = heapq.heappop(heap)
            self.count -= len(group)
            out.extend((deadline, topic_id, name, offset, token) for offset, token in group)
        out.sort()
        return out

    def next_ms(self) -> int | None:
        """The earliest deadline of a live lease. Drops the stale entries in front, so an
        idle cluster does not stamp for nothing."""
        heap = self._heap
        live = self._live
        while heap:
            deadline, topic_id, name, _, group = heap[0]
            while group and not live((deadline, topic_id, name, *group[0])):
                group.popleft()
                self.count -= 1
            if group:
                return deadline
            heapq.heappop(heap)
        return None

    def rebuild(self, entries: Iterable[Expiry]) -> None:
        """The heap made anew from the live ones of `entries`, grouped."""
        groups: dict[tuple[int, int, str], list[tuple[int, int]]] = {}
        for entry in entries:
            if self._live(entry):
                deadline, topic_id, name, offset, token = entry
                groups.setdefault((deadline, topic_id, name), []).append((offset, token))
        self._heap = []
        self.count = 0
        for (deadline, topic_id, name), leases in groups.items():
            self._sequence += 1
            self._heap.append((deadline, topic_id, name, self._sequence, deque(sorted(leases))))
            self.count += len(leases)
        heapq.heapify(self._heap)
        self._bound = max(COMPACT_MIN, 2 * self.count)
