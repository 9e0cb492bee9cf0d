"""The pieces of snapshotting that need no cluster: the log machine's snapshot and the
receiving side of a transfer (order, duplicates, bounds)."""

from __future__ import annotations

import pytest

from paxq.broker.node.machines import COMMAND_HEADER_BYTES, LogMachine, SnapshotInvalid
from paxq.broker.node.transfer import Assembler, SnapshotAck, SnapshotChunk

HEADER = b"h" * COMMAND_HEADER_BYTES


def filled(entries: int, retain: int = 1000) -> LogMachine:
    machine = LogMachine(retain=retain)
    for slot in range(entries):
        machine.apply(slot, (HEADER + b"entry-%d" % slot, HEADER + b"more-%d" % slot))
    return machine


def test_a_log_snapshot_restores_the_same_state_in_small_chunks() -> None:
    machine = filled(40, retain=50)
    chunks = machine.snapshot(chunk_bytes=64)
    assert len(chunks) > 5, "the ring is cut into chunks of about the asked size"
    copy = LogMachine(retain=50)
    copy.restore(chunks)
    assert (copy.slots, copy.length) == (40, 80)
    assert copy.read(0, 100) == machine.read(0, 100)
    assert copy.read(0, 100)[0] == 30  # only the ring's 50 entries travel
    assert copy.apply(40, (HEADER + b"next",)) == [80]


@pytest.mark.parametrize(
    "chunks",
    [[], [b"\xff"], [b"\x84\x02\x00\x00\x00"], [b"\x84\x01\x01\x01\x02", b"\x81\x41x"]],
)
def test_a_bad_snapshot_is_refused_and_changes_nothing(chunks: list[bytes]) -> None:
    machine = filled(3)
    with pytest.raises(SnapshotInvalid):
        machine.restore(chunks)
    assert (machine.slots, machine.length) == (3, 6)


def chunk(index: int, data: bytes = b"d", *, src: int = 1, slot: int = 10, count: int = 3):
    return SnapshotChunk(src, slot, index, count, data)


def test_chunks_are_taken_in_order_and_acknowledged() -> None:
    assembler = Assembler(node_id=0, bytes_max=100)
    assert assembler.on_chunk(chunk(0, b"a"), commit=4) == (SnapshotAck(0, 10, 1), None)
    # A chunk ahead of its turn is held, not taken; the ack says where the receiver stands.
    assert assembler.on_chunk(chunk(2, b"c"), commit=4) == (SnapshotAck(0, 10, 1), None)
    assert assembler.on_chunk(chunk(0, b"a"), commit=4) == (SnapshotAck(0, 10, 1), None)
    ack, done = assembler.on_chunk(chunk(1, b"b"), commit=4)  # and the held one follows it
    assert ack == SnapshotAck(0, 10, 3)
    assert done is not None and done.chunks == [b"a", b"b", b"c"] and done.slot == 10


def test_chunks_too_far_ahead_are_not_held() -> None:
    assembler = Assembler(node_id=0, bytes_max=100, early_max=1)
    assembler.on_chunk(chunk(0, b"a", count=4), commit=4)
    assembler.on_chunk(chunk(3, b"d", count=4), commit=4)  # two ahead of its turn: dropped
    assembler.on_chunk(chunk(2, b"c", count=4), commit=4)  # one ahead: held
    assert assembler.on_chunk(chunk(1, b"b", count=4), commit=4) == (SnapshotAck(0, 10, 3), None)


def test_a_snapshot_the_receiver_is_past_or_one_too_large_is_refused() -> None:
    assembler = Assembler(node_id=0, bytes_max=5)
    assert assembler.on_chunk(chunk(0), commit=10) == (None, None)  # commit already there
    assert assembler.on_chunk(chunk(0, b"abc"), commit=4)[0] is not None
    assert assembler.on_chunk(chunk(1, b"abc"), commit=4) == (None, None)  # 6 bytes > 5
    assert assembler.refused == 1 and assembler.current is None
    assert assembler.on_chunk(chunk(2, b"c"), commit=4) == (None, None)


def test_a_newer_transfer_from_its_sender_replaces_an_older_one_but_not_the_reverse() -> None:
    assembler = Assembler(node_id=0, bytes_max=100)
    assembler.on_chunk(chunk(0, slot=10), commit=4)
    assembler.on_chunk(chunk(0, slot=20), commit=4)
    assert assembler.current is not None and assembler.current.slot == 20
    assert assembler.on_chunk(chunk(0, slot=10), commit=4) == (None, None)
    assert assembler.on_chunk(chunk(1, slot=10), commit=4) == (None, None)


def test_another_nodes_newer_snapshot_waits_for_the_transfer_under_way() -> None:
    """Peers that snapshot often would otherwise reset each other's transfers for ever."""
    assembler = Assembler(node_id=0, bytes_max=100)
    assembler.on_chunk(chunk(0, slot=10, src=1), commit=4)
    assert assembler.on_chunk(chunk(0, slot=20, src=2), commit=4) == (None, None)
    assert assembler.current is not None and assembler.current.slot == 10
    assembler.abandon()  # stalled: the core gives up on it
    assembler.on_chunk(chunk(0, slot=20, src=2), commit=4)
    assert assembler.current is not None and assembler.current.slot == 20
