"""The journal on RocksDB (rocksdict), every write synced.

A synced write is an unsynced RocksDB write followed by an fdatasync of the write-ahead log
files that may hold unsynced writes (and of the directory once a new one appears), done here
rather than by `WriteOptions.sync`: rocksdict holds the GIL through a write, so a sync
inside it would stop every thread of the node, its heartbeats too, for as long as the disk
takes to flush, and `os.fdatasync` lets go of it. The two are the same on disk: RocksDB
hands every write to the OS before it returns (its `manual_wal_flush` is off, and rocksdict
offers no way to turn it on), so what the sync must make durable is in those files already.

Layout (raw byte keys):

    meta            identity and format
    promise         [round, node]
    commit          commit point
    start           first slot still in the log
    voting          false while a node that started without data may not vote yet
    e + slot(8 BE)  [round, node, [command, ...]]
    snapshot        [slot, chunk count, generation]
    k + index(4 BE) one chunk of a generation-0 snapshot (bytes); j + index: generation 1

and in a column family of its own, `keys`, whose writes skip the write-ahead log (see
`paxq.storage.keyspace`):

    P + key         the application's key space (`keyspace()`): message payloads

Payloads live long and arrive in key order; log entries, which carry them too, go within a
few thousand slots. Kept apart, each flushed table of payloads lies above the ones before it
and moves down the levels without being rewritten, and compactions of the log no longer
drag the payloads along: in one column family, compactions took a fifth of a node's CPU
under a steady load of small messages. (A journal from before, with payloads in the default
column family, has them moved when it is opened.)

Reads of a stored snapshot with its payloads (`snapshot_view`) go through RocksDB iterators
made at once: an iterator sees the database as of its making. (rocksdict's `Snapshot`
iterates the live database, not the snapshot.)

Every value is `crc32(key + payload)` (4 bytes, big-endian) followed by the CBOR payload, so a
flipped bit, a torn value or a record copied under another key fails on read. `load()` verifies
every record and refuses (CorruptRecord) rather than hand back a state it cannot trust.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import cbor2
from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from .errors import CorruptRecord, JournalClosed, StorageUnavailable, WrongDataDirectory
from .journal import (
    FORMAT,
    NO_BALLOT,
    Batch,
    Identity,
    JournalState,
    SnapshotView,
    check_snapshot,
)
from .keyspace import seal, unseal

_META, _PROMISE, _COMMIT, _START = b"meta", b"promise", b"commit", b"start"
_VOTING = b"voting"
_ENTRY = b"e"
_SNAPSHOT = b"snapshot"
#: a snapshot's chunks, by generation: the next snapshot goes under the other prefix, piece
#: by piece, and replaces the last one only with its final (synced) write
_CHUNKS = (b"k", b"j")
_APP = b"P"
_KEYS = "keys"  # the key space's column family
_SUPER_VERSION = "rocksdb.current-super-version-number"
#: a move of payloads out of the default column family goes in writes of this many
_MOVE_KEYS = 10_000
_INDEX = struct.Struct(">I")
_SLOT = struct.Struct(">Q")
_CRC = struct.Struct(">I")


def _entry_key(slot: int) -> bytes:
    return _ENTRY + _SLOT.pack(slot)


def _chunk_key(generation: int, index: int) -> bytes:
    return _CHUNKS[generation] + _INDEX.pack(index)


def _generation_range(generation: int) -> tuple[bytes, bytes]:
    prefix = _CHUNKS[generation]
    return prefix, bytes([prefix[0] + 1])


def _key_at(iterator) -> bytes | None:
    """The iterator's key; None past the end. A failed read also leaves it not valid: that
    raises here rather than pass for the end."""
    if iterator.valid():
        return iterator.key()
    iterator.status()
    return None


def _log_number(name: str) -> int | None:
    """The number of a write-ahead log file ("000123.log": RocksDB counts them up); None
    for another name."""
    stem = name.removesuffix(".log")
    return int(stem) if stem.isdigit() and name.endswith(".log") else None


def _seal(key: bytes, payload: object) -> bytes:
    data = cbor2.dumps(payload)
    return _CRC.pack(zlib.crc32(data, zlib.crc32(key))) + data


class RocksJournal:
    """Open with `RocksJournal.open(path, identity)`; one process per directory."""

    def __init__(self, db: Rdict, path: Path, identity: Identity) -> None:
        self._db: Rdict | None = db
        #: the key space's column family, as an Rdict (reads) and a handle (batches); let go
        #: before the database closes, or its lock outlives the close
        self._keys: Rdict | None = db.get_column_family(_KEYS)
        self._keys_handle: object | None = db.get_column_family_handle(_KEYS)
        self.path = path
        self.identity = identity
        self._unsynced = WriteOptions()  # into the write-ahead log; `_sync_logs` makes it durable
        self._logs: dict[str, int] = {}  # live write-ahead log file -> a descriptor of it
        self._sealed_logs: set[str] = set()  # older logs synced since RocksDB left them
        #: `_super_versions()` as `_logs` was last listed
        self._listed_at: tuple[int | None, int | None] | None = None
        # A close from the loop's thread (a failed key-space flush) waits for a write and its
        # syncs in the writer thread: a descriptor closed under them could be reused by then.
        self._writing = threading.RLock()
        #: the failure that closed the journal, told to whoever finds it closed later: the
        #: error of the task that met it may not be the one that reaches the top
        self._failure: str | None = None
        self._log_start = 0
        self._snapshot: tuple[int, int, int] = (0, 0, 0)  # slot, chunk count, generation

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], identity: Identity, bootstrap: bool = False
    ) -> RocksJournal:
        """Open (or create) the journal at `path`. Creating one, `bootstrap` says whether
        this is the first start of a new cluster (the node votes at once) or a node whose
        data is gone (it must learn before it votes); on an existing journal it is moot."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise WrongDataDirectory(f"{path} is not a directory")
        fresh = not path.exists() or not any(path.iterdir())
        if not fresh and not (path / "CURRENT").exists():
            raise WrongDataDirectory(f"{path} is not empty and holds no paxq journal")
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_paranoid_checks(True)
        options.set_wal_dir(str(path))  # where `_sync_logs` looks for the write-ahead logs
        # Memtables bound the store's memory: at most 3 x 16 MiB (RocksDB's default is
        # 2 x 64 MiB), so a node holding a million queued payloads stays small.
        # The same bound over both column families: RocksDB flushes the largest memtable
        # when together they hold more.
        options.set_write_buffer_size(16 << 20)
        options.set_max_write_buffer_number(3)
        options.set_db_write_buffer_size(48 << 20)
        options.create_missing_column_families(True)
        try:
            db = Rdict(str(path), options, column_families={_KEYS: options})
        except Exception as error:  # rocksdict raises plain exceptions for I/O failures
            raise StorageUnavailable(f"cannot open the journal at {path}: {error}") from error
        journal = cls(db, path, identity)
        try:
            journal._check_identity(fresh, bootstrap)
            journal._move_payloads()
            # Writes before any load() must still know where the log and snapshot stand.
            journal._log_start = journal._read_int(_START)
            journal._snapshot = journal._snapshot_meta()
        except BaseException:
            db.close()
            raise
        return journal

    def _check_identity(self, fresh: bool, bootstrap: bool) -> None:
        stored = self._read(_META)
        if stored is None:
            if not fresh:
                raise WrongDataDirectory(f"{self.path} holds a journal without identity")
            meta = {"format": FORMAT, "cluster": self.identity.cluster, "node": self.identity.node}
            batch = WriteBatch(raw_mode=True)
            batch.put(_META, _seal(_META, meta))
            batch.put(_VOTING, _seal(_VOTING, bootstrap))
            self._commit_batch(batch)
            return
        if not isinstance(stored, dict) or stored.get("format") != FORMAT:
            raise WrongDataDirectory(f"{self.path}: unknown journal format {stored!r}")
        found = Identity(stored.get("cluster"), stored.get("node"))
        if found != self.identity:
            raise WrongDataDirectory(
                f"{self.path} belongs to cluster {found.cluster!r} node {found.node}, "
                f"not to cluster {self.identity.cluster!r} node {self.identity.node}"
            )

    def _move_payloads(self) -> None:
        """Payloads a journal of before kept in the default column family go to their own,
        in writes of `_MOVE_KEYS`, each moving and deleting the same keys: a crash midway
        leaves every payload in one place or the other, and the next open goes on."""
        db = self._open_db()
        while True:
            moved = []
            for full, raw in db.items(from_key=_APP):
                if not full.startswith(_APP) or len(moved) == _MOVE_KEYS:
                    break
                moved.append((full, raw))
            if not moved:
                return
            out = WriteBatch(raw_mode=True)
            for full, raw in moved:
                out.put(full, raw, self._keys_handle)
            out.delete_range(moved[0][0], moved[-1][0] + b"\x00")
            self._commit_batch(out)

    # ------------------------------------------------------------------------------ read

    def load(self) -> JournalState:
        db = self._open_db()
        state = JournalState()
        promised = self._read(_PROMISE)
        if promised is not None:
            state.promised = self._ballot(_PROMISE, promised)
        state.commit = self._read_int(_COMMIT)
        state.log_start = self._read_int(_START)
        voting = self._read(_VOTING)
        if voting is not None and type(voting) is not bool:
            raise CorruptRecord(str(self.path), _VOTING, f"not a boolean: {voting!r}")
        state.voting = voting is not False  # absent: the journal predates the flag; it votes
        self._snapshot = self._snapshot_meta()
        state.snapshot_slot = self._snapshot[0]
        try:
            for key, raw in db.items(from_key=_ENTRY):
                if not key.startswith(_ENTRY):
                    break
                if len(key) != 1 + _SLOT.size:
                    raise CorruptRecord(str(self.path), key, "malformed entry key")
                payload = self._verify(key, raw)
                slot = _SLOT.unpack(key[1:])[0]
                state.entries[slot] = self._entry(key, payload)
        except CorruptRecord:
            raise
        except Exception as error:
            raise StorageUnavailable(f"cannot read {self.path}: {error}") from error
        self._log_start = state.log_start
        return state

    def _read(self, key: bytes, view: _View | None = None) -> object:
        """One verified record, from `view` if given."""
        try:
            raw = self._open_db().get(key) if view is None else view.get(key)
        except JournalClosed:
            raise
        except Exception as error:
            raise StorageUnavailable(f"cannot read {self.path}: {error}") from error
        return None if raw is None else self._verify(key, raw)

    def _snapshot_meta(self, view: _View | None = None) -> tuple[int, int, int]:
        meta = self._read(_SNAPSHOT, view)
        if meta is None:
            return 0, 0, 0
        if (
            not isinstance(meta, list)
            or len(meta) not in (2, 3)
            or not all(type(n) is int and n >= 0 for n in meta)
            or (len(meta) == 3 and meta[2] >= len(_CHUNKS))
        ):
            raise CorruptRecord(
                str(self.path), _SNAPSHOT, f"expected [slot, count, generation], got {meta!r}"
            )
        return meta[0], meta[1], meta[2] if len(meta) == 3 else 0

    def read_snapshot(self) -> tuple[int, list[bytes]]:
        # From a view: a save_snapshot running meanwhile (another thread) cannot mix its
        # chunks into what we read.
        return self._read_snapshot(self._view())

    def snapshot_view(self) -> SnapshotView:
        view = self._view()
        slot, chunks = self._read_snapshot(view)
        return SnapshotView(slot, chunks, lambda: self._app_items(view, _APP, None))

    def _view(self) -> _View:
        """Both column families as of one moment. Their iterators are made one after the
        other, so a snapshot saved in between could have let the machine delete payloads
        the older one needs (it deletes only once the newer is stored): the meta record is
        read again after, and a view across a save is made anew."""
        try:
            db, keys = self._open_db(), self._keys
            if keys is None:
                raise self._closed()
            while True:
                view = _View(db.iter(), keys.iter())
                if view.get(_SNAPSHOT) == db.get(_SNAPSHOT):
                    return view
        except JournalClosed:
            raise
        except Exception as error:
            raise StorageUnavailable(f"cannot read {self.path}: {error}") from error

    def _app_items(
        self, view: _View, low: bytes, high: bytes | None
    ) -> Iterator[tuple[bytes, bytes]]:
        where = str(self.path)
        for full, raw in view.keys_from(low):
            if not full.startswith(_APP) or (high is not None and full >= high):
                break
            yield full[len(_APP) :], unseal(where, full, raw)

    def _read_snapshot(self, view: _View) -> tuple[int, list[bytes]]:
        slot, count, generation = self._snapshot_meta(view)
        chunks = []
        for index in range(count):
            key = _chunk_key(generation, index)
            chunk = self._read(key, view)
            if type(chunk) is not bytes:
                raise CorruptRecord(str(self.path), key, "snapshot chunk missing or not bytes")
            chunks.append(chunk)
        return slot, chunks

    def _read_int(self, key: bytes) -> int:
        value = self._read(key)
        if value is None:
            return 0
        if not isinstance(value, int) or value < 0:
            raise CorruptRecord(str(self.path), key, f"expected a slot number, got {value!r}")
        return value

    def _verify(self, key: bytes, raw: bytes) -> object:
        if len(raw) < _CRC.size:
            raise CorruptRecord(str(self.path), key, "shorter than its checksum")
        (expected,) = _CRC.unpack_from(raw)
        data = raw[_CRC.size :]
        if zlib.crc32(data, zlib.crc32(key)) != expected:
            raise CorruptRecord(str(self.path), key, "checksum mismatch")
        try:
            return cbor2.loads(data)
        except Exception as error:
            raise CorruptRecord(str(self.path), key, f"undecodable: {error}") from error

    def _ballot(self, key: bytes, value: object) -> tuple[int, int]:
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(part, int) for part in value)
        ):
            raise CorruptRecord(str(self.path), key, f"expected a ballot, got {value!r}")
        return value[0], value[1]

    def _entry(self, key: bytes, value: object) -> tuple[tuple[int, int], tuple[bytes, ...]]:
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not isinstance(value[2], list)
            or not all(isinstance(command, bytes) for command in value[2])
        ):
            raise CorruptRecord(str(self.path), key, "expected [round, node, [bytes...]]")
        return self._ballot(key, value[:2]), tuple(value[2])

    # ----------------------------------------------------------------------------- write

    def write(self, batch: Batch, sync: bool = True) -> None:
        if not batch:
            return
        out = WriteBatch(raw_mode=True)
        start = self._log_start
        if batch.truncate_below is not None:
            start = self._truncate(out, batch.truncate_below)
        if batch.promised is not None:
            out.put(_PROMISE, _seal(_PROMISE, list(batch.promised)))
        for slot, ((round_, node), value) in batch.entries.items():
            if slot >= start:  # as in the twin: entries below the log start are dropped
                key = _entry_key(slot)
                out.put(key, _seal(key, [round_, node, list(value)]))
        if batch.commit is not None:
            out.put(_COMMIT, _seal(_COMMIT, batch.commit))
        if batch.voting is not None:
            out.put(_VOTING, _seal(_VOTING, batch.voting))
        self._commit_batch(out, sync)
        self._log_start = start

    def save_snapshot(self, slot: int, chunks: Sequence[bytes], truncate_below: int) -> None:
        """Each chunk goes in a write of its own (unsynced, under the generation the stored
        snapshot does not use): a write holds the GIL, so one write of the whole snapshot
        would stop the node for as long as it takes. The last write, synced, makes the new
        generation the snapshot, drops the old one and truncates the log, all at once; a
        crash before it leaves the old snapshot whole. Before it, the key space's memtable
        is flushed: its writes skip the write-ahead log, and the snapshot needs them."""
        check_snapshot(self._snapshot[0], slot, truncate_below)
        old = self._snapshot[2]
        generation = 1 - old
        keys = self._open_keys()[0]
        try:
            keys.flush(False)  # started now, it overlaps the chunks' writes
        except Exception as error:
            raise self.fail(f"flushing the key space of {self.path} failed: {error}") from error
        for index, chunk in enumerate(chunks):
            out = WriteBatch(raw_mode=True)
            if index == 0:  # what a save cut short by a crash left there
                out.delete_range(*_generation_range(generation))
            key = _chunk_key(generation, index)
            out.put(key, _seal(key, bytes(chunk)))
            self._commit_batch(out, sync=False)
        try:
            keys.flush(True)  # waits for that flush too; lets go of the GIL meanwhile
        except Exception as error:
            raise self.fail(f"flushing the key space of {self.path} failed: {error}") from error
        out = WriteBatch(raw_mode=True)
        if not chunks:
            out.delete_range(*_generation_range(generation))
        out.delete_range(*_generation_range(old))
        out.put(_SNAPSHOT, _seal(_SNAPSHOT, [slot, len(chunks), generation]))
        start = self._truncate(out, truncate_below)
        self._commit_batch(out)
        self._snapshot = (slot, len(chunks), generation)
        self._log_start = start

    def _truncate(self, out: WriteBatch, below: int) -> int:
        if below <= self._log_start:
            return self._log_start
        out.delete_range(_entry_key(0), _entry_key(below))
        out.put(_START, _seal(_START, below))
        return below

    def _commit_batch(self, out: WriteBatch, sync: bool = True) -> None:
        with self._writing:
            db = self._open_db()
            try:
                db.write(out, self._unsynced)
                if sync:
                    self._sync_logs()
            except Exception as error:
                # After a failed sync the disk state is unknown: stop writing for good.
                raise self.fail(f"write to {self.path} failed: {error}") from error

    def _sync_logs(self) -> None:
        """fdatasync every write-ahead log file that may hold unsynced writes (a memtable
        switch starts a new one while the last may still hold some), and the directory when
        one is new, so that it is found after a crash."""
        # An open database starts a log only as a column family switches memtables, which
        # installs a new "super version" of it: while those stay the same, so do the logs, and
        # the directory need not be listed again (that took 37-55 us of a synced write). Read
        # after the write and before any listing: a switch after the reading changes it, so
        # the next sync lists the logs, and this one syncs the log the write went to.
        versions = self._super_versions()
        live = self._logs
        newest = max(live, key=_log_number) if live else None
        if (
            versions != self._listed_at
            or None in versions
            or newest is None
            or os.fstat(live[newest]).st_nlink == 0
        ):
            self._list_logs()
            self._listed_at = versions
            live = self._logs
            newest = max(live, key=_log_number)
        # RocksDB appends to its newest log only (no recycled logs; with `manual_wal_flush`
        # off, nothing waits in its buffer when it moves on): an older one synced once since
        # a newer one appeared holds nothing unsynced. A clean fdatasync still costs ~45 us,
        # and logs stay alive until every column family has flushed what they hold.
        sealed = self._sealed_logs
        if newest in sealed:
            raise OSError(f"the write-ahead log RocksDB writes to in {self.path} is gone")
        for name, fd in live.items():
            if name not in sealed:
                os.fdatasync(fd)
                if name != newest:
                    sealed.add(name)

    def _super_versions(self) -> tuple[int | None, int | None]:
        """Each column family's super version: it changes whenever its memtable does."""
        db, keys = self._open_db(), self._open_keys()[0]
        return db.property_int_value(_SUPER_VERSION), keys.property_int_value(_SUPER_VERSION)

    def _list_logs(self) -> None:
        """Find the live write-ahead logs (descriptors kept open), and sync the directory
        when one is new, so that it is found after a crash."""
        live: dict[str, int] = {}
        new = False
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    if _log_number(entry.name) is None:
                        continue
                    fd = self._logs.pop(entry.name, None)
                    if fd is None:
                        try:
                            fd = os.open(entry.path, os.O_RDONLY)
                        except FileNotFoundError:
                            continue  # obsolete meanwhile: its writes are in a synced table file
                        new = True
                    live[entry.name] = fd
        finally:
            for fd in self._logs.values():  # files RocksDB has deleted
                os.close(fd)
            self._logs = live
        if not live:
            raise OSError(f"no write-ahead log file in {self.path} to sync")
        self._sealed_logs.intersection_update(live)
        if new:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def keyspace(self) -> RocksKeySpace:
        """The application's key space in this database (shares its write-ahead log)."""
        return RocksKeySpace(self)

    def size_bytes(self) -> int:
        """Bytes the journal's files take on disk."""
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    def close(self) -> None:
        with self._writing:
            logs, self._logs = self._logs, {}
            for fd in logs.values():
                os.close(fd)
            self._keys = self._keys_handle = None
            if self._db is not None:
                db, self._db = self._db, None
                # Closing after a failed write may fail too; there is nothing left to save.
                with contextlib.suppress(Exception):
                    db.close()

    def fail(self, reason: str) -> StorageUnavailable:
        """Close for good after a failed write; the error to raise, naming `reason`."""
        if self._failure is None:
            self._failure = reason
        self.close()
        return StorageUnavailable(reason)

    def _closed(self) -> JournalClosed:
        if self._failure is None:
            return JournalClosed(f"the journal at {self.path} is closed")
        return JournalClosed(f"the journal at {self.path} stopped: {self._failure}")

    def _open_db(self) -> Rdict:
        if self._db is None:
            raise self._closed()
        return self._db

    def _open_keys(self) -> tuple[Rdict, object]:
        keys, handle = self._keys, self._keys_handle
        if keys is None or handle is None:
            raise self._closed()
        return keys, handle


