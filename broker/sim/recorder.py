"""The machine the simulator gives each node core: the real machine, recording every slot.

To the core it is just a `Machine`. It applies through the real one and keeps the checkers'
copy of the log (every value applied, from slot 0), which its snapshots carry ahead of the
real machine's chunks; so a replica that restarts from a snapshot, or receives one over the
simulated network, still knows what every slot it covers held, and the checkers compare it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import cbor2

from paxq.storage import SnapshotView

from ..machine import QueueMachine, SnapshotInvalid
from ..paxos import Value

_HEAD = "sim-log"
_SLOTS = "sim-slots"
#: (slot, value, slots applied before it): called before the real machine applies it
OnApply = Callable[[int, Value, int], None]
#: the whole log a snapshot brought
OnRestore = Callable[[list[Value]], None]


class Recorder:
    def __init__(self, inner: QueueMachine, on_apply: OnApply, on_restore: OnRestore) -> None:
        self.inner = inner
        self.log: list[Value] = []
        self._on_apply = on_apply
        self._on_restore = on_restore

    @property
    def slots(self) -> int:
        return self.inner.slots

    def apply(self, slot: int, value: Value, answered: bool = True) -> list[object]:
        self._on_apply(slot, value, len(self.log))
        results = self.inner.apply(slot, value, answered)
        self.log.append(value)
        return results

    def snapshot(self, chunk_bytes: int) -> list[bytes]:
        parts: list[bytes] = []
        group: list[list[bytes]] = []
        size = 0
        for value in self.log:
            group.append(list(value))
            size += sum(map(len, value)) + 8
            if size >= chunk_bytes:
                parts.append(cbor2.dumps([_SLOTS, group]))
                group, size = [], 0
        if group:
            parts.append(cbor2.dumps([_SLOTS, group]))
        return [cbor2.dumps([_HEAD, len(parts)]), *parts, *self.inner.snapshot(chunk_bytes)]

    def restore(self, chunks: list[bytes]) -> None:
        try:
            head, count = cbor2.loads(chunks[0])
            groups = [cbor2.loads(chunk) for chunk in chunks[1 : 1 + count]]
        except Exception as error:
            raise SnapshotInvalid(f"not a simulator snapshot: {error}") from error
        if head != _HEAD or any(group[0] != _SLOTS for group in groups):
            raise SnapshotInvalid("not a simulator snapshot")
        self.inner.restore(chunks[1 + count :])
        self.log = [tuple(value) for group in groups for value in group[1]]
        if len(self.log) != self.inner.slots:
            raise SnapshotInvalid(
                f"the recorded log holds {len(self.log)} slots, the machine {self.inner.slots}"
            )
        self._on_restore(self.log)

    def absorb(self, chunk: bytes) -> bool:
        return self.inner.absorb(chunk)  # the log's chunks are not payloads: kept

    @staticmethod
    def shipped(view: SnapshotView, chunk_bytes: int) -> tuple[int, Iterator[bytes]]:
        return QueueMachine.shipped(view, chunk_bytes)

    def __getattr__(self, name: str):
        # flush, due_ms, snapshot_saved, take_changed, read, topics, ...: the real machine's
        return getattr(self.inner, name)
