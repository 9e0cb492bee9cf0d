"""The journal: what a replica persists, in primitive types (storage knows nothing of paxos).

A `Batch` gathers everything one turn of a node's loop must persist; `Journal.write` makes it
durable atomically with one sync (group commit), or, unsynced, leaves it to the next synced
write (one write-ahead log: a sync covers everything written before it). `Journal.load`
returns what survived.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .keyspace import KeySpace

BallotPair = tuple[int, int]  # (round, node)
Value = tuple[bytes, ...]  # a batch of opaque commands
NO_BALLOT: BallotPair = (0, -1)

#: Bump when the on-disk layout changes; a journal refuses a directory of another format.
FORMAT = 1


@dataclass(frozen=True)
class Identity:
    """Which cluster and node a data directory belongs to."""

    cluster: str
    node: int


@dataclass
class JournalState:
    """Everything a journal holds, as loaded at start."""

    promised: BallotPair = NO_BALLOT
    #: slot -> (ballot, value), for slots at or above `log_start`
    entries: dict[int, tuple[BallotPair, Value]] = field(default_factory=dict)
    commit: int = 0
    log_start: int = 0
    #: the stored snapshot covers every slot below this one (0: there is none)
    snapshot_slot: int = 0
    #: False: this node started with no data and was not told to bootstrap a new cluster;
    #: it may have forgotten promises and votes, so it learns and does not vote yet
    voting: bool = True


class Batch:
    """Writes for one group commit. Later writes to the same item in one batch win."""

    __slots__ = ("commit", "entries", "promised", "truncate_below", "voting")

    def __init__(self) -> None:
        self.promised: BallotPair | None = None
        self.entries: dict[int, tuple[BallotPair, Value]] = {}
        self.commit: int | None = None
        self.truncate_below: int | None = None
        self.voting: bool | None = None

    def promise(self, ballot: BallotPair) -> None:
        self.promised = ballot

    def accept(self, slot: int, ballot: BallotPair, value: Value) -> None:
        self.entries[slot] = (ballot, value)

    def set_commit(self, commit: int) -> None:
        self.commit = commit

    def truncate(self, below: int) -> None:
        """Drop every entry below `below` (a snapshot covers them) and move `log_start`."""
        self.truncate_below = below

    def __bool__(self) -> bool:
        return (
            self.promised is not None
            or bool(self.entries)
            or self.commit is not None
            or self.truncate_below is not None
            or self.voting is not None
        )


@dataclass
class SnapshotView:
    """The stored snapshot and, read as of the same moment, the application's key space."""

    slot: int
    chunks: list[bytes]
    keys: Callable[[], Iterator[tuple[bytes, bytes]]]  # every (key, value), in key order


class Journal(Protocol):
    identity: Identity

    def load(self) -> JournalState:
        """Read and verify everything; raises CorruptRecord rather than return a bad state."""
        ...

    def write(self, batch: Batch, sync: bool = True) -> None:
        """Write the whole batch atomically; with `sync`, durable (with everything written
        before it) before returning. Without, it is in the write-ahead log only: a crash may
        lose it, and then everything written after it too (the log keeps a prefix)."""
        ...

    def save_snapshot(self, slot: int, chunks: Sequence[bytes], truncate_below: int) -> None:
        """Replace the stored snapshot with `chunks` (the application's state after applying
        every slot below `slot`) and drop log entries below `truncate_below` (at most `slot`),
        atomically, with one sync. A snapshot never moves backwards."""
        ...

    def read_snapshot(self) -> tuple[int, list[bytes]]:
        """(slot, chunks) of the stored snapshot, every chunk verified; (0, []) if none."""
        ...

    def snapshot_view(self) -> SnapshotView:
        """The stored snapshot and the key space, both as of one moment (for shipping)."""
        ...

    def keyspace(self) -> KeySpace:
        """The application's key space, in the same store (see `paxq.storage.keyspace`)."""
        ...

    def close(self) -> None: ...


def check_snapshot(current: int, slot: int, truncate_below: int) -> None:
    """Refuse a snapshot that would move backwards or truncate slots it does not cover."""
    if slot < current:
        raise ValueError(f"snapshot at {slot} is older than the stored one at {current}")
    if truncate_below > slot:
        raise ValueError(f"cannot truncate below {truncate_below}: the snapshot ends at {slot}")