class _View:
    """The journal's records and the key space, each through an iterator made at once (an
    iterator sees the database as of its making), looked up by seeking."""

    def __init__(self, journal, keys) -> None:
        self._journal = journal
        self._keys = keys

    def get(self, key: bytes) -> bytes | None:
        iterator = self._journal
        iterator.seek(key)
        return iterator.value() if iterator.valid() and iterator.key() == key else None

    def keys_from(self, low: bytes) -> Iterator[tuple[bytes, bytes]]:
        iterator = self._keys
        iterator.seek(low)
        while iterator.valid():
            yield iterator.key(), iterator.value()
            iterator.next()
        iterator.status()  # raises if a read failed: that ends the iteration too


class RocksKeySpace:
    """`KeySpace` on the journal's database; see `paxq.storage.keyspace`."""

    def __init__(self, journal: RocksJournal) -> None:
        self._journal = journal
        self._where = str(journal.path)
        self._pending: dict[bytes, bytes] = {}
        self._batch = WriteBatch(raw_mode=True)
        self._unlogged = WriteOptions()  # see `paxq.storage.keyspace`
        self._unlogged.disable_wal = True

    def put(self, key: bytes, value: bytes) -> None:
        full = _APP + key
        sealed = seal(full, value)
        self._pending[full] = sealed
        handle = self._journal._keys_handle
        if handle is None:
            raise self._journal._closed()
        self._batch.put(full, sealed, handle)

    def get(self, key: bytes) -> bytes | None:
        full = _APP + key
        raw = self._pending.get(full)
        if raw is None:
            try:
                raw = self._journal._open_keys()[0].get(full)
            except JournalClosed:
                raise
            except Exception as error:
                raise StorageUnavailable(f"cannot read {self._where}: {error}") from error
        return None if raw is None else unseal(self._where, full, raw)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """One iterator for all, in key order: a key next to the last one read costs a step
        rather than a lookup (a claim reads a run of payloads; a lookup of each was a fifth
        of a consuming leader's time)."""
        pending = self._pending
        found: dict[bytes, bytes | None] = {}
        iterator = None
        at: bytes | None = None  # the iterator's key; None past the end
        try:
            for key in sorted(keys):
                full = _APP + key
                raw = pending.get(full)
                if raw is None:
                    if iterator is None:
                        iterator = self._journal._open_keys()[0].iter()
                        iterator.seek(full)
                        at = _key_at(iterator)
                    elif at is not None and at < full:
                        iterator.next()  # the least key above the last one looked at
                        at = _key_at(iterator)
                        if at is not None and at < full:
                            iterator.seek(full)
                            at = _key_at(iterator)
                    # The iterator is at the least key >= full (or past the end).
                    if at == full:
                        raw = iterator.value()
                found[key] = raw
        except JournalClosed:
            raise
        except Exception as error:
            raise StorageUnavailable(f"cannot read {self._where}: {error}") from error
        where = self._where
        return [
            None if (raw := found[key]) is None else unseal(where, _APP + key, raw) for key in keys
        ]

    def flush(self) -> None:
        if not self._pending and not len(self._batch):
            return
        batch, self._batch = self._batch, WriteBatch(raw_mode=True)
        self._pending = {}
        db = self._journal._open_db()
        try:
            db.write(batch, self._unlogged)
        except Exception as error:
            raise self._journal.fail(f"write to {self._where} failed: {error}") from error

    def delete_range(self, start: bytes, end: bytes) -> None:
        self._batch.delete_range(_APP + start, _APP + end, self._journal._open_keys()[1])
        self._pending.clear()  # deletes follow every put buffered before them
        self.flush()

    def items(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        view = self._journal._view()  # taken now, not at the first next()
        return self._journal._app_items(view, _APP + start, _APP + end)


__all__ = ["NO_BALLOT", "RocksJournal", "RocksKeySpace"]
