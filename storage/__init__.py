"""The journal a replica persists through: RocksDB on disk, and an in-memory twin.

Storage knows nothing of paxos: it stores ballots as (round, node) pairs and values as tuples
of bytes. `paxq.broker.persist` maps the core's records onto a `Batch`.
"""

from .errors import (
    CorruptRecord,
    JournalClosed,
    StorageError,
    StorageUnavailable,
    WrongDataDirectory,
)
from .journal import FORMAT, NO_BALLOT, Batch, Identity, Journal, JournalState, SnapshotView
from .keyspace import KeySpace, MemoryKeySpace
from .memory import MemoryDisk, MemoryJournal
from .rocks import RocksJournal, RocksKeySpace

__all__ = [
    "FORMAT",
    "NO_BALLOT",
    "Batch",
    "CorruptRecord",
    "Identity",
    "Journal",
    "JournalClosed",
    "JournalState",
    "KeySpace",
    "MemoryDisk",
    "MemoryJournal",
    "MemoryKeySpace",
    "RocksJournal",
    "RocksKeySpace",
    "SnapshotView",
    "StorageError",
    "StorageUnavailable",
    "WrongDataDirectory",
]
