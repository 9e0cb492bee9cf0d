"""Building commands for the machine: a 16-byte header (session, sequence) that makes each
command unique, then CBOR [op, {arguments}]."""

from __future__ import annotations

import struct

import cbor2

_HEADER = struct.Struct(">8sQ")
_SYSTEM = b"\0" * 8


def command(session: bytes, seq: int, op: str, arguments: dict) -> bytes:
    return _HEADER.pack(session, seq) + cbor2.dumps([op, arguments])


def time_command(node: int, seq: int, stamp_ms: int) -> bytes:
    """The leader's clock for the entries after it. Unique per (node, seq): the node's
    sequence must not repeat across its restarts (start it from a random or stored value)."""
    return (
        _SYSTEM
        + struct.pack(">HHI", 0, node, seq & 0xFFFFFFFF)
        + cbor2.dumps(["time", {"ms": stamp_ms}])
    )
