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
    #: chunks that came ahead of their turn (the network reorders), by index
    early: dict[int, bytes] = field(default_factory=dict)


class Assembler:
    """Receiving side: accepts chunks in order from one transfer at a time, within bounds."""

    def __init__(
        self,
        node_id: int,
        bytes_max: int,
        keep: Callable[[bytes], bool] = lambda chunk: True,
        early_max: int = 8,
    ) -> None:
        self.node_id = node_id
        #: chunks held that came ahead of their turn, at most (about the sender's window)
        self.early_max = early_max
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
            if current is None or (m.slot > current.slot and m.src == current.src):
                self.current = Incoming(m.src, m.slot, m.count)
            # Else another node's snapshot while a transfer is under way (peers answer
            # catch-up in turn: were a newer one to win, peers that snapshot often would
            # reset each other's transfers for ever; a stalled one is abandoned instead),
            # which gets no answer (its sender gives up), or an older one, or a duplicate
            # of ours: answered below with where we stand, so a restarted sender resumes.
        current = self.current
        if current is None or (m.src, m.slot, m.count) != (
            current.src,
            current.slot,
            current.count,
        ):
            return None, None
        if len(current.chunks) < m.index <= len(current.chunks) + self.early_max:
            current.early[m.index] = m.data  # its turn comes once the ones before it arrive
        elif m.index == len(current.chunks):
            data: bytes | None = m.data
            while data is not None:
                if not self._take(current, data):
                    return None, None
                data = current.early.pop(len(current.chunks), None)
        # A duplicate or early chunk is answered with where we stand, so the sender resumes.
        ack = SnapshotAck(self.node_id, current.slot, len(current.chunks))
        return ack, self._complete(current)

    def _take(self, current: Incoming, data: bytes) -> bool:
        """The next chunk in order; False: the snapshot is over the byte bound (refused)."""
        if not self.keep(data):
            current.chunks.append(b"")  # its content is stored already
            return True
        current.size += len(data)
        if current.size > self.bytes_max:
            log.error(
                "refusing a snapshot from node %d: more than %d bytes", current.src, self.bytes_max
            )
            self.current = None
            self.refused += 1
            return False
        current.chunks.append(data)
        return True

    def abandon(self) -> None:
        """The transfer under way made no progress for too long: the next one may start."""
        self.current = None

    def _complete(self, current: Incoming) -> Incoming | None:
        if len(current.chunks) == current.count:
            self.current = None
            current.chunks = [chunk for chunk in current.chunks if chunk]
            return current
        return None
