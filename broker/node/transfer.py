"""Shipping a snapshot to a peer that needs slots this node has compacted away.

The core only says "peer P asked for slots below my log start" (`Ready.snapshot_requests`);
the node then streams its stored snapshot in chunks, a few ahead of the peer's acknowledgement
(so a large snapshot neither floods the bounded peer queue nor waits a round trip per chunk).
A lost chunk or a reconnect stalls the acks; the sender gives up after a timeout and the
peer's next catch-up request starts a fresh transfer. The receiver assembles chunks in order,
from one transfer at a time, within a byte bound, and hands the whole snapshot to the node to
install; a transfer that stops making progress is abandoned so that another can start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

log = logging.getLogger("paxq.node.transfer")


class SnapshotChunk(NamedTuple):
    src: int
    slot: int  # the snapshot covers every slot below this one
    index: int
    count: int
    data: bytes


class SnapshotAck(NamedTuple):
    src: int
    slot: int
    received: int  # chunks of this snapshot received in order so far


@dataclass
class Incoming:
    """One snapshot being received."""

    src: int
    slot: int
    count: int
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


class Assembler:
    """Receiving side: accepts chunks in order from one transfer at a time, within bounds."""

    def __init__(
        self, node_id: int, bytes_max: int, keep: Callable[[bytes], bool] = lambda chunk: True
    ) -> None:
        self.node_id = node_id
        #: called on each chunk in order; False: its content is stored already (payloads),
        #: so it is neither held in memory nor counted against the bound
        self.keep = keep
        self.bytes_max = bytes_max
        self.current: Incoming | None = None
        self.refused = 0

    def on_chunk(self, m: SnapshotChunk, commit: int) -> tuple[SnapshotAck | None, Incoming | None]:
        """(ack to send back, the snapshot if this chunk completed it)."""
        if m.index == 0:
            current = self.current
            if m.slot <= commit:
                return None, None  # we are past it
            if current is None or m.slot > current.slot:
                self.current = Incoming(m.src, m.slot, m.count)
            # Else an older snapshot, or this one from another node while a transfer of it
            # is under way (peers answer catch-up in turn: they would reset each other), or
            # a duplicate: answered below with where we stand, so a restarted sender
            # resumes there.
        current = self.current
        if current is None or (m.src, m.slot, m.count) != (
            current.src,
            current.slot,
            current.count,
        ):
            return None, None
        if m.index == len(current.chunks):
            if not self.keep(m.data):
                current.chunks.append(b"")
                return SnapshotAck(self.node_id, current.slot, len(current.chunks)), (
                    self._complete(current)
                )
            current.size += len(m.data)
            if current.size > self.bytes_max:
                log.error(
                    "refusing a snapshot from node %d: more than %d bytes", m.src, self.bytes_max
                )
                self.current = None
                self.refused += 1
                return None, None
            current.chunks.append(m.data)
        # A duplicate or early chunk is answered with where we stand, so the sender resumes.
        ack = SnapshotAck(self.node_id, current.slot, len(current.chunks))
        return ack, self._complete(current)

    def abandon(self) -> None:
        """The transfer under way made no progress for too long: the next one may start."""
        self.current = None

    def _complete(self, current: Incoming) -> Incoming | None:
        if len(current.chunks) == current.count:
            self.current = None
            current.chunks = [chunk for chunk in current.chunks if chunk]
            return current
        return None
