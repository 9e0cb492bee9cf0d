"""The replicated state machine: topics, subscriptions, queues and leased claims.

Pure and deterministic: the same commands in the same order give the same state and the same
results on every replica. It never reads a clock: time is the leader's stamp, carried in
`time` commands the node proposes (and clamped here so it never runs backwards). Payloads
live in the key space (`paxq.storage.keyspace`); only metadata is in memory.

A command is `header (16 bytes) + CBOR [op, {args}]`. Its result is a plain value (maps,
lists, ints, bytes) or a `MachineError`; a refused command changes nothing.

Payloads the state no longer needs are deleted only after the next snapshot is stored
(`snapshot` then `snapshot_saved`): a replica that restarts from its last snapshot replays
the log above it and may need any payload that snapshot still references.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cbor2

from paxq.client.wire import Encoded, ErrorCode
from paxq.client.wire.protocol import (
    DELAY_MS_MAX,
    HEADERS_MAX,
    KEY_BYTES_MAX,
    LEASE_MS_MAX,
    LEASES_MAX,
    LIST_TOPICS_MAX,
    MESSAGE_BYTES_MAX,
    MESSAGE_ID_CHARS_MAX,
    NACK_ERROR_CHARS_MAX,
    PRODUCER_WINDOW,
    PUBLISH_MESSAGES_MAX,
    REPLY_MESSAGES_BYTES_MAX,
    message_bytes,
)
from paxq.storage import KeySpace, SnapshotView

from . import args as check
from .errors import MachineError, bad
from .expiries import Expiries, Expiry
from .producers import Producers
from .snapshots import (
    SnapshotInvalid,
    absorb,
    payload_chunks,
    read_snapshot,
    write_snapshot,
)
from .subscriptions import Subscription
from .topics import (
    NO_KEY,
    QUEUE,
    TOPIC,
    Topic,
    cbor_array,
    dead_letter_name,
    key_hash,
    payload_key,
    piece_key,
    stored_payload,
    topic_range,
)

HEADER_BYTES = 16
#: commands whose header starts with this session come from the node itself (time stamps)
SYSTEM_SESSION = b"\0" * 8
#: the built-in subscription of a queue
QUEUE_SUBSCRIPTION = ""

Value = tuple[bytes, ...]


@dataclass(frozen=True)
class Limits:
    """Bounds and defaults of the machine. They are part of its replicated behaviour: every
    replica of a cluster must run with the same ones."""

    message_bytes_max: int = MESSAGE_BYTES_MAX  # body, key and encoded headers
    key_bytes_max: int = KEY_BYTES_MAX
    headers_max: int = HEADERS_MAX
    publish_messages_max: int = PUBLISH_MESSAGES_MAX
    claim_max: int = 1000
    #: a claim stops adding messages past this many payload bytes (it always gets one): the
    #: reply must fit a client frame, or the leases would be taken with nobody to hold them
    claim_bytes_max: int = REPLY_MESSAGES_BYTES_MAX
    leases_max: int = LEASES_MAX  # per ack, nack or extend
    lease_ms_max: int = LEASE_MS_MAX
    lease_ms_default: int = 30_000
    delay_ms_max: int = DELAY_MS_MAX
    topics_max: int = 10_000
    subscriptions_max: int = 1000  # per topic
    max_deliveries_default: int = 10
    backoff_base_ms_default: int = 1000
    backoff_max_ms_default: int = 60_000
    retention_messages_default: int = 10_000_000
    retention_bytes_default: int = 10 << 30
    retention_age_ms_default: int = 7 * 24 * 3600 * 1000  # topics only; queues keep until acked
    producer_window: int = PRODUCER_WINDOW
    producers_max: int = 10_000
    #: a message whose `id` the topic took within this long is a duplicate: not stored, and
    #: answered with the first one's offset; a topic remembers this many ids at most
    dedup_window_ms: int = 120_000
    dedup_ids_max: int = 100_000
    #: a claim looks at most this many new offsets (delayed or key-blocked ones are set aside)
    scan_max: int = 4096
    read_max: int = 1000
    #: a read stops adding messages past this many payload bytes (it always gets one)
    read_bytes_max: int = REPLY_MESSAGES_BYTES_MAX
    #: a topic's per-message arrays go to the key space in pieces of this many offsets
    #: (topics.py), which a snapshot names rather than carries
    array_piece_messages: int = 16_384

    def __post_init__(self) -> None:
        if self.array_piece_messages < 1:
            raise ValueError(f"array_piece_messages is {self.array_piece_messages}: at least 1")


_CREATE = frozenset(
    {
        "topic",
        "kind",
        "max_messages",
        "max_bytes",
        "max_age_ms",
        "max_deliveries",
        "dead_letter",
        "key_ordered",
        "backoff_base_ms",
        "backoff_max_ms",
    }
)
_SUBSCRIBE = frozenset(
    {
        "topic",
        "subscription",
        "start",
        "max_deliveries",
        "dead_letter",
        "key_ordered",
        "backoff_base_ms",
        "backoff_max_ms",
    }
)
_MESSAGE = frozenset({"body", "key", "headers", "delay_ms", "id"})
#: commands that may carry a producer id and sequence, which makes their retries harmless
_ONCE = frozenset({"producer", "seq"})
_PUBLISH = frozenset({"topic", "messages"}) | _ONCE


class QueueMachine:
    FORMAT = 4
    #: snapshot formats `restore` reads: 2 carried every array inline, 3 had no message ids
    FORMATS_READ = frozenset({2, 3, 4})

    def __init__(self, keys: KeySpace, limits: Limits | None = None) -> None:
        self.keys = keys
        self.limits = limits or Limits()
        self.slots = 0
        self.now_ms = 0
        self.token = 0  # the last lease token handed out
        self.next_topic_id = 1
        self.topics: dict[str, Topic] = {}
        self.by_id: dict[int, Topic] = {}
        #: heap of every lease's deadline, in groups; entries of leases since acked, given
        #: back or extended stay until popped or compacted away, and are skipped
        self.expiries = Expiries(lambda entry: self._current(entry) is not None)
        self.producers = Producers(self.limits.producer_window, self.limits.producers_max)
        #: per topic id, the message ids taken within the dedup window, oldest first:
        #: id -> (offset, stamp ms)
        self.message_ids: dict[int, OrderedDict[str, tuple[int, int]]] = {}
        self._garbage: list[tuple[bytes, bytes]] = []  # payload ranges to delete after a snapshot
        self._releasable: list[tuple[bytes, bytes]] = []
        #: names of topics where something became readable or claimable since the node last
        #: asked (`take_changed`): it wakes the requests that wait for that. Not replicated.
        self.changed: set[str] = set()
        #: leases that ran out (a metric: counted here, not replicated nor snapshotted)
        self.lease_expiries = 0
        #: the slot being applied will be answered (its claims carry payloads); see apply
        self._answered = True
        self._ops: dict[str, Callable[[dict], object]] = {
            "create": self._create,
            "delete": self._delete,
            "publish": self._publish,
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "claim": self._claim,
            "ack": self._ack,
            "nack": self._nack,
            "release": self._release,
            "reject": self._reject,
            "extend": self._extend,
            "purge": self._purge,
        }

    # ----------------------------------------------------------------------------- apply

    def apply(self, slot: int, value: Value, answered: bool = True) -> list[object]:
        self.slots = slot + 1
        self._answered = answered
        try:
            return [self.run(command) for command in value]
        finally:
            self._answered = True

    def run(self, command: bytes) -> object:
        """One command's result (a refusal is returned as a MachineError, not raised)."""
        try:
            request = cbor2.loads(command[HEADER_BYTES:])
        except Exception:
            return bad("the command is not CBOR")
        if (
            type(request) is not list
            or len(request) != 2
            or type(request[0]) is not str
            or type(request[1]) is not dict
        ):
            return bad("a command is [op, {arguments}]")
        op, arguments = request
        if op == "time":
            if command[:8] != SYSTEM_SESSION or type(arguments.get("ms")) is not int:
                return bad("time entries come from the node")
            self.advance(arguments["ms"])
            return None
        handler = self._ops.get(op)
        if handler is None:
            return MachineError(ErrorCode.UNKNOWN_OPERATION, f"unknown operation {op!r}")
        try:
            return handler(arguments)
        except MachineError as error:
            return error

    # ------------------------------------------------------------------------------ time

    def advance(self, stamp_ms: int) -> None:
        """The leader's clock says `stamp_ms`: time moves on (never back), leases expire,
        old messages leave."""
        if stamp_ms <= self.now_ms:
            return
        now = self.now_ms = stamp_ms
        for entry in self.expiries.due(now):
            found = self._current(entry)
            if found is None:
                continue  # acked, extended or given back since
            topic, sub = found
            offset = entry[3]
            self.lease_expiries += 1
            if not sub.give_back(offset, now):
                self._dead_letter(topic, sub, offset, "expired")
            self.changed.add(topic.name)
        for topic in self.topics.values():
            if topic.max_age_ms and topic.next > topic.first:
                keep = topic.first_over_age(now)
                if keep > topic.first:
                    self._drop(topic, keep, expired=True)

    def due_ms(self) -> int | None:
        """The earliest stamp at which a time entry would change the state (a lease expires
        or a message ages out), if any: the node proposes one then, traffic or not."""
        lease = self.expiries.next_ms()
        due = [] if lease is None else [lease]
        for topic in self.topics.values():
            if topic.max_age_ms and topic.next > topic.first:
                due.append(topic.time_of(topic.first) + topic.max_age_ms + 1)
        return min(due) if due else None

    def _current(self, entry: Expiry) -> tuple[Topic, Subscription] | None:
        """The topic and subscription of an expiry entry whose lease is still the one it
        was pushed for; None for a stale entry."""
        deadline, topic_id, name, offset, token = entry
        topic = self.by_id.get(topic_id)
        sub = topic.subs.get(name) if topic is not None else None
        lease = sub.leases.get(offset) if sub is not None else None
        if lease is None or lease[0] != token or lease[1] != deadline:
            return None
        return topic, sub

    # ---------------------------------------------------------------------------- topics

    def _topic(self, arguments: dict) -> Topic:
        name = check.name(arguments, "topic")
        topic = self.topics.get(name)
        if topic is None:
            raise MachineError(ErrorCode.UNKNOWN_TOPIC, f"no topic {name!r}")
        return topic

    def _subscription_options(self, arguments: dict, default_dead_letter: str) -> dict:
        limits = self.limits
        dead_letter = arguments.get("dead_letter", default_dead_letter)
        if dead_letter is not None:
            dead_letter = check.name({"dead_letter": dead_letter}, "dead_letter")
        base = check.integer(
            arguments, "backoff_base_ms", limits.backoff_base_ms_default, 0, limits.delay_ms_max
        )
        return {
            "max_deliveries": check.integer(
                arguments, "max_deliveries", limits.max_deliveries_default, 0, 1 << 30
            ),
            "dead_letter": dead_letter,
            "key_ordered": check.flag(arguments, "key_ordered", False),
            "backoff_base_ms": base,
            "backoff_max_ms": check.integer(
                arguments,
                "backoff_max_ms",
                max(base, limits.backoff_max_ms_default),
                base,
                limits.delay_ms_max,
            ),
        }

    def _create(self, arguments: dict) -> object:
        limits = self.limits
        check.known_fields(arguments, _CREATE, "create")
        name = check.name(arguments, "topic")
        kind = arguments.get("kind", TOPIC)
        if kind not in (TOPIC, QUEUE):
            raise bad("kind is 'topic' or 'queue'")
        if name in self.topics:
            raise MachineError(ErrorCode.TOPIC_EXISTS, f"topic {name!r} exists")
        if len(self.topics) >= limits.topics_max:
            raise MachineError(ErrorCode.OVERLOADED, f"at most {limits.topics_max} topics")
        max_messages = check.integer(
            arguments, "max_messages", limits.retention_messages_default, 1
        )
        max_bytes = check.integer(arguments, "max_bytes", limits.retention_bytes_default, 1)
        age_default = limits.retention_age_ms_default if kind == TOPIC else 0
        max_age_ms = check.integer(arguments, "max_age_ms", age_default, 0)
        if kind == QUEUE:
            options = self._subscription_options(arguments, dead_letter_name(name))
        else:
            extra = set(arguments) - {"topic", "kind", "max_messages", "max_bytes", "max_age_ms"}
            if extra:
                raise bad(f"{sorted(extra)} are subscription settings: give them to subscribe")
            options = {}
        self._new_topic(name, kind, max_messages, max_bytes, max_age_ms, options)
        return {"topic": name, "kind": kind}

    def _new_topic(
        self, name: str, kind: str, max_messages: int, max_bytes: int, max_age_ms: int, options
    ) -> Topic:
        topic = Topic(
            self.next_topic_id,
            name,
            kind,
            self.now_ms,
            max_messages,
            max_bytes,
            max_age_ms,
            options,
        )
        self.next_topic_id += 1
        self.topics[name] = topic
        self.by_id[topic.id] = topic
        if kind == QUEUE:
            topic.subs[QUEUE_SUBSCRIPTION] = Subscription(
                QUEUE_SUBSCRIPTION, topic, 0, self.now_ms, **options
            )
        return topic

    def _delete(self, arguments: dict) -> object:
        check.known_fields(arguments, frozenset({"topic"}), "delete")
        topic = self._topic(arguments)
        del self.topics[topic.name]
        del self.by_id[topic.id]
        self.message_ids.pop(topic.id, None)
        self._garbage.append(topic_range(topic.id))
        self.changed.add(topic.name)  # its waiting readers learn it is gone
        return {"topic": topic.name, "deleted": self._held(topic)[0]}

    @staticmethod
    def _held(topic: Topic) -> tuple[int, int]:
        """Messages and bytes the topic holds against its limits: a queue's acked messages
        that wait above an earlier one still out do not count."""
        if topic.kind == QUEUE:
            sub = topic.subs[QUEUE_SUBSCRIPTION]
            return topic.depth - len(sub.done), topic.bytes - sub.done_bytes
        return topic.depth, topic.bytes

    def _fits(self, topic: Topic, count: int, size: int) -> bool:
        if topic.kind != QUEUE:
            return True  # a topic makes room by retention
        sub = topic.subs[QUEUE_SUBSCRIPTION]
        return topic.fits(count, size, len(sub.done), sub.done_bytes)

    def _append(self, topic: Topic, ready: list[tuple[bytes, int, int]]) -> int:
        """Append checked (payload, key hash, delay) messages; returns the first offset. A
        topic then drops its oldest messages to stay within its retention."""
        now = self.now_ms
        first = topic.next
        put = self.keys.put
        piece = self.limits.array_piece_messages
        for payload, key, delay_ms in ready:
            offset = topic.append(now, len(payload), key, now + delay_ms)
            put(payload_key(topic.id, offset), payload)
            if (offset + 1) % piece == 0:
                self._store_piece(topic, offset + 1)
        if topic.kind == TOPIC and topic.over_limit():
            self._drop(topic, self._first_within_limits(topic), expired=True)
        self.changed.add(topic.name)
        return first

    def _store_piece(self, topic: Topic, end: int) -> None:
        """The full piece of arrays ending before `end` into the key space (topics.py)."""
        size = self.limits.array_piece_messages
        self.keys.put(piece_key(topic.id, end // size - 1), topic.stored_piece(end, size))

    def _free(self, start: bytes, end: bytes) -> None:
        """Payload keys in [start, end) may go after the next snapshot. Adjacent ranges are
        merged: acks mostly come in order."""
        garbage = self._garbage
        if garbage and garbage[-1][1] == start:
            garbage[-1] = (garbage[-1][0], end)
        else:
            garbage.append((start, end))

    def _drop(self, topic: Topic, below: int, expired: bool = False) -> None:
        """Offsets below `below` leave the topic and every subscription: by retention
        (`expired`), purge, or because a queue is done with them."""
        old, new = topic.drop_below(below)
        if new > old:
            if expired:
                topic.expired += new - old
            self._free(payload_key(topic.id, old), payload_key(topic.id, new))
            size = self.limits.array_piece_messages
            if new // size > old // size:  # pieces of arrays wholly dropped
                self._free(piece_key(topic.id, old // size), piece_key(topic.id, new // size))
            for sub in topic.subs.values():
                sub.skip_below(new, self.now_ms)

    # --------------------------------------------------------------------------- publish

    def _publish(self, arguments: dict) -> object:
        limits = self.limits
        check.known_fields(arguments, _PUBLISH, "publish")
        topic = self._topic(arguments)

        def append() -> dict:
            messages = arguments.get("messages")
            if type(messages) is not list or not 0 < len(messages) <= limits.publish_messages_max:
                raise bad(f"messages must be a list of 1 to {limits.publish_messages_max}")
            ready = [self._message(message) for message in messages]  # all checked first
            ids = [_message_id(message) for message in messages]
            duplicates: dict[int, int] = {}
            taken: dict[str, int] = {}
            if any(ids):
                ready, duplicates, taken = self._deduplicate(topic, ready, ids)
            total = sum(len(payload) for payload, _, _ in ready)
            if not self._fits(topic, len(ready), total):
                held, held_bytes = self._held(topic)
                raise MachineError(
                    ErrorCode.FULL,
                    f"queue {topic.name!r} holds {held} messages, {held_bytes} bytes: "
                    f"its limit is {topic.max_messages} messages, {topic.max_bytes} bytes",
                )
            first = self._append(topic, ready) if ready else topic.next
            result: dict = {"offset": first, "count": len(ready)}
            if taken:
                self._remember_ids(topic, taken)
            if duplicates:  # [index in the request, the first one's offset]
                result["duplicates"] = [[i, at] for i, at in sorted(duplicates.items())]
            return result

        return self._once(topic, arguments, append)

    def _deduplicate(
        self, topic: Topic, ready: list[tuple[bytes, int, int]], ids: list[str | None]
    ) -> tuple[list[tuple[bytes, int, int]], dict[int, int], dict[str, int]]:
        """The messages to store, the duplicates (index -> the first one's offset: taken
        within the window, or earlier in this request) and the new ids with their offsets."""
        known = self.message_ids.get(topic.id, {})
        since = self.now_ms - self.limits.dedup_window_ms
        fresh: list[tuple[bytes, int, int]] = []
        duplicates: dict[int, int] = {}
        taken: dict[str, int] = {}
        offset = topic.next
        for index, (message, message_id) in enumerate(zip(ready, ids, strict=True)):
            if message_id is not None:
                earlier = known.get(message_id)
                if earlier is not None and earlier[1] > since:
                    duplicates[index] = earlier[0]
                    continue
                if message_id in taken:
                    duplicates[index] = taken[message_id]
                    continue
                taken[message_id] = offset
            fresh.append(message)
            offset += 1
        return fresh, duplicates, taken

    def _remember_ids(self, topic: Topic, taken: dict[str, int]) -> None:
        known = self.message_ids.get(topic.id)
        if known is None:
            known = self.message_ids[topic.id] = OrderedDict()
        now = self.now_ms
        for message_id, offset in taken.items():
            known.pop(message_id, None)  # (one past the window: taken again, newest now)
            known[message_id] = (offset, now)
        since = now - self.limits.dedup_window_ms
        while known and (
            len(known) > self.limits.dedup_ids_max or next(iter(known.values()))[1] <= since
        ):
            known.popitem(last=False)

    def _once(self, topic: Topic, arguments: dict, act: Callable[[], dict]) -> object:
        """Run `act` once per (producer, seq) on the topic: a retried command that carries
        the same producer and sequence gets the first one's result, marked `duplicate`.
        Refusals are not remembered (they changed nothing: a retry is a fresh attempt)."""
        if arguments.get("producer") is None:
            if "seq" in arguments:
                raise bad("seq needs a producer")
            return act()
        producer = check.name(arguments, "producer")
        seq = check.integer(arguments, "seq", -1, 0)
        earlier = self.producers.lookup(topic.id, producer, seq)
        if earlier is not None:
            return {**earlier, "duplicate": True}
        result = act()
        self.producers.record(topic.id, producer, seq, result)
        return result

    @staticmethod
    def _first_within_limits(topic: Topic) -> int:
        """The first offset to keep so the topic fits its message and byte limits."""
        below = max(topic.first, topic.next - topic.max_messages)
        sizes, base = topic.sizes, topic.base
        excess = topic.bytes - sum(sizes[topic.first - base : below - base]) - topic.max_bytes
        while excess > 0 and below < topic.next:
            excess -= sizes[below - base]
            below += 1
        return below

    def _message(self, message: object) -> tuple[bytes, int, int]:
        """(stored payload, key hash, delay) of one message to publish, checked."""
        limits = self.limits
        if type(message) is not dict:
            raise bad("each message is a map with a body")
        check.known_fields(message, _MESSAGE, "a message")
        body = message.get("body")
        if type(body) is not bytes:
            raise bad("a message body is bytes")
        key = message.get("key")
        if key is not None and (type(key) is not bytes or len(key) > limits.key_bytes_max):
            raise bad(f"a message key is bytes, at most {limits.key_bytes_max}")
        headers = message.get("headers")
        if headers is not None and (
            type(headers) is not dict
            or len(headers) > limits.headers_max
            or not all(type(k) is str and type(v) in (str, bytes, int) for k, v in headers.items())
        ):
            raise bad(f"headers map names to str, bytes or int, at most {limits.headers_max}")
        delay_ms = check.integer(message, "delay_ms", 0, 0, limits.delay_ms_max)
        size = message_bytes(body, key, None if headers is None else cbor2.dumps(headers))
        if size > limits.message_bytes_max:
            raise MachineError(
                ErrorCode.TOO_LARGE,
                f"message of {size:,} bytes; the largest is {limits.message_bytes_max:,}"
                " (body, key and encoded headers)",
            )
        payload = stored_payload(body, key, headers)
        return payload, (NO_KEY if key is None else key_hash(key)), delay_ms

    def payload(self, topic: Topic, offset: int) -> tuple[bytes, bytes | None, dict | None]:
        raw = _present(topic, offset, self.keys.get(payload_key(topic.id, offset)))
        body, key, headers = cbor2.loads(raw)
        return body, key, headers

    def payloads(self, topic: Topic, offsets: list[int]) -> list[list]:
        """[body, key, headers] of each offset."""
        return [cbor2.loads(raw) for raw in self.stored_payloads(topic, offsets)]

    def stored_payloads(self, topic: Topic, offsets: list[int]) -> list[bytes]:
        """Each offset's payload as stored, CBOR [body, key, headers], read in one pass over
        the key space."""
        raws = self.keys.get_many([payload_key(topic.id, offset) for offset in offsets])
        return [_present(topic, offset, raw) for offset, raw in zip(offsets, raws, strict=True)]

    # ----------------------------------------------------------------------- subscriptions

    def _subscription(self, arguments: dict) -> tuple[Topic, Subscription]:
        topic = self._topic(arguments)
        if topic.kind == QUEUE and arguments.get("subscription") is None:
            name = QUEUE_SUBSCRIPTION
        elif arguments.get("subscription") is None:
            names = sorted(topic.subs)
            some = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
            raise bad(
                f"{topic.name!r} is a topic: name one of its subscriptions "
                f"({some or 'it has none yet'})"
            )
        else:
            name = check.name(arguments, "subscription")
        sub = topic.subs.get(name)
        if sub is None:
            raise MachineError(
                ErrorCode.UNKNOWN_SUBSCRIPTION, f"topic {topic.name!r} has no subscription {name!r}"
            )
        return topic, sub

    def _subscribe(self, arguments: dict) -> object:
        check.known_fields(arguments, _SUBSCRIBE, "subscribe")
        topic = self._topic(arguments)
        name = check.name(arguments, "subscription")
        if topic.kind == QUEUE:
            raise bad(f"{topic.name!r} is a queue: it has one built-in subscription")
        if name in topic.subs:
            raise MachineError(
                ErrorCode.SUBSCRIPTION_EXISTS, f"topic {topic.name!r} has subscription {name!r}"
            )
        if len(topic.subs) >= self.limits.subscriptions_max:
            raise MachineError(
                ErrorCode.OVERLOADED, f"at most {self.limits.subscriptions_max} subscriptions"
            )
        start = arguments.get("start", "latest")
        if start == "latest":
            offset = topic.next
        elif start == "earliest":
            offset = topic.first
        elif type(start) is int and start >= 0:
            offset = min(max(start, topic.first), topic.next)
        else:
            raise bad("start is 'earliest', 'latest' or an offset")
        default = dead_letter_name(topic.name, name)
        options = self._subscription_options(arguments, default)
        topic.subs[name] = Subscription(name, topic, offset, self.now_ms, **options)
        return {"topic": topic.name, "subscription": name, "offset": offset}

    def _unsubscribe(self, arguments: dict) -> object:
        check.known_fields(arguments, frozenset({"topic", "subscription"}), "unsubscribe")
        topic, sub = self._subscription(arguments)
        if topic.kind == QUEUE:
            raise bad("a queue's subscription goes with the queue: delete the queue")
        del topic.subs[sub.name]
        self.changed.add(topic.name)  # its waiting claims learn it is gone
        return {"topic": topic.name, "subscription": sub.name}

    def _purge(self, arguments: dict) -> object:
        check.known_fields(arguments, frozenset({"topic", "subscription"}), "purge")
        topic = self._topic(arguments)
        if arguments.get("subscription") is None and topic.kind == TOPIC:
            dropped = topic.depth
            self._drop(topic, topic.next)
            return {"purged": dropped}
        topic, sub = self._subscription(arguments)
        dropped = sub.purge(self.now_ms)
        self._work_done(topic, sub)
        return {"purged": dropped}

    # ---------------------------------------------------------------------------- leases

    def _claim(self, arguments: dict) -> object:
        limits = self.limits
        check.known_fields(
            arguments,
            frozenset({"topic", "subscription", "max", "max_bytes", "lease_ms", "consumer"}),
            "claim",
        )
        topic, sub = self._subscription(arguments)
        count = check.integer(arguments, "max", 1, 1, limits.claim_max)
        bytes_max = check.integer(
            arguments, "max_bytes", limits.claim_bytes_max, 1, limits.claim_bytes_max
        )
        lease_ms = check.integer(
            arguments, "lease_ms", limits.lease_ms_default, 1, limits.lease_ms_max
        )
        consumer = arguments.get("consumer", "")
        if type(consumer) is not str or len(consumer) > check.NAME_CHARS_MAX:
            raise bad("consumer is a string of at most 200 characters")
        now = self.now_ms
        deadline = now + lease_ms
        offsets = sub.claimable(now, count, limits.scan_max, bytes_max)
        tokens = list(range(self.token + 1, self.token + 1 + len(offsets)))
        self.token += len(offsets)
        deliveries = sub.lease_many(offsets, tokens, deadline, consumer)
        self.expiries.add(deadline, topic.id, sub.name, list(zip(offsets, tokens, strict=True)))
        time_of = topic.time_of
        result: dict = {
            "offsets": offsets,
            "tokens": tokens,
            "deliveries": deliveries,
            "deadline_ms": deadline,
            "published_ms": [time_of(offset) for offset in offsets],
            "now_ms": now,
        }
        if self._answered:  # else nobody hears it: no payload is read back
            result["payloads"] = Encoded(cbor_array(self.stored_payloads(topic, offsets)))
        if not offsets:
            # When to look again, for a claim that waits (a hint: it may be early, never
            # late): at once if the scan stopped at its bound short of the end, else when a
            # delayed or backed-off message falls due.
            if sub.cursor < topic.next:
                result["next_due_ms"] = now
            elif sub.waiting:
                result["next_due_ms"] = sub.waiting[0][0]
        return result

    def _leases(self, arguments: dict, op: str, extra: frozenset[str]) -> tuple:
        check.known_fields(
            arguments, frozenset({"topic", "subscription", "leases"}) | extra | _ONCE, op
        )
        topic, sub = self._subscription(arguments)
        leases = check.leases(arguments, self.limits.leases_max)
        return topic, sub, leases

    def _refuse_lost(self, sub: Subscription, leases: list[tuple[int, int]]) -> None:
        lost = sub.lost(leases, self.now_ms)
        if lost:
            raise MachineError(
                ErrorCode.LEASE_LOST,
                f"{len(lost)} of {len(leases)} leases are no longer held: nothing was changed",
                lost,
            )

    def _ack(self, arguments: dict) -> object:
        topic, sub, leases = self._leases(arguments, "ack", frozenset())

        def ack() -> dict:
            self._refuse_lost(sub, leases)
            offsets = [offset for offset, _ in leases]
            sub.finish(offsets, self.now_ms)
            sub.acked += len(offsets)
            self._work_done(topic, sub, offsets)
            if sub.key_ordered:
                self.changed.add(topic.name)  # the next message of a key may be out now
            return {"acked": len(leases)}

        return self._once(topic, arguments, ack)

    def _nack(self, arguments: dict) -> object:
        topic, sub, leases = self._leases(arguments, "nack", frozenset({"delay_ms", "error"}))
        delay_ms = check.optional_integer(arguments, "delay_ms", 0, self.limits.delay_ms_max)
        error = check.optional_text(arguments, "error", NACK_ERROR_CHARS_MAX)

        def nack() -> dict:
            self._refuse_lost(sub, leases)
            now = self.now_ms
            dead = 0
            for offset, _ in leases:
                wait = sub.backoff_ms(offset) if delay_ms is None else delay_ms
                if not sub.give_back(offset, now + wait):
                    self._dead_letter(topic, sub, offset, "nacked", error)
                    dead += 1
            self.changed.add(topic.name)
            return {"nacked": len(leases), "dead_lettered": dead}

        return self._once(topic, arguments, nack)

    def _release(self, arguments: dict) -> object:
        """Hand back leases unprocessed: redelivered at once, the delivery uncounted (a
        consumer that stops with prefetched messages must not push them to the dead
        letters)."""
        topic, sub, leases = self._leases(arguments, "release", frozenset())

        def release() -> dict:
            self._refuse_lost(sub, leases)
            now = self.now_ms
            for offset, _ in leases:
                sub.release(offset, now)
            self.changed.add(topic.name)
            return {"released": len(leases)}

        return self._once(topic, arguments, release)

    def _reject(self, arguments: dict) -> object:
        """No delivery can succeed (a malformed message, an error that retrying cannot
        mend): dead-lettered at once, whatever deliveries it has left, as RabbitMQ's reject
        without requeue."""
        topic, sub, leases = self._leases(arguments, "reject", frozenset({"error"}))
        error = check.optional_text(arguments, "error", NACK_ERROR_CHARS_MAX)

        def reject() -> dict:
            self._refuse_lost(sub, leases)
            for offset, _ in leases:
                self._dead_letter(topic, sub, offset, "rejected", error)
            if sub.key_ordered:
                self.changed.add(topic.name)
            return {"rejected": len(leases)}

        return self._once(topic, arguments, reject)

    def _extend(self, arguments: dict) -> object:
        limits = self.limits
        topic, sub, leases = self._leases(arguments, "extend", frozenset({"lease_ms"}))
        lease_ms = check.integer(
            arguments, "lease_ms", limits.lease_ms_default, 1, limits.lease_ms_max
        )

        def extend() -> dict:
            self._refuse_lost(sub, leases)
            deadline = self.now_ms + lease_ms
            moved = []
            for offset, token in leases:
                held = sub.leases[offset]
                if held[1] != deadline:  # the same deadline has its heap entry already
                    held[1] = deadline
                    moved.append((offset, token))
            self.expiries.add(deadline, topic.id, sub.name, moved)
            return {"deadline_ms": deadline}

        return self._once(topic, arguments, extend)

    def _dead_letter(
        self, topic: Topic, sub: Subscription, offset: int, reason: str, error: str | None = None
    ) -> None:
        """The message used up its deliveries: a copy goes to the dead-letter target (a queue
        created on first use, or an existing topic), and the subscription is done with it.
        With no room for the copy (its queue full, no room for a new queue) it is counted in
        `dead_letter_dropped`: the source is not held up behind its dead letters."""
        deliveries = sub.counts.get(offset, 0)
        sub.dead_lettered += 1
        target_name = sub.dead_letter
        if target_name is not None:
            target = self.topics.get(target_name)
            if target is None and len(self.topics) < self.limits.topics_max:
                target = self._dead_letter_queue(target_name)
            body, key, headers = self.payload(topic, offset)
            death = dict(headers or {})
            death.update(
                {
                    "x-death-topic": topic.name,
                    "x-death-subscription": sub.name,
                    "x-death-offset": offset,
                    "x-death-deliveries": deliveries,
                    "x-death-reason": reason,
                }
            )
            if error is not None:  # what the handler raised, as the nack that ended it said
                death["x-death-error"] = error
            payload = cbor2.dumps([body, key, death])
            copy = (payload, NO_KEY if key is None else key_hash(key), 0)
            if target is not None and target is not topic and self._fits(target, 1, len(payload)):
                self._append(target, [copy])
            else:
                sub.dead_letter_dropped += 1
        sub.finish([offset], self.now_ms)
        self._work_done(topic, sub, [offset])

    def _dead_letter_queue(self, name: str) -> Topic:
        limits = self.limits
        return self._new_topic(
            name,
            QUEUE,
            limits.retention_messages_default,
            limits.retention_bytes_default,
            0,
            {  # a dead-letter queue's own messages are never dead-lettered again
                "max_deliveries": 0,
                "dead_letter": None,
                "key_ordered": False,
                "backoff_base_ms": limits.backoff_base_ms_default,
                "backoff_max_ms": limits.backoff_max_ms_default,
            },
        )

    def _work_done(self, topic: Topic, sub: Subscription, finished: list[int] = ()) -> None:
        """A queue keeps a message only until its subscription is done with it: the front
        leaves the topic, and an acked message behind one still out gives up its payload."""
        if topic.kind != QUEUE:
            return
        if sub.floor > topic.first:
            self._drop(topic, sub.floor)
        done = sub.done
        for offset in finished:
            if offset in done:
                self._free(payload_key(topic.id, offset), payload_key(topic.id, offset + 1))

    # --------------------------------------------------------------------------- queries

    def take_changed(self) -> set[str]:
        changed, self.changed = self.changed, set()
        return changed

    def list_topics(self, after: str | None = None, limit: int = LIST_TOPICS_MAX) -> list[dict]:
        """Topics by name, those after `after`, at most `limit` (a page: 10,000 topics of
        long names would not fit one frame)."""
        names = sorted(name for name in self.topics if after is None or name > after)
        return [
            {"topic": t.name, "kind": t.kind, "first": t.first, "next": t.next}
            for t in (self.topics[name] for name in names[:limit])
        ]

    def describe(self, name: str) -> dict:
        topic = self.topics.get(name)
        if topic is None:
            raise MachineError(ErrorCode.UNKNOWN_TOPIC, f"no topic {name!r}")
        subs = {}
        for sub_name, sub in sorted(topic.subs.items()):
            subs[sub_name] = {
                **sub.stats(self.now_ms),
                "max_deliveries": sub.max_deliveries,
                "dead_letter": sub.dead_letter,
                "key_ordered": sub.key_ordered,
            }
        return {
            "topic": topic.name,
            "kind": topic.kind,
            "first": topic.first,
            "next": topic.next,
            "messages": self._held(topic)[0],
            "bytes": self._held(topic)[1],
            "expired": topic.expired,
            "retention": {
                "max_messages": topic.max_messages,
                "max_bytes": topic.max_bytes,
                "max_age_ms": topic.max_age_ms,
            },
            "subscriptions": subs,
            "now_ms": self.now_ms,
        }

    def read(self, name: str, start: int, limit: int) -> dict:
        """Retained messages from `start` on (a live tail's read), at most `limit` and (past
        the first) `read_bytes_max` of payload: no state changes. A queue's acked messages
        are skipped. `next` is where the following read starts."""
        topic = self.topics.get(name)
        if topic is None:
            raise MachineError(ErrorCode.UNKNOWN_TOPIC, f"no topic {name!r}")
        limits = self.limits
        done = topic.subs[QUEUE_SUBSCRIPTION].done if topic.kind == QUEUE else {}
        first = offset = max(start, topic.first)
        end = min(topic.next, first + max(0, min(limit, limits.read_max)))
        offsets = []
        size = 0
        while offset < end:
            if offset not in done:
                size += topic.size_of(offset)
                if offsets and size > limits.read_bytes_max:
                    break
                offsets.append(offset)
            offset += 1
        messages = [
            {"offset": at, "body": body, "key": key, "headers": headers}
            for at, (body, key, headers) in zip(offsets, self.payloads(topic, offsets), strict=True)
        ]
        return {"from": first, "next": offset, "end": topic.next, "messages": messages}

    # ------------------------------------------------------------------------- snapshots

    def snapshot(self, chunk_bytes: int) -> list[bytes]:
        """The metadata as chunks (payloads stay in the key space, which this flushes).
        Payloads freed so far may be deleted once these chunks are stored: `snapshot_saved`."""
        self.keys.flush()
        self._releasable.extend(self._garbage)  # a snapshot before the last was saved
        self._garbage = []
        return write_snapshot(self, chunk_bytes)

    def snapshot_saved(self) -> None:
        released, self._releasable = self._releasable, []
        for start, end in released:
            self.keys.delete_range(start, end)

    def restore(self, chunks: list[bytes]) -> None:
        """Adopt a snapshot. Payloads it no longer covers (whose deletion a crash kept from
        becoming durable: everything of topics that are gone, and below each topic's first
        offset, with the pieces of arrays wholly below it) go at the next `snapshot_saved`,
        once this snapshot is stored: deleted before, a crash could leave the older stored
        snapshot without payloads it needs."""
        read_snapshot(self, chunks)
        self.keys.flush()
        low = 0
        size = self.limits.array_piece_messages
        for topic_id in sorted(self.by_id):
            first = self.by_id[topic_id].first
            self._releasable.append((topic_range(low)[0], payload_key(topic_id, first)))
            self._releasable.append((piece_key(topic_id, 0), piece_key(topic_id, first // size)))
            low = topic_id + 1
        self._releasable.append((topic_range(low)[0], topic_range(self.next_topic_id)[0]))

    def absorb(self, chunk: bytes) -> bool:
        """A chunk of a snapshot being received: payloads are stored at once (False),
        metadata is to be kept for `restore` (True). Keeps a large transfer out of memory."""
        return absorb(self.keys, chunk)

    def flush(self) -> None:
        """Write the payloads applied so far (unsynced; see the module's note)."""
        self.keys.flush()

    @staticmethod
    def shipped(view: SnapshotView, chunk_bytes: int) -> tuple[int, Iterator[bytes]]:
        """What a peer receives: the stored snapshot's chunks, then the payloads of the key
        space as of the same moment. Touches no state of the machine (runs in a thread)."""
        count, payloads = payload_chunks(view.keys, chunk_bytes)
        return len(view.chunks) + count, itertools.chain(view.chunks, payloads)


__all__ = [
    "HEADER_BYTES",
    "QUEUE_SUBSCRIPTION",
    "SYSTEM_SESSION",
    "Limits",
    "QueueMachine",
    "SnapshotInvalid",
]


def _present(topic: Topic, offset: int, raw: bytes | None) -> bytes:
    if raw is None:
        raise AssertionError(f"payload of {topic.name}@{offset} missing from the key space")
    return raw


def _message_id(message: dict) -> str | None:
    message_id = message.get("id")
    if message_id is not None and (
        type(message_id) is not str or not 0 < len(message_id) <= MESSAGE_ID_CHARS_MAX
    ):
        raise bad(f"a message id is text of 1 to {MESSAGE_ID_CHARS_MAX} characters")
    return message_id
