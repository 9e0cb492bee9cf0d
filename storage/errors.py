"""Typed storage errors: each says what is wrong and where, so a node can refuse to start."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every storage error."""


class CorruptRecord(StorageError):
    """A record failed its checksum or does not decode: the node must not serve from it."""

    def __init__(self, where: str, key: bytes, reason: str) -> None:
        super().__init__(f"corrupt record {key!r} in {where}: {reason}")
        self.where = where
        self.key = key
        self.reason = reason


class WrongDataDirectory(StorageError):
    """The directory belongs to another cluster or another node (or a newer format)."""


class StorageUnavailable(StorageError):
    """The disk refused a read or a write (full, read-only, gone): nothing more is written."""


class JournalClosed(StorageError):
    """The journal was closed, or stopped after an earlier failure."""
