"""The interface a replicated machine offers the node, and the minimal machine behind it.

The node applies every chosen slot, in order, through `apply`; every `snapshot_every_slots` it
asks for a `snapshot` (a list of byte chunks it stores and may ship to a lagging peer), and a
node that starts from a stored snapshot, or receives one, hands it to `restore`. The queue
machine of `paxq.broker.machine` is the production one.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from typing import Protocol

import cbor2

from paxq.storage import Journal, SnapshotView

from ..machine import SYSTEM_SESSION, QueueMachine, SnapshotInvalid
from ..paxos import Value

#: Client commands start with a session id and a sequence number (8 bytes each), which makes
#: every command unique; the machine sees only what follows.
COMMAND_HEADER_BYTES = 16


class Machine(Protocol):
    #: the next slot to apply: every slot below it is reflected in the state
    slots: int

    def flush(self) -> None:
        """Called after each round of applies: write what the machine keeps on disk."""
        ...

    def due_ms(self) -> int | None:
        """The earliest leader stamp at which a time entry would change the state."""
        ...

    def snapshot_saved(self) -> None:
        """The last `snapshot()` is stored durably: what it no longer needs may go."""
        ...

    def absorb(self, chunk: bytes) -> bool:
        """A received snapshot chunk as it arrives: True if it must be kept for `restore`
        (False: the machine has stored what it holds already)."""
        ...

    def shipped(self, view: SnapshotView, chunk_bytes: int) -> tuple[int, Iterator[bytes]]:
        """(how many, the chunks) a lagging peer receives for the stored snapshot `view`."""
        ...

    def apply(self, slot: int, value: Value, answered: bool = True) -> list[object]:
        """Apply one chosen slot; return one result per command, in order. `answered`
        False: no client hears these results (no waiter on this node), so they may
        leave out what only an answer needs, such as payloads read back; the state they
        leave must be the same."""
        ...

    def snapshot(self, chunk_bytes: int) -> list[bytes]:
        """The whole state as chunks of about `chunk_bytes` each (never empty)."""
        ...

    def restore(self, chunks: list[bytes]) -> None:
        """Replace the state with a snapshot's; raises SnapshotInvalid on a bad one."""
        ...


class LogMachine:
    """The minimal replicated machine until the queue machine arrives: an append-only log.

    apply() returns, for each command, the result its client gets: the entry's offset. The
    last `retain` entries stay readable (a bounded ring: memory does not grow with the log).
    """

    FORMAT = 1

    def __init__(self, retain: int = 100_000, retain_bytes: int = 64 << 20) -> None:
        self.length = 0
        self.slots = 0
        self._recent: deque[bytes] = deque(maxlen=retain)
        self._recent_bytes = 0
        self._retain_bytes = retain_bytes

    def apply(self, slot: int, value: Value, answered: bool = True) -> list[object]:
        self.slots = slot + 1
        results: list[object] = []
        for command in value:
            if command.startswith(SYSTEM_SESSION):  # the leader's time stamps
                results.append(None)
                continue
            results.append(self.length)
            self.length += 1
            self._keep(command[COMMAND_HEADER_BYTES:])
        return results

    def _keep(self, entry: bytes) -> None:
        recent = self._recent
        if len(recent) == recent.maxlen:
            self._recent_bytes -= len(recent[0])  # the append below evicts it
        recent.append(entry)
        self._recent_bytes += len(entry)
        while self._recent_bytes > self._retain_bytes and recent:
            self._recent_bytes -= len(recent.popleft())

    def read(self, offset: int, limit: int) -> tuple[int, list[bytes]]:
        """(first offset returned, entries): from `offset` on, at most `limit`. Entries older
        than the ring are gone: the read starts at the oldest one kept."""
        first_kept = self.length - len(self._recent)
        first = max(offset, first_kept)
        start = first - first_kept
        return first, list(itertools.islice(self._recent, start, start + max(0, limit)))

    # ------------------------------------------------------------------------ snapshots

    def flush(self) -> None:
        pass

    def due_ms(self) -> int | None:
        return None

    def snapshot_saved(self) -> None:
        pass

    def absorb(self, chunk: bytes) -> bool:
        return True

    @staticmethod
    def shipped(view: SnapshotView, chunk_bytes: int) -> tuple[int, Iterator[bytes]]:
        return len(view.chunks), iter(view.chunks)

    def snapshot(self, chunk_bytes: int) -> list[bytes]:
        """[format, slots, length, ring entries] first, then the ring in chunks."""
        chunks = [cbor2.dumps([self.FORMAT, self.slots, self.length, len(self._recent)])]
        part: list[bytes] = []
        size = 0
        for entry in self._recent:
            if part and size + len(entry) > chunk_bytes:
                chunks.append(cbor2.dumps(part))
                part, size = [], 0
            part.append(entry)
            size += len(entry)
        if part:
            chunks.append(cbor2.dumps(part))
        return chunks

    def restore(self, chunks: list[bytes]) -> None:
        try:
            head = cbor2.loads(chunks[0])
            entries = [entry for chunk in chunks[1:] for entry in cbor2.loads(chunk)]
        except Exception as error:
            raise SnapshotInvalid(f"undecodable log snapshot: {error}") from error
        if (
            not isinstance(head, list)
            or len(head) != 4
            or head[0] != self.FORMAT
            or not all(type(n) is int and n >= 0 for n in head[1:])
            or head[3] != len(entries)
            or head[3] > head[2]
            or not all(type(entry) is bytes for entry in entries)
        ):
            raise SnapshotInvalid(f"not a log snapshot: {head!r}")
        self.slots, self.length = head[1], head[2]
        self._recent.clear()
        self._recent_bytes = 0
        for entry in entries:
            self._keep(entry)


def queue_machine(journal: Journal) -> Machine:
    """The production machine, its payloads in the journal's store."""
    return QueueMachine(journal.keyspace())


def log_machine(journal: Journal) -> Machine:
    """The minimal log machine (tests of the runtime that need no queues)."""
    return LogMachine()
