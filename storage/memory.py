"""The in-memory twin of the journal, for the simulator and unit tests.

A `MemoryDisk` is the platter: it outlives the journals opened on it, so a simulated crash
(dropping the journal and everything above it) keeps exactly what was written.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import JournalClosed, WrongDataDirectory
from .journal import Batch, Identity, JournalState, SnapshotView, check_snapshot
from .keyspace import MemoryKeySpace


class MemoryDisk:
    def __init__(self) -> None:
        self.identity: Identity | None = None
        self.state = JournalState()
        self.writes = 0  # one per synced batch, as a real disk would count syncs
        self.snapshot: list[bytes] = []
        self.keys: dict[bytes, bytes] = {}  # the application's key space


class MemoryJournal:
    def __init__(self, disk: MemoryDisk, identity: Identity) -> None:
        if disk.identity is None:
            disk.identity = identity
        elif disk.identity != identity:
            raise WrongDataDirectory(f"this disk belongs to {disk.identity}, not to {identity}")
        self.identity = identity
        self._disk: MemoryDisk | None = disk

    def load(self) -> JournalState:
        state = self._open_disk().state
        return JournalState(
            state.promised, dict(state.entries), state.commit, state.log_start, state.snapshot_slot
        )

    def write(self, batch: Batch) -> None:
        state = self._open_disk().state
        if batch.truncate_below is not None:
            self._truncate(state, batch.truncate_below)
        if batch.promised is not None:
            state.promised = batch.promised
        for slot, entry in batch.entries.items():
            if slot >= state.log_start:
                state.entries[slot] = entry
        if batch.commit is not None:
            state.commit = batch.commit
        self._disk.writes += 1

    def save_snapshot(self, slot: int, chunks: Sequence[bytes], truncate_below: int) -> None:
        disk = self._open_disk()
        check_snapshot(disk.state.snapshot_slot, slot, truncate_below)
        disk.snapshot = [bytes(chunk) for chunk in chunks]
        disk.state.snapshot_slot = slot
        self._truncate(disk.state, truncate_below)
        disk.writes += 1

    def read_snapshot(self) -> tuple[int, list[bytes]]:
        disk = self._open_disk()
        return disk.state.snapshot_slot, list(disk.snapshot)

    @staticmethod
    def _truncate(state: JournalState, below: int) -> None:
        if below > state.log_start:
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
        return MemoryKeySpace(self._open_disk().keys)

    def close(self) -> None:
        self._disk = None

    def _open_disk(self) -> MemoryDisk:
        if self._disk is None:
            raise JournalClosed("the journal is closed")
        return self._disk
