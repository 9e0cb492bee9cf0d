"""A topic's metadata: offsets, and per retained message its stamp time, size and key hash.

Payloads are not here: they sit in the key space under `payload_key(topic id, offset)`. Per
message this keeps 24 bytes in three arrays, so a million queued messages cost about 24 MB of
memory however large their bodies are.

Those arrays never change once written, so each full piece of them (offsets [i * n, (i + 1) * n)
for the machine's `array_piece_messages` n) is also written to the key space when its last
message arrives, and a snapshot names the pieces instead of carrying them: its cost does not
grow with the depth of a queue. Pieces have keys of their own, above every payload key of the
topic (`piece_key`), and go when the topic has dropped every offset they hold.
"""

from __future__ import annotations

import hashlib
import struct
from array import array

import cbor2

from .args import NAME_CHARS_MAX

_PAYLOAD = struct.Struct(">IQ")
NO_KEY = 0

TOPIC = "topic"
QUEUE = "queue"


def payload_key(topic_id: int, offset: int) -> bytes:
    return _PAYLOAD.pack(topic_id, offset)


#: piece keys are payload keys from this "offset" on, which no message reaches
PIECE_KEYS_FROM = 1 << 63


def piece_key(topic_id: int, index: int) -> bytes:
    """The key of a topic's stored piece of arrays number `index`."""
    return _PAYLOAD.pack(topic_id, PIECE_KEYS_FROM + index)


def stored_payload(body: bytes, key: bytes | None, headers: dict | None) -> bytes:
    """What the key space holds for a message: CBOR [body, key, headers], the very bytes
    `cbor2.dumps` makes. Without headers it is spelt out here: that is most messages, and
    cbor2's encoder costs three times as much for so little."""
    if headers is not None:
        return cbor2.dumps([body, key, headers])
    return b"\x83" + _cbor_bytes(body) + (b"\xf6" if key is None else _cbor_bytes(key)) + b"\xf6"


def _cbor_bytes(data: bytes) -> bytes:
    """A CBOR byte string (major type 2)."""
    return _cbor_head(0x40, len(data)) + data


def cbor_array(items: list[bytes]) -> bytes:
    """A CBOR array (major type 4) of items each already encoded."""
    return _cbor_head(0x80, len(items)) + b"".join(items)


def _cbor_head(major: int, size: int) -> bytes:
    """The head of a CBOR item of `major` type and `size`, as short as cbor2 writes it."""
    if size < 24:
        return bytes((major | size,))
    if size < 0x100:
        return bytes((major | 24, size))
    if size < 0x10000:
        return bytes((major | 25,)) + size.to_bytes(2, "big")
    if size < 0x100000000:
        return bytes((major | 26,)) + size.to_bytes(4, "big")
    return bytes((major | 27,)) + size.to_bytes(8, "big")


def topic_range(topic_id: int) -> tuple[bytes, bytes]:
    """Every payload key of one topic lies in [start, end)."""
    return _PAYLOAD.pack(topic_id, 0), _PAYLOAD.pack(topic_id + 1, 0)


