"""The in-memory twin of the journal, for the simulator and unit tests.

A `MemoryDisk` is the platter: it outlives the journals opened on it, so a simulated crash
(dropping the journal and everything above it) keeps exactly what was written.
"""

from __future__ import annotations

from .errors import JournalClosed, WrongDataDirectory
from .journal import Batch, Identity, JournalState


class MemoryDisk:
    def __init__(self) -> None:
        self.identity: Identity | None = None
        self.state = JournalState()
        self.writes = 0  # one per synced batch, as a real disk would count syncs


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
        return JournalState(state.promised, dict(state.entries), state.commit, state.log_start)

    def write(self, batch: Batch) -> None:
        state = self._open_disk().state
        if batch.truncate_below is not None and batch.truncate_below > state.log_start:
            below = batch.truncate_below
            state.entries = {s: e for s, e in state.entries.items() if s >= below}
            state.log_start = below
        if batch.promised is not None:
            state.promised = batch.promised
        for slot, entry in batch.entries.items():
            if slot >= state.log_start:
                state.entries[slot] = entry
        if batch.commit is not None:
            state.commit = batch.commit
        self._disk.writes += 1

    def close(self) -> None:
        self._disk = None

    def _open_disk(self) -> MemoryDisk:
        if self._disk is None:
            raise JournalClosed("the journal is closed")
        return self._disk
