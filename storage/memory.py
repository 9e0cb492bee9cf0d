"""The in-memory twin of the journal, for the simulator and unit tests.

A `MemoryDisk` is the platter: it outlives the journals opened on it, so a simulated crash
(dropping the journal and everything above it) keeps exactly what reached the disk.

It models one write-ahead log, as RocksDB has: every journal write (a batch, a snapshot) is
visible at once and takes the next position in the log; a sync makes every write up to a
position durable. Key-space writes skip the log, as they do in RocksDB: they become durable
when a snapshot is stored (the journal flushes the key space first). `crash` keeps the
durable writes and a prefix of the others, of each kind, chosen by the caller (the
simulator draws them), and undoes the rest, so code that treats an unsynced write as
durable is caught. A damaged record (`damage`) fails its checksum
at the next `load`, as a bit flip on a real disk would.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import CorruptRecord, JournalClosed, WrongDataDirectory
from .journal import Batch, Identity, JournalState, SnapshotView, check_snapshot
from .keyspace import MemoryKeySpace

#: one undone write: a list of (what, *old state) to put back, in reverse
_Undo = list[tuple]


class MemoryDisk:
    def __init__(self) -> None:
        self.identity: Identity | None = None
        self.state = JournalState()
        self.writes = 0  # one per synced write, as a real disk would count syncs
        self.snapshot: list[bytes] = []
        self.keys: dict[bytes, bytes] = {}  # the application's key space
        #: writes after the durable point, oldest first, each with what undoes it
        self.unsynced: list[_Undo] = []
        #: key-space writes since the last stored snapshot, oldest first, likewise
        self.unflushed: list[_Undo] = []
        self.synced_at = 0  # the log position up to which every write is durable
        #: slots whose stored entry fails its checksum
        self.damaged: set[int] = set()

    @property
    def position(self) -> int:
        """The log position of the last write."""
        return self.synced_at + len(self.unsynced)

    def log(self, undo: _Undo) -> int:
        self.unsynced.append(undo)
        return self.position

    def log_key(self, undo: _Undo) -> None:
        self.unflushed.append(undo)

    def flush_keys(self) -> None:
        self.unflushed = []

    def sync(self, position: int | None = None) -> None:
        """Every write up to `position` (all of them if None) is durable."""
        end = self.position if position is None else min(position, self.position)
        if end > self.synced_at:
            del self.unsynced[: end - self.synced_at]
            self.synced_at = end
            self.writes += 1

    def crash(self, keep: int, keep_keys: int = 0) -> int:
        """The process dies: of the unsynced journal writes the first `keep` survive, of
        the unflushed key-space writes the first `keep_keys`; the rest are undone. Returns
        how many were lost."""
        lost = self.unsynced[keep:]
        lost_keys = self.unflushed[keep_keys:]
        for undo in [*reversed(lost), *reversed(lost_keys)]:
            for item in reversed(undo):
                self._put_back(item)
        self.unsynced = []
        self.unflushed = []
        self.synced_at += keep
        return len(lost) + len(lost_keys)

    def _put_back(self, item: tuple) -> None:
        what = item[0]
        state = self.state
        if what == "key" or what == "entry":
            _, key, old = item
            place = self.keys if what == "key" else state.entries
            if old is None:
                place.pop(key, None)  # it was not there before the write
            else:
                place[key] = old
        elif what == "keys":
            self.keys.update(item[1])
        elif what == "commit":
            state.commit = item[1]
        elif what == "promised":
            state.promised = item[1]
        elif what == "voting":
            state.voting = item[1]
        elif what == "start":
            _, log_start, removed = item
            state.log_start = log_start
            state.entries.update(removed)
        elif what == "snapshot":
            _, slot, chunks = item
            state.snapshot_slot = slot
            self.snapshot = chunks
        else:
            raise ValueError(f"unknown undo record {what!r}")

    def damage(self, slot: int) -> None:
        """The stored entry at `slot` no longer matches its checksum."""
        self.damaged.add(slot)


class MemoryJournal:
    def __init__(self, disk: MemoryDisk, identity: Identity, bootstrap: bool = False) -> None:
        """On a blank disk, `bootstrap` says whether this is the first start of a new
        cluster (the node votes at once) or a node that lost its data (it learns first)."""
        if disk.identity is None:
            disk.identity = identity
            disk.state.voting = bootstrap
        elif disk.identity != identity:
            raise WrongDataDirectory(f"this disk belongs to {disk.identity}, not to {identity}")
        self.identity = identity
        self._disk: MemoryDisk | None = disk

    def load(self) -> JournalState:
        disk = self._open_disk()
        state = disk.state
        for slot in sorted(disk.damaged):
            if slot in state.entries:
                raise CorruptRecord(
                    f"memory:{self.identity}", b"entry %d" % slot, "checksum mismatch"
                )
        return JournalState(
            state.promised,
            dict(state.entries),
            state.commit,
            state.log_start,
            state.snapshot_slot,
            state.voting,
        )

    def write(self, batch: Batch, sync: bool = True) -> None:
        position = self.append(batch)
        if sync:
            self._open_disk().sync(position)

    def append(self, batch: Batch) -> int:
        """Write `batch` without syncing; returns its position in the log (for `sync`)."""
        disk = self._open_disk()
        state = disk.state
        undo: _Undo = []
        if batch.truncate_below is not None:
            self._truncate(state, batch.truncate_below, undo)
        if batch.promised is not None:
            undo.append(("promised", state.promised))
            state.promised = batch.promised
        entries = state.entries
        for slot, entry in batch.entries.items():
            if slot >= state.log_start:
                undo.append(("entry", slot, entries.get(slot)))
                entries[slot] = entry
                disk.damaged.discard(slot)
        if batch.commit is not None:
            undo.append(("commit", state.commit))
            state.commit = batch.commit
        if batch.voting is not None:
            undo.append(("voting", state.voting))
            state.voting = batch.voting
        return disk.log(undo)

    def save_snapshot(self, slot: int, chunks: Sequence[bytes], truncate_below: int) -> None:
        self._open_disk().sync(self.append_snapshot(slot, chunks, truncate_below))

    def append_snapshot(self, slot: int, chunks: Sequence[bytes], truncate_below: int) -> int:
        """`save_snapshot` without the sync; returns its position in the log."""
        disk = self._open_disk()
        check_snapshot(disk.state.snapshot_slot, slot, truncate_below)
        disk.flush_keys()  # as the real journal does before it stores a snapshot
        undo: _Undo = [("snapshot", disk.state.snapshot_slot, disk.snapshot)]
        disk.snapshot = [bytes(chunk) for chunk in chunks]
        disk.state.snapshot_slot = slot
        self._truncate(disk.state, truncate_below, undo)
        return disk.log(undo)

    def read_snapshot(self) -> tuple[int, list[bytes]]:
        disk = self._open_disk()
        return disk.state.snapshot_slot, list(disk.snapshot)

    @staticmethod
    def _truncate(state: JournalState, below: int, undo: _Undo) -> None:
        if below > state.log_start:
            removed = {s: e for s, e in state.entries.items() if s < below}
            undo.append(("start", state.log_start, removed))
            state.entries = {s: e for s, e in state.entries.items() if s >= below}
            state.log_start = below

    def snapshot_view(self) -> SnapshotView:
        disk = self._open_disk()
        frozen = dict(disk.keys)
        return SnapshotView(
            disk.state.snapshot_slot,
            list(disk.snapshot),
            lambda: MemoryKeySpace(frozen).items(b"", b"\xff" * 16),
        )

    def keyspace(self) -> MemoryKeySpace:
        disk = self._open_disk()
        return MemoryKeySpace(disk.keys, disk.log_key)

    def close(self) -> None:
        self._disk = None

    def _open_disk(self) -> MemoryDisk:
        if self._disk is None:
            raise JournalClosed("the journal is closed")
        return self._disk
