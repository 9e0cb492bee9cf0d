"""The application's key space: where the replicated machine keeps message payloads.

It lives in the same store as the journal (RocksDB: the same database, its own column
family). Its writes skip the write-ahead log, so a payload reaches the log once, in the log
entry that carries it, not a second time here: a crash loses what the memtable held, and
that is rebuilt by replaying the log from the snapshot on. What the snapshot needs is made
durable before it is stored (the journal flushes the key space first). So after a crash
the key space holds everything written before the stored snapshot, and some prefix of what
came after, which the replay writes again with the same values.

Values are sealed with a checksum like journal records: a damaged value is refused
(`CorruptRecord`), never handed back.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Protocol

from .errors import CorruptRecord

_CRC = struct.Struct(">I")


class KeySpace(Protocol):
    def put(self, key: bytes, value: bytes) -> None:
        """Buffered until `flush`, but visible to `get` at once."""
        ...

    def get(self, key: bytes) -> bytes | None: ...

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """`get` of each key, in one pass."""
        ...

    def flush(self) -> None:
        """Write what is buffered (not durable until the journal stores a snapshot)."""
        ...

    def delete_range(self, start: bytes, end: bytes) -> None:
        """Delete keys in [start, end), after flushing what is buffered."""
        ...

    def items(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys in [start, end) with their values, as of the call (a consistent view)."""
        ...


def seal(key: bytes, value: bytes) -> bytes:
    return _CRC.pack(zlib.crc32(value, zlib.crc32(key))) + value


def unseal(where: str, key: bytes, raw: bytes) -> bytes:
    if len(raw) < _CRC.size:
        raise CorruptRecord(where, key, "shorter than its checksum")
    (expected,) = _CRC.unpack_from(raw)
    value = raw[_CRC.size :]
    if zlib.crc32(value, zlib.crc32(key)) != expected:
        raise CorruptRecord(where, key, "checksum mismatch")
    return value


class MemoryKeySpace:
    """The in-memory twin: a dict that outlives crashes (it lives on the `MemoryDisk`).
    With `log` (the disk's record of key-space writes not yet flushed by a stored snapshot),
    puts wait in this object until `flush`, as in `RocksKeySpace`'s batch, and so die with
    the process; each flush and delete is recorded with what undoes it, so a crash can lose
    those too. Without it (unit tests) writes go straight to the dict."""

    def __init__(
        self, data: dict[bytes, bytes], log: Callable[[list[tuple]], None] | None = None
    ) -> None:
        self._data = data
        self._log = log
        self._pending: dict[bytes, bytes] = {}

    def put(self, key: bytes, value: bytes) -> None:
        if self._log is None:
            self._data[key] = seal(key, value)
        else:
            self._pending[key] = seal(key, value)

    def get(self, key: bytes) -> bytes | None:
        raw = self._pending.get(key)
        if raw is None:
            raw = self._data.get(key)
        return None if raw is None else unseal("memory", key, raw)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        return [self.get(key) for key in keys]

    def flush(self) -> None:
        if not self._pending or self._log is None:
            return
        pending, self._pending = self._pending, {}
        self._log([("key", key, self._data.get(key)) for key in pending])
        self._data.update(pending)

    def delete_range(self, start: bytes, end: bytes) -> None:
        self.flush()  # as RocksKeySpace: deletes follow the puts buffered before them
        removed = {k: v for k, v in self._data.items() if start <= k < end}
        if removed and self._log is not None:
            self._log([("keys", removed)])
        for key in removed:
            del self._data[key]

    def items(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        chosen = sorted((k, v) for k, v in self._data.items() if start <= k < end)
        for key, raw in chosen:
            yield key, unseal("memory", key, raw)
