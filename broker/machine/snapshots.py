"""The machine's state as a stream of small CBOR records, cut into chunks.

A chunk is a run of CBOR items, each a record `[kind, ...]`. Large arrays and sets are cut
into pieces of `PIECE` elements, so no record outgrows a chunk by much. A topic's full pieces of
arrays are in the key space (topics.py): a `pieces` record names them, and only the arrays of
the last, unfinished piece travel inline. The last record is
`["end", records before it]`; a snapshot without it, or with anything malformed, is refused
(`SnapshotInvalid`). When a snapshot travels to a peer, `payload` records follow the metadata:
the peer stores them in its key space.
"""

from __future__ import annotations

import io
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import cbor2

from .subscriptions import Subscription
from .topics import Topic, piece_key

if TYPE_CHECKING:
    from .machine import QueueMachine

PIECE = 16_384


class SnapshotInvalid(ValueError):
    """A snapshot that does not decode as this machine's state."""


def _pieces(items: list) -> Iterator[list]:
    for start in range(0, len(items), PIECE):
        yield items[start : start + PIECE]


def _records(machine: QueueMachine) -> Iterator[list]:
    yield [
        "head",
        machine.FORMAT,
        machine.slots,
        machine.now_ms,
        machine.token,
        machine.next_topic_id,
    ]
    for topic in machine.topics.values():
        yield [
            "topic",
            topic.id,
            topic.name,
            topic.kind,
            topic.created_ms,
            topic.max_messages,
            topic.max_bytes,
            topic.max_age_ms,
            topic.options,
            topic.first,
            topic.next,
            topic.expired,
        ]
        piece = machine.limits.array_piece_messages
        full = topic.next // piece  # pieces below this one are full, so in the key space
        if full > topic.first // piece:
            yield ["pieces", topic.id, piece, topic.first // piece, full]
        start = max(topic.first, full * piece) - topic.base
        for at in range(start, len(topic.times), PIECE):
            end = at + PIECE
            yield [
                "arrays",
                topic.id,
                topic.times[at:end].tobytes(),
                topic.sizes[at:end].tobytes(),
                topic.keys[at:end].tobytes(),
            ]
        for piece in _pieces(sorted(topic.delayed.items())):
            yield ["delayed", topic.id, piece]
        for sub in topic.subs.values():
            yield from _subscription(topic.id, sub)
    for (topic_id, producer), results in machine.producers.known.items():
        yield ["producer", topic_id, producer, sorted(results.items())]
    for topic_id, known in machine.message_ids.items():  # oldest first, as they are kept
        for piece in _pieces([[mid, offset, stamp] for mid, (offset, stamp) in known.items()]):
            yield ["ids", topic_id, piece]


def _subscription(topic_id: int, sub: Subscription) -> Iterator[list]:
    yield [
        "sub",
        topic_id,
        sub.name,
        sub.created_ms,
        sub.cursor,
        sub.floor,
        sub.max_deliveries,
        sub.dead_letter,
        sub.key_ordered,
        sub.backoff_base_ms,
        sub.backoff_max_ms,
        sub.dead_lettered,
        sub.dead_letter_dropped,
        sub.acked,
    ]
    name = sub.name
    for piece in _pieces(sorted(sub.done.items())):
        yield ["done", topic_id, name, piece]
    for piece in _pieces(sorted([o, *lease] for o, lease in sub.leases.items())):
        yield ["leases", topic_id, name, piece]
    for piece in _pieces(sorted(sub.counts.items())):
        yield ["counts", topic_id, name, piece]
    for piece in _pieces(sorted(sub.waiting)):
        yield ["waiting", topic_id, name, piece]
    for key, offset in sub.held.items():
        yield ["held", topic_id, name, key, offset, list(sub.blocked.get(key, ()))]


def chunked(records: Iterator[list], chunk_bytes: int) -> Iterator[bytes]:
    """Records as chunks of about `chunk_bytes` (one record may run over), ending with the
    `end` record."""
    part = io.BytesIO()
    count = 0
    for record in records:
        cbor2.dump(record, part)
        count += 1
        if part.tell() >= chunk_bytes:
            yield part.getvalue()
            part = io.BytesIO()
    cbor2.dump(["end", count], part)
    yield part.getvalue()


def _payload_parts(items: Iterator[tuple[bytes, bytes]], chunk_bytes: int) -> Iterator[bytes]:
    part = io.BytesIO()
    for key, value in items:
        cbor2.dump(["payload", key, value], part)
        if part.tell() >= chunk_bytes:
            yield part.getvalue()
            part = io.BytesIO()
    if part.tell():
        yield part.getvalue()


def payload_chunks(
    items: Callable[[], Iterator[tuple[bytes, bytes]]], chunk_bytes: int
) -> tuple[int, Iterator[bytes]]:
    """The key space as chunks of `payload` records: (how many, the chunks). Two passes over
    the same consistent view, so the count is known before the first chunk leaves and the
    chunks need not all be in memory at once."""
    count = sum(1 for _ in _payload_parts(items(), chunk_bytes))
    return count, _payload_parts(items(), chunk_bytes)


def absorb(keys, chunk: bytes) -> bool:
    """A shipped chunk as it arrives: a chunk of payloads goes straight into the key space
    (False: nothing to keep); a metadata chunk is kept (True) for `read_snapshot`."""
    source = io.BytesIO(chunk)
    decoder = cbor2.CBORDecoder(source)
    try:
        first = decoder.decode()
    except Exception:
        return True  # read_snapshot refuses it with a clear error
    if not (type(first) is list and first and first[0] == "payload"):
        return True
    records = [first]
    try:
        while source.tell() < len(chunk):
            records.append(decoder.decode())
    except Exception:
        return True
    if not all(
        type(r) is list
        and len(r) == 3
        and r[0] == "payload"
        and type(r[1]) is bytes
        and type(r[2]) is bytes
        for r in records
    ):
        return True
    for _, key, value in records:
        keys.put(key, value)
    keys.flush()
    return False


def write_snapshot(machine: QueueMachine, chunk_bytes: int) -> list[bytes]:
    return list(chunked(_records(machine), chunk_bytes))


def read_snapshot(machine: QueueMachine, chunks: list[bytes]) -> None:
    """Replace `machine`'s state with the snapshot's, payload records into its key space.
    Raises SnapshotInvalid, leaving the metadata untouched, on anything malformed."""
    try:
        state = _State()
        ended = False
        for chunk in chunks:
            machine.keys.flush()  # payloads go to disk a chunk at a time, not all at the end
            source = io.BytesIO(chunk)
            decoder = cbor2.CBORDecoder(source)
            while source.tell() < len(chunk):
                record = decoder.decode()
                if ended and record[0] != "payload":
                    raise SnapshotInvalid("records other than payloads after the end")
                if record[0] == "end":
                    if record[1] != state.count:
                        raise SnapshotInvalid(f"{state.count} records, the end says {record[1]}")
                    ended = True
                elif record[0] == "payload":
                    key, value = record[1], record[2]
                    if type(key) is not bytes or type(value) is not bytes:
                        raise SnapshotInvalid("a payload record holds bytes")
                    machine.keys.put(key, value)
                else:
                    state.count += 1
                    state.take(record, machine.FORMATS_READ)
        if not ended or state.head is None:
            raise SnapshotInvalid("the snapshot is cut short")
        state.fill(machine.keys)
    except SnapshotInvalid:
        raise
    except Exception as error:
        raise SnapshotInvalid(f"malformed machine snapshot: {error!r}") from error
    state.install(machine)


def _extend(topic: Topic, times_bytes: bytes, sizes_bytes: bytes, keys_bytes: bytes) -> None:
    times, sizes, keys = array("q"), array("q"), array("q")
    times.frombytes(times_bytes)
    sizes.frombytes(sizes_bytes)
    keys.frombytes(keys_bytes)
    if not len(times) == len(sizes) == len(keys):
        raise SnapshotInvalid("arrays of unequal length")
    topic.times.extend(times)
    topic.sizes.extend(sizes)
    topic.keys.extend(keys)
    topic.next += len(times)
    topic.bytes += sum(sizes)


class _State:
    """A snapshot being read: nothing touches the machine until the whole is read."""

    def __init__(self) -> None:
        self.count = 0
        self.head: list | None = None
        self.topics: dict[int, Topic] = {}
        self.ends: dict[int, int] = {}
        #: per topic, in order: ("pieces", piece, first index, end index) or ("arrays", ...)
        self.arrays: dict[int, list[tuple]] = {}
        self.subs: dict[tuple[int, str], Subscription] = {}
        self.producers: list[tuple[tuple[int, str], dict[int, object]]] = []
        self.message_ids: dict[int, OrderedDict[str, tuple[int, int]]] = {}

    def take(self, record: list, formats: frozenset[int]) -> None:
        kind = record[0]
        if kind == "head":
            _, fmt, slots, now, token, next_topic_id = record
            if fmt not in formats:
                raise SnapshotInvalid(f"snapshot format {fmt}, expected one of {sorted(formats)}")
            self.head = [slots, now, token, next_topic_id]
        elif kind == "topic":
            (_, tid, name, kind_, created, max_messages, max_bytes, max_age, options, first,
             next_, expired) = record  # fmt: skip
            topic = Topic(tid, name, kind_, created, max_messages, max_bytes, max_age, options)
            topic.first = topic.next = topic.base = first
            topic.expired = expired
            self.ends[tid] = next_  # checked once the arrays are in
            self.topics[tid] = topic
            self.arrays[tid] = []
        elif kind == "pieces":
            _, tid, piece, low, high = record
            if not (type(piece) is int and piece > 0 and type(low) is int and type(high) is int):
                raise SnapshotInvalid(f"a malformed pieces record: {record[1:]!r}")
            self.arrays[tid].append(("pieces", piece, low, high))
        elif kind == "arrays":
            self.arrays[record[1]].append(("arrays", record[2], record[3], record[4]))
        elif kind == "delayed":
            self.topics[record[1]].delayed.update((o, at) for o, at in record[2])
        elif kind == "sub":
            (_, tid, name, created, cursor, floor, max_deliveries, dead_letter, key_ordered,
             base, most, dead_lettered, dead_letter_dropped, acked) = record  # fmt: skip
            topic = self.topics[tid]
            sub = Subscription(
                name, topic, floor, created, max_deliveries, dead_letter, key_ordered, base, most
            )
            sub.cursor = cursor
            sub.dead_lettered, sub.acked = dead_lettered, acked
            sub.dead_letter_dropped = dead_letter_dropped
            topic.subs[name] = sub
            self.subs[tid, name] = sub
        elif kind == "done":
            sub = self.subs[record[1], record[2]]
            for offset, size in record[3]:
                sub.done[offset] = size
                sub.done_bytes += size
        elif kind == "leases":
            leases = self.subs[record[1], record[2]].leases
            for offset, token, deadline, consumer in record[3]:
                leases[offset] = [token, deadline, consumer]
        elif kind == "counts":
            self.subs[record[1], record[2]].counts.update((o, n) for o, n in record[3])
        elif kind == "waiting":
            self.subs[record[1], record[2]].waiting.extend((at, o) for at, o in record[3])
        elif kind == "held":
            sub = self.subs[record[1], record[2]]
            sub.held[record[3]] = record[4]
            if record[5]:
                sub.blocked[record[3]] = deque(record[5])
        elif kind == "producer":
            results = {seq: result for seq, result in record[3]}
            self.producers.append(((record[1], record[2]), results))
        elif kind == "ids":
            known = self.message_ids.setdefault(record[1], OrderedDict())
            for message_id, offset, stamp in record[2]:
                known[message_id] = (offset, stamp)
        else:
            raise SnapshotInvalid(f"unknown record {kind!r}")

    def fill(self, keys) -> None:
        """Each topic's arrays, from the pieces in the key space, then those inline. Last,
        once a shipped snapshot's payload records (and pieces) are all in."""
        for tid, parts in self.arrays.items():
            topic = self.topics[tid]
            for part in parts:
                if part[0] == "arrays":
                    _extend(topic, part[1], part[2], part[3])
                    continue
                _, piece, low, high = part
                if low != topic.next // piece or topic.next >= high * piece:
                    raise SnapshotInvalid(
                        f"topic {topic.name!r}: pieces {low}..{high} of {piece} do not follow "
                        f"offset {topic.next}"
                    )
                for index in range(low, high):
                    end = (index + 1) * piece
                    raw = keys.get(piece_key(tid, index))
                    if raw is None:
                        raise SnapshotInvalid(f"topic {topic.name!r}: piece {index} is missing")
                    start = int.from_bytes(raw[:8], "big")
                    width = (end - start) * 8
                    if start > topic.next or len(raw) != 8 + 3 * width:
                        raise SnapshotInvalid(f"topic {topic.name!r}: piece {index} is malformed")
                    skip = (topic.next - start) * 8
                    _extend(
                        topic,
                        raw[8 + skip : 8 + width],
                        raw[8 + width + skip : 8 + 2 * width],
                        raw[8 + 2 * width + skip :],
                    )

    def install(self, machine: QueueMachine) -> None:
        for topic in self.topics.values():
            if topic.next != self.ends[topic.id]:
                raise SnapshotInvalid(f"topic {topic.name!r}: arrays end at {topic.next}")
        machine.slots, machine.now_ms, machine.token, machine.next_topic_id = self.head
        machine.topics = {t.name: t for t in self.topics.values()}
        machine.by_id = dict(self.topics)
        machine.expiries.rebuild(
            (lease[1], tid, name, offset, lease[0])
            for (tid, name), sub in self.subs.items()
            for offset, lease in sub.leases.items()
        )
        for sub in self.subs.values():
            sub.waiting.sort()
        machine.producers.known.clear()
        for producer, results in self.producers:
            machine.producers.known[producer] = results
        machine.message_ids = self.message_ids
        machine._garbage = []
        machine._releasable = []