def key_hash(key: bytes) -> int:
    """A message key as a non-zero 56-bit number. Two keys that collide are ordered together:
    stricter than asked for, never looser."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=7).digest(), "big") + 1


def dead_letter_name(*parts: str) -> str:
    """The default dead-letter queue of a queue or subscription: its names and `.dlq`. A name
    over the 200 characters a name may have keeps its start and a hash of the whole, so it
    stays unique."""
    name = ".".join((*parts, "dlq"))
    if len(name) <= NAME_CHARS_MAX:
        return name
    digest = hashlib.blake2b(name.encode(), digest_size=8).hexdigest()
    return f"{name[: NAME_CHARS_MAX - 21]}.{digest}.dlq"


class Topic:
    """Offsets [first, next) are retained. Arrays hold offsets from `base` on; the front is
    cut lazily (at most half the arrays are dead), so dropping is amortised O(1)."""

    __slots__ = (
        "base",
        "bytes",
        "created_ms",
        "delayed",
        "expired",
        "first",
        "id",
        "keys",
        "kind",
        "max_age_ms",
        "max_bytes",
        "max_messages",
        "name",
        "next",
        "options",
        "sizes",
        "subs",
        "times",
    )

    def __init__(
        self,
        topic_id: int,
        name: str,
        kind: str,
        created_ms: int,
        max_messages: int = 0,
        max_bytes: int = 0,
        max_age_ms: int = 0,
        options: dict | None = None,
    ) -> None:
        self.id = topic_id
        self.name = name
        self.kind = kind
        self.created_ms = created_ms
        self.max_messages = max_messages  # 0: no limit
        self.max_bytes = max_bytes
        self.max_age_ms = max_age_ms
        #: subscription defaults (and the built-in subscription's settings, for a queue)
        self.options = options or {}
        self.first = 0
        self.next = 0
        self.bytes = 0
        self.base = 0
        self.times = array("q")
        self.sizes = array("q")
        self.keys = array("q")
        self.delayed: dict[int, int] = {}  # offset -> not deliverable before this stamp
        self.expired = 0  # messages dropped by retention
        self.subs: dict[str, object] = {}

    def append(self, now_ms: int, size: int, key: int, deliver_at_ms: int) -> int:
        offset = self.next
        self.next += 1
        self.times.append(now_ms)
        self.sizes.append(size)
        self.keys.append(key)
        self.bytes += size
        if deliver_at_ms > now_ms:
            self.delayed[offset] = deliver_at_ms
        return offset

    def stored_piece(self, end: int, piece: int) -> bytes:
        """The full piece ending before `end`, as stored: its first retained offset (8 bytes),
        then its times, sizes and keys. Only retained offsets: the same on every replica."""
        start = max(end - piece, self.first)
        low, high = start - self.base, end - self.base
        return b"".join(
            (
                start.to_bytes(8, "big"),
                self.times[low:high].tobytes(),
                self.sizes[low:high].tobytes(),
                self.keys[low:high].tobytes(),
            )
        )

    def time_of(self, offset: int) -> int:
        return self.times[offset - self.base]

    def size_of(self, offset: int) -> int:
        return self.sizes[offset - self.base]

    def key_of(self, offset: int) -> int:
        return self.keys[offset - self.base]

    @property
    def depth(self) -> int:
        return self.next - self.first

    def drop_below(self, offset: int) -> tuple[int, int]:
        """Retain nothing below `offset`; returns the range of offsets dropped."""
        old = self.first
        offset = min(offset, self.next)
        if offset <= old:
            return old, old
        start, end = old - self.base, offset - self.base
        self.bytes -= sum(self.sizes[start:end])
        if self.delayed:
            for dropped in [o for o in self.delayed if o < offset]:
                del self.delayed[dropped]
        self.first = offset
        dead = offset - self.base
        if dead > len(self.times) // 2:
            del self.times[:dead]
            del self.sizes[:dead]
            del self.keys[:dead]
            self.base = offset
        return old, offset

    def over_limit(self) -> bool:
        return bool(
            (self.max_messages and self.depth > self.max_messages)
            or (self.max_bytes and self.bytes > self.max_bytes)
        )

    def fits(self, count: int, size: int, done: int = 0, done_bytes: int = 0) -> bool:
        """Would `count` more messages of `size` bytes stay within the limits? `done` messages
        of `done_bytes` are retained but finished with (acked in a queue, above an earlier
        one still out): they do not count."""
        return not (
            (self.max_messages and self.depth - done + count > self.max_messages)
            or (self.max_bytes and self.bytes - done_bytes + size > self.max_bytes)
        )

    def first_over_age(self, now_ms: int) -> int:
        """The first offset young enough to keep under max_age_ms."""
        if not self.max_age_ms:
            return self.first
        limit = now_ms - self.max_age_ms
        offset = self.first
        times, base, end = self.times, self.base, self.next
        while offset < end and times[offset - base] <= limit:
            offset += 1
        return offset
