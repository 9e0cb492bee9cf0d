"""The replicated state machine, one operation at a time: results, errors, and that a refused
command leaves the state exactly as it was."""

from __future__ import annotations

import io

import cbor2
import pytest

from paxq.broker.machine import (
    Limits,
    MachineError,
    QueueMachine,
    SnapshotInvalid,
    claimed,
    command,
    time_command,
)
from paxq.broker.machine.snapshots import write_snapshot
from paxq.broker.machine.topics import stored_payload
from paxq.client.wire import Encoded, ErrorCode
from paxq.storage import MemoryKeySpace


class Driver:
    """Runs commands against one machine, as the log would, with time from stamps."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.store: dict[bytes, bytes] = {}
        self.machine = QueueMachine(MemoryKeySpace(self.store), limits)
        self.seq = 0
        self.at(1_000)

    def at(self, stamp_ms: int) -> None:
        self.seq += 1
        self.machine.apply(self.machine.slots, (time_command(0, self.seq, stamp_ms),))

    def __call__(self, op: str, **arguments) -> object:
        self.seq += 1
        value = (command(b"client01", self.seq, op, arguments),)
        return self.machine.apply(self.machine.slots, value)[0]

    def ok(self, op: str, **arguments) -> dict:
        result = self(op, **arguments)
        assert not isinstance(result, MachineError), result
        return result

    def refused(self, code: ErrorCode, op: str, **arguments) -> MachineError:
        """The command is refused with `code` and changes nothing."""
        before = state(self.machine), dict(self.store)
        result = self(op, **arguments)
        assert isinstance(result, MachineError), result
        assert result.code == code, result
        assert (state(self.machine), dict(self.store)) == before
        return result

    def publish(self, topic: str, *bodies: bytes, **extra) -> int:
        messages = [{"body": body, **extra} for body in bodies]
        return self.ok("publish", topic=topic, messages=messages)["offset"]

    def claim(self, topic: str, max: int = 10, lease_ms: int = 1000, **extra) -> list[dict]:
        return claimed(self.ok("claim", topic=topic, max=max, lease_ms=lease_ms, **extra))

    def stats(self, topic: str, sub: str = "") -> dict:
        return self.machine.describe(topic)["subscriptions"][sub]


def state(machine: QueueMachine) -> bytes:
    slots = machine.slots
    machine.slots = 0  # the slot moves with every command, refused or not
    try:
        return b"".join(write_snapshot(machine, 1 << 20))
    finally:
        machine.slots = slots


def lease(message: dict) -> list[int]:
    return [message["offset"], message["token"]]


@pytest.fixture
def d() -> Driver:
    return Driver()


def test_topics_are_created_listed_described_and_deleted(d: Driver) -> None:
    assert d.ok("create", topic="orders") == {"topic": "orders", "kind": "topic"}
    assert d.ok("create", topic="jobs", kind="queue")["kind"] == "queue"
    assert [t["topic"] for t in d.machine.list_topics()] == ["jobs", "orders"]
    assert [t["topic"] for t in d.machine.list_topics(after="jobs", limit=1)] == ["orders"]
    assert d.machine.list_topics(after="orders") == []
    assert d.publish("orders", b"a", b"b") == 0
    assert d.publish("orders", b"c") == 2
    described = d.machine.describe("orders")
    assert (described["first"], described["next"], described["messages"]) == (0, 3, 3)
    assert d.ok("delete", topic="orders") == {"topic": "orders", "deleted": 3}
    assert [t["topic"] for t in d.machine.list_topics()] == ["jobs"]
    d.refused(ErrorCode.UNKNOWN_TOPIC, "delete", topic="orders")
    d.refused(ErrorCode.TOPIC_EXISTS, "create", topic="jobs")
    with pytest.raises(MachineError):
        d.machine.describe("orders")


def test_bad_arguments_are_refused_without_change(d: Driver) -> None:
    d.ok("create", topic="t")
    d.ok("create", topic="q", kind="queue")
    bad = ErrorCode.BAD_REQUEST
    d.refused(bad, "create", topic="no spaces")
    d.refused(bad, "create", topic="")
    d.refused(bad, "create", topic="x" * 201)
    d.refused(bad, "create", topic="k", kind="stream")
    d.refused(bad, "create", topic="k", max_messages=-1)
    d.refused(bad, "create", topic="k", max_deliveries=3)  # a subscription setting, on a topic
    d.refused(bad, "create", topic="k", colour="red")
    d.refused(bad, "publish", topic="t", messages=[])
    d.refused(bad, "publish", topic="t", messages=[{"body": "text"}])
    d.refused(bad, "publish", topic="t", messages=[{"body": b"", "key": 5}])
    d.refused(bad, "publish", topic="t", messages=[{"body": b"", "headers": {"a": 1.5}}])
    d.refused(bad, "publish", topic="t", messages=[{"body": b"", "delay_ms": -1}])
    d.refused(bad, "publish", topic="t", messages=[{"body": b"ok"}, "not a map"])
    d.refused(bad, "publish", topic="t", messages=[{"body": b""}], seq=1)  # seq needs a producer
    d.refused(bad, "claim", topic="q", max=0)
    d.refused(bad, "claim", topic="q", lease_ms=0)
    d.refused(bad, "ack", topic="q", leases=[])
    d.refused(bad, "ack", topic="q", leases=[[0]])
    d.refused(bad, "ack", topic="q", leases=[[0, 1], [0, 2]])
    d.refused(bad, "subscribe", topic="t", subscription="s", start="middle")
    d.refused(bad, "subscribe", topic="q", subscription="s")  # a queue has its own
    d.refused(ErrorCode.UNKNOWN_OPERATION, "fly")
    d.refused(ErrorCode.UNKNOWN_TOPIC, "publish", topic="nope", messages=[{"body": b""}])
    d.refused(ErrorCode.UNKNOWN_SUBSCRIPTION, "claim", topic="t", subscription="s")
    d.refused(bad, "claim", topic="t")  # a topic has no default subscription
    # Not CBOR, or not [op, {args}]: refused, nothing changes.
    before = state(d.machine)
    assert d.machine.run(b"h" * 16 + b"\xff").code == bad
    assert d.machine.run(b"h" * 16 + cbor2.dumps({"op": "create"})).code == bad
    assert state(d.machine) == before


def test_oversized_messages_are_refused() -> None:
    d = Driver(Limits(message_bytes_max=100))
    d.ok("create", topic="t")
    d.refused(ErrorCode.TOO_LARGE, "publish", topic="t", messages=[{"body": b"x" * 101}])
    # One oversized message refuses the whole batch.
    d.refused(
        ErrorCode.TOO_LARGE, "publish", topic="t", messages=[{"body": b"ok"}, {"body": b"x" * 200}]
    )
    assert d.publish("t", b"x" * 80) == 0


def test_time_comes_only_from_the_nodes_stamps(d: Driver) -> None:
    assert d.machine.now_ms == 1000
    d.at(500)  # a new leader whose clock is behind: time does not run backwards
    assert d.machine.now_ms == 1000
    forged = command(b"client01", 99, "time", {"ms": 10**12})
    assert d.machine.run(forged).code == ErrorCode.BAD_REQUEST
    assert d.machine.now_ms == 1000


def test_topic_retention_by_count_bytes_and_age(d: Driver) -> None:
    d.ok("create", topic="count", max_messages=3)
    for i in range(5):
        d.publish("count", b"%d" % i)
    assert d.machine.read("count", 0, 10)["messages"][0]["body"] == b"2"
    assert d.machine.describe("count")["expired"] == 2
    d.ok("create", topic="size", max_bytes=100)
    for _ in range(10):
        d.publish("size", b"x" * 30)  # each stored as about 35 bytes
    assert d.machine.describe("size")["bytes"] <= 100
    assert d.machine.describe("size")["first"] == 8
    d.ok("create", topic="age", max_age_ms=1000)
    d.publish("age", b"old")
    d.at(1500)
    d.publish("age", b"new")
    assert d.machine.due_ms() == 1000 + 1000 + 1
    d.at(2001)
    assert [m["body"] for m in d.machine.read("age", 0, 10)["messages"]] == [b"new"]
    # The payloads of dropped messages are deleted once a snapshot is stored, not before.
    payloads = len(d.store)
    d.machine.snapshot(1 << 20)
    assert len(d.store) == payloads
    d.machine.snapshot_saved()
    assert len(d.store) == payloads - 2 - 8 - 1


def test_a_full_queue_refuses_new_messages(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue", max_messages=2)
    d.publish("q", b"a", b"b")
    d.refused(ErrorCode.FULL, "publish", topic="q", messages=[{"body": b"c"}])
    [first, _] = d.claim("q")
    d.ok("ack", topic="q", leases=[lease(first)])
    assert d.publish("q", b"c") == 2  # acked work leaves a queue


def test_every_subscription_sees_every_message(d: Driver) -> None:
    d.ok("create", topic="t")
    d.publish("t", b"before")
    assert d.ok("subscribe", topic="t", subscription="early", start="earliest")["offset"] == 0
    assert d.ok("subscribe", topic="t", subscription="late")["offset"] == 1
    assert d.ok("subscribe", topic="t", subscription="at", start=1)["offset"] == 1
    d.refused(ErrorCode.SUBSCRIPTION_EXISTS, "subscribe", topic="t", subscription="late")
    d.publish("t", b"one", b"two")
    bodies = {
        name: [m["body"] for m in d.claim("t", subscription=name)]
        for name in ("early", "late", "at")
    }
    assert bodies == {
        "early": [b"before", b"one", b"two"],
        "late": [b"one", b"two"],
        "at": [b"one", b"two"],
    }
    assert d.ok("unsubscribe", topic="t", subscription="at") == {
        "topic": "t",
        "subscription": "at",
    }
    d.refused(ErrorCode.UNKNOWN_SUBSCRIPTION, "unsubscribe", topic="t", subscription="at")


def test_a_shared_subscription_leases_each_message_to_one_consumer(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue")
    d.publish("q", b"a", b"b", b"c")
    first = d.claim("q", max=2, consumer="w1")
    second = d.claim("q", max=2, consumer="w2")
    assert [m["offset"] for m in first] == [0, 1]
    assert [m["offset"] for m in second] == [2]
    assert d.claim("q") == []
    assert first[0]["deliveries"] == 1 and first[0]["deadline_ms"] == 2000
    assert d.stats("q")["in_flight"] == 3
    assert d.ok("ack", topic="q", leases=[lease(m) for m in first]) == {"acked": 2}
    stats = d.stats("q")
    assert (stats["depth"], stats["in_flight"], stats["acked"]) == (1, 1, 2)


def test_expiry_redelivers_and_stale_tokens_are_refused(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue")
    d.publish("q", b"a")
    [taken] = d.claim("q", lease_ms=100)
    assert d.machine.due_ms() == 1100
    d.at(1100)  # the lease ends at its deadline
    assert d.stats("q")["in_flight"] == 0
    [again] = d.claim("q", lease_ms=100)
    assert again["deliveries"] == 2 and again["token"] != taken["token"]
    settles = ("ack", "nack", "release", "reject")
    for op, extra in [(op, {}) for op in settles] + [("extend", {"lease_ms": 10})]:
        error = d.refused(ErrorCode.LEASE_LOST, op, topic="q", leases=[lease(taken)], **extra)
        assert error.detail == [0]
    # A batch with one stale lease changes nothing at all.
    d.refused(ErrorCode.LEASE_LOST, "ack", topic="q", leases=[lease(again), [5, 1]])
    assert d.ok("ack", topic="q", leases=[lease(again)]) == {"acked": 1}
    d.refused(ErrorCode.LEASE_LOST, "ack", topic="q", leases=[lease(again)])  # acked once


def test_a_claim_stops_at_its_byte_bound_but_always_gets_one(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue")
    d.publish("q", *[b"x" * 100] * 5)
    taken = d.claim("q", max=10, max_bytes=250)  # each message is stored as about 105 bytes
    assert [m["offset"] for m in taken] == [0, 1]
    assert [m["offset"] for m in d.claim("q", max=10, max_bytes=1)] == [2]
    d.ok("nack", topic="q", leases=[lease(m) for m in taken], delay_ms=0)
    assert [m["offset"] for m in d.claim("q", max=10, max_bytes=250)] == [0, 1]
    assert [m["offset"] for m in d.claim("q", max=10)] == [3, 4]


def test_extend_moves_the_deadline(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue")
    d.publish("q", b"a")
    [taken] = d.claim("q", lease_ms=100)
    d.at(1050)
    assert d.ok("extend", topic="q", leases=[lease(taken)], lease_ms=500) == {"deadline_ms": 1550}
    d.at(1200)
    assert d.stats("q")["in_flight"] == 1  # the first deadline passed: still held
    d.at(1550)
    assert d.stats("q")["in_flight"] == 0


def test_nack_delays_explicitly_or_backs_off_by_delivery_count() -> None:
    d = Driver()
    d.ok("create", topic="q", kind="queue", max_deliveries=0, backoff_base_ms=100)
    d.publish("q", b"a")
    [m] = d.claim("q")
    assert d.ok("nack", topic="q", leases=[lease(m)], delay_ms=0)["nacked"] == 1
    [m] = d.claim("q")  # explicit delay 0: back at once
    assert m["deliveries"] == 2
    d.ok("nack", topic="q", leases=[lease(m)])  # backoff: 100 << (2 - 1) = 200 ms
    assert d.claim("q") == []
    assert d.stats("q")["delayed"] == 1
    d.at(1199)
    assert d.claim("q") == []
    d.at(1200)
    [m] = d.claim("q")
    assert m["deliveries"] == 3


def test_a_release_hands_back_at_once_without_counting_the_delivery() -> None:
    d = Driver()
    d.ok("create", topic="q", kind="queue", max_deliveries=2, key_ordered=True)
    d.publish("q", b"a", b"b", key=b"k")
    for _ in range(5):  # released more often than max_deliveries: never dead-lettered
        [m] = d.claim("q")
        assert (m["offset"], m["deliveries"]) == (0, 1)
        assert d.ok("release", topic="q", leases=[lease(m)]) == {"released": 1}
    [m] = d.claim("q", max=2)  # still first of its key, and the next still held behind it
    assert (m["offset"], m["deliveries"]) == (0, 1)
    d.ok("nack", topic="q", leases=[lease(m)], delay_ms=0)  # a nack counts
    [m] = d.claim("q")
    assert m["deliveries"] == 2
    d.ok("release", topic="q", leases=[lease(m)])
    [m] = d.claim("q")
    assert m["deliveries"] == 2  # the backoff and the limit see two deliveries, not three
    d.refused(ErrorCode.LEASE_LOST, "release", topic="q", leases=[[0, m["token"] + 1]])
    assert d.stats("q")["dead_lettered"] == 0
    too_long = "x" * 513
    d.refused(ErrorCode.BAD_REQUEST, "nack", topic="q", leases=[lease(m)], error=too_long)
    d.ok("nack", topic="q", leases=[lease(m)], error="KeyError: 'id'")
    assert d.stats("q")["dead_lettered"] == 1
    [dead] = d.claim("q.dlq")
    assert dead["headers"]["x-death-error"] == "KeyError: 'id'"


def test_a_reject_dead_letters_at_once_with_its_error_and_frees_the_key() -> None:
    d = Driver()
    d.ok("create", topic="q", kind="queue", max_deliveries=5, key_ordered=True)
    d.publish("q", b"a", b"b", key=b"k")
    [m] = d.claim("q", max=2)  # b waits behind a, its key's first
    d.ok("nack", topic="q", leases=[lease(m)], delay_ms=0)
    [m] = d.claim("q", max=2)
    assert (m["offset"], m["deliveries"]) == (0, 2)
    d.refused(ErrorCode.BAD_REQUEST, "reject", topic="q", leases=[lease(m)], error="x" * 513)
    result = d.ok("reject", topic="q", leases=[lease(m)], error="UnknownTask: no task 'x'")
    assert result == {"rejected": 1}
    [m] = d.claim("q", max=2)  # not redelivered; its key's next is out
    assert m["offset"] == 1
    stats = d.stats("q")
    assert (stats["dead_lettered"], stats["depth"]) == (1, 1)
    [dead] = d.claim("q.dlq")
    assert dead["body"] == b"a"
    headers = dead["headers"]
    assert headers["x-death-reason"] == "rejected" and headers["x-death-deliveries"] == 2
    assert headers["x-death-error"] == "UnknownTask: no task 'x'"


def test_a_message_id_taken_within_the_window_is_answered_not_stored_again() -> None:
    d = Driver(Limits(dedup_window_ms=1000, dedup_ids_max=3))
    d.ok("create", topic="q", kind="queue")
    first = d.ok("publish", topic="q", messages=[{"body": b"a", "id": "order-1"}])
    assert first == {"offset": 0, "count": 1}
    again = d.ok(
        "publish",
        topic="q",
        messages=[{"body": b"a2", "id": "order-1"}, {"body": b"b", "id": "order-2"},
                  {"body": b"b2", "id": "order-2"}, {"body": b"c"}],
    )  # fmt: skip
    assert again == {"offset": 1, "count": 2, "duplicates": [[0, 0], [2, 1]]}
    assert [m["body"] for m in d.claim("q", max=10)] == [b"a", b"b", b"c"]
    # Kept through a snapshot, and forgotten with the window or past the bound.
    copy = Driver(Limits(dedup_window_ms=1000, dedup_ids_max=3))
    copy.machine.restore(d.machine.snapshot(1 << 20))
    copy.at(d.machine.now_ms)
    assert copy.ok("publish", topic="q", messages=[{"body": b"x", "id": "order-2"}])[
        "duplicates"
    ] == [[0, 1]]
    copy.at(copy.machine.now_ms + 1000)
    assert copy.ok("publish", topic="q", messages=[{"body": b"x", "id": "order-1"}]) == {
        "offset": 3,
        "count": 1,
    }
    for n in range(3, 7):
        copy.ok("publish", topic="q", messages=[{"body": b"n", "id": f"order-{n}"}])
    assert len(copy.machine.message_ids[copy.machine.topics["q"].id]) == 3
    d.refused(ErrorCode.BAD_REQUEST, "publish", topic="q", messages=[{"body": b"", "id": ""}])
    long = "x" * 129
    d.refused(ErrorCode.BAD_REQUEST, "publish", topic="q", messages=[{"body": b"", "id": long}])
    d.ok("delete", topic="q")
    assert d.machine.message_ids == {}


def test_dead_lettering_after_exactly_max_deliveries(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue", max_deliveries=3)
    d.publish("q", b"poison", key=b"k", headers={"trace": "1"})
    now = 1000
    for delivery in (1, 2, 3):
        [m] = d.claim("q", lease_ms=10)
        assert m["deliveries"] == delivery
        if delivery < 3:
            d.ok("nack", topic="q", leases=[lease(m)], delay_ms=0)
        else:
            now += 10
            d.at(now)  # the third lease expires: no fourth delivery
    assert d.claim("q") == []
    stats = d.stats("q")
    assert (stats["dead_lettered"], stats["depth"]) == (1, 0)
    [dead] = d.machine.read("q.dlq", 0, 10)["messages"]
    assert dead["body"] == b"poison" and dead["key"] == b"k"
    assert dead["headers"] == {
        "trace": "1",
        "x-death-topic": "q",
        "x-death-subscription": "",
        "x-death-offset": 0,
        "x-death-deliveries": 3,
        "x-death-reason": "expired",
    }
    assert d.machine.describe("q.dlq")["kind"] == "queue"


def test_per_key_ordering_holds_one_message_per_key(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue", key_ordered=True, max_deliveries=0)
    for body, key in ((b"a1", b"a"), (b"b1", b"b"), (b"a2", b"a"), (b"a3", b"a"), (b"n", None)):
        d.ok("publish", topic="q", messages=[{"body": body, "key": key}])
    first = d.claim("q")
    assert [m["body"] for m in first] == [b"a1", b"b1", b"n"]  # a2, a3 wait behind a1
    a1 = first[0]
    d.ok("nack", topic="q", leases=[lease(a1)], delay_ms=0)
    [again] = d.claim("q")
    assert again["body"] == b"a1"  # its key's order holds through redelivery
    d.ok("ack", topic="q", leases=[lease(again)])
    [a2] = d.claim("q")
    assert a2["body"] == b"a2"
    d.ok("ack", topic="q", leases=[lease(a2)])
    assert [m["body"] for m in d.claim("q")] == [b"a3"]


def test_delayed_publish_is_not_delivered_before_its_time(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue")
    d.ok("publish", topic="q", messages=[{"body": b"later", "delay_ms": 500}, {"body": b"now"}])
    assert [m["body"] for m in d.claim("q")] == [b"now"]
    assert d.stats("q")["delayed"] == 1
    d.at(1499)
    assert d.claim("q") == []
    d.at(1500)
    assert [m["body"] for m in d.claim("q")] == [b"later"]


def test_an_idempotent_producer_gets_its_original_offsets_back() -> None:
    d = Driver(Limits(producer_window=2))
    d.ok("create", topic="t")
    first = d.ok("publish", topic="t", messages=[{"body": b"a"}], producer="p", seq=1)
    retry = d.ok("publish", topic="t", messages=[{"body": b"a"}], producer="p", seq=1)
    assert retry == {**first, "duplicate": True}
    assert d.machine.describe("t")["next"] == 1
    d.ok("publish", topic="t", messages=[{"body": b"b"}], producer="p", seq=2)
    d.ok("publish", topic="t", messages=[{"body": b"c"}], producer="p", seq=3)
    d.refused(
        ErrorCode.SEQUENCE_TOO_OLD,
        "publish",
        topic="t",
        messages=[{"body": b"a"}],
        producer="p",
        seq=1,
    )
    other = d.ok("publish", topic="t", messages=[{"body": b"x"}], producer="q", seq=1)
    assert other["offset"] == 3


def test_stats_per_subscription(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue")
    d.publish("q", b"a", b"b", b"c")
    d.ok("publish", topic="q", messages=[{"body": b"d", "delay_ms": 10_000}])
    d.claim("q", max=1)
    d.at(1400)
    stats = d.stats("q")
    assert stats["depth"] == 4
    assert stats["in_flight"] == 1
    assert stats["delayed"] == 1
    assert stats["oldest_unacked_age_ms"] == 400


def test_purge(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue")
    d.publish("q", b"a", b"b")
    d.claim("q", max=1)
    assert d.ok("purge", topic="q") == {"purged": 2}
    assert d.stats("q")["depth"] == 0 and d.stats("q")["in_flight"] == 0
    assert d.machine.describe("q")["messages"] == 0
    d.ok("create", topic="t")
    d.publish("t", b"a")
    assert d.ok("purge", topic="t") == {"purged": 1}


def test_snapshot_and_restore_give_the_same_state(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue", key_ordered=True)
    d.ok("create", topic="t")
    d.ok("subscribe", topic="t", subscription="s", start="earliest")
    for i in range(50):
        d.ok(
            "publish",
            topic="q",
            messages=[{"body": b"%d" % i, "key": b"k%d" % (i % 3), "delay_ms": i % 2}],
            producer="p",
            seq=i,
        )
        d.publish("t", b"%d" % i)
    taken = d.claim("q", max=5)
    d.ok("ack", topic="q", leases=[lease(taken[0])])
    d.ok("nack", topic="q", leases=[lease(taken[1])])
    d.claim("t", subscription="s", max=7)
    chunks = d.machine.snapshot(256)  # small chunks: records cross chunk bounds
    assert len(chunks) > 3
    copy = QueueMachine(MemoryKeySpace(d.store))
    copy.restore(chunks)
    assert state(copy) == state(d.machine)
    assert copy.describe("q") == d.machine.describe("q")
    # The copy goes on exactly like the original.
    d.at(5000)
    copy.apply(copy.slots, (time_command(0, 1, 5000),))
    ours, theirs = (
        d.claim("q", max=50),
        copy.run(command(b"x" * 8, 1, "claim", {"topic": "q", "max": 50, "lease_ms": 1000})),
    )
    assert ours == claimed(theirs)


def test_a_claim_answers_in_columns_and_only_the_proposer_reads_payloads() -> None:
    answering, silent = Driver(), Driver()
    for d in (answering, silent):
        d.ok("create", topic="q", kind="queue")
        d.publish("q", b"a", b"b", b"c")
        d.ok("publish", topic="q", messages=[{"body": b"d", "key": b"k", "headers": {"h": 1}}])
    claim = command(b"client01", 99, "claim", {"topic": "q", "max": 3, "lease_ms": 500})
    [ours] = answering.machine.apply(answering.machine.slots, (claim,))
    [theirs] = silent.machine.apply(silent.machine.slots, (claim,), answered=False)
    assert (
        {k: v for k, v in ours.items() if k != "payloads"}
        == theirs
        == {
            "offsets": [0, 1, 2],
            "tokens": [1, 2, 3],
            "deliveries": [1, 1, 1],
            "deadline_ms": 1_500,
            "published_ms": [1_000] * 3,
            "now_ms": 1_000,
        }
    )
    assert ours["payloads"] == Encoded(
        cbor2.dumps([[b"a", None, None], [b"b", None, None], [b"c", None, None]])
    )
    [last] = answering.claim("q")
    assert (last["offset"], last["token"], last["body"], last["key"], last["headers"]) == (
        3,
        4,
        b"d",
        b"k",
        {"h": 1},
    )


def test_a_damaged_snapshot_is_refused_and_changes_nothing(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue")
    d.publish("q", b"a")
    chunks = d.machine.snapshot(1 << 20)
    fresh = QueueMachine(MemoryKeySpace({}))
    before = state(fresh)
    for broken in (
        [chunks[0][:-3]],  # cut short: no end record
        [cbor2.dumps(["head", 99, 0, 0, 0, 1]) + cbor2.dumps(["end", 1])],  # unknown format
        [cbor2.dumps(["mystery"]) + cbor2.dumps(["end", 1])],
        [b"\xff\xff"],
    ):
        with pytest.raises(SnapshotInvalid):
            fresh.restore(broken)
        assert state(fresh) == before


def test_a_shipped_snapshot_carries_the_payloads_and_they_bypass_memory() -> None:
    from paxq.storage import Identity, MemoryDisk, MemoryJournal

    source = MemoryJournal(MemoryDisk(), Identity("c", 0))
    d = Driver()
    d.machine = QueueMachine(source.keyspace())
    d.at(1000)
    d.ok("create", topic="q", kind="queue")
    for i in range(40):
        d.publish("q", b"%03d" % i * 50)
    chunks = d.machine.snapshot(512)
    source.save_snapshot(d.machine.slots, chunks, 0)
    count, shipped = QueueMachine.shipped(source.snapshot_view(), 512)
    shipped = list(shipped)
    assert count == len(shipped) > len(chunks)
    target = MemoryJournal(MemoryDisk(), Identity("c", 1))
    receiver = QueueMachine(target.keyspace())
    kept = [chunk for chunk in shipped if receiver.absorb(chunk)]
    assert kept == chunks  # only the metadata is held; every payload went to the key space
    receiver.restore(kept)
    assert receiver.read("q", 0, 100) == d.machine.read("q", 0, 100)


def arrays(machine: QueueMachine, topic: str) -> tuple[int, list[int], list[int], list[int]]:
    t = machine.topics[topic]
    start = t.first - t.base
    return t.first, t.times[start:].tolist(), t.sizes[start:].tolist(), t.keys[start:].tolist()


def test_a_snapshot_names_the_full_pieces_of_arrays_and_carries_only_the_last() -> None:
    d = Driver(Limits(array_piece_messages=4))
    d.ok("create", topic="q", kind="queue")
    for i in range(1000):
        d.at(1000 + i)  # every message its own time
        d.ok("publish", topic="q", messages=[{"body": b"x" * (i % 7), "key": b"k%d" % (i % 5)}])
    chunks = d.machine.snapshot(1 << 20)
    assert sum(map(len, chunks)) < 1000, "not 24 bytes per message: the pieces stay behind"
    copy = QueueMachine(MemoryKeySpace(d.store), Limits(array_piece_messages=4))
    copy.restore(chunks)
    assert arrays(copy, "q") == arrays(d.machine, "q")
    assert copy.describe("q") == d.machine.describe("q")
    # Without the pieces in its key space, a machine refuses the snapshot.
    with pytest.raises(SnapshotInvalid, match="piece 0 is missing"):
        QueueMachine(MemoryKeySpace({}), Limits(array_piece_messages=4)).restore(chunks)


def test_pieces_of_arrays_go_once_every_offset_in_them_has() -> None:
    d = Driver(Limits(array_piece_messages=4))
    d.ok("create", topic="q", kind="queue")
    d.publish("q", *[b"%d" % i for i in range(12)])
    taken = d.claim("q", max=12)
    # The front (0-5) leaves, and 7 (the last of piece 1) is acked behind 6, still out.
    d.ok("ack", topic="q", leases=[lease(m) for m in taken[:6] + taken[7:8]])
    d.machine.snapshot(1 << 20)
    d.machine.snapshot_saved()
    pieces = [offset - (1 << 63) for offset in payload_offsets(d, "q") if offset >= 1 << 63]
    assert pieces == [1, 2]  # piece 0 (offsets 0-3) went; piece 1 still holds 6
    copy = QueueMachine(MemoryKeySpace(d.store), Limits(array_piece_messages=4))
    copy.restore(d.machine.snapshot(1 << 20))
    assert arrays(copy, "q") == arrays(d.machine, "q")


def test_a_snapshot_of_the_format_that_carried_every_array_inline_is_read(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue")
    d.publish("q", b"a", b"b", b"c")
    records = []
    for chunk in d.machine.snapshot(1 << 20):
        source = io.BytesIO(chunk)
        decoder = cbor2.CBORDecoder(source)
        while source.tell() < len(chunk):
            records.append(decoder.decode())
    assert records[0][:2] == ["head", 4] and not any(r[0] == "pieces" for r in records)
    for old in (2, 3):  # 3: the same records, no message ids (none here)
        records[0][1] = old
        copy = QueueMachine(MemoryKeySpace(d.store))
        copy.restore([b"".join(cbor2.dumps(record) for record in records)])
        assert arrays(copy, "q") == arrays(d.machine, "q")


def payload_offsets(d: Driver, topic: str) -> list[int]:
    """Offsets of the topic whose payloads are in the key space."""
    topic_id = d.machine.topics[topic].id
    return sorted(
        int.from_bytes(key[4:], "big")
        for key in d.store
        if int.from_bytes(key[:4], "big") == topic_id
    )


def test_acked_messages_behind_one_still_out_neither_fill_a_queue_nor_stay_on_disk(
    d: Driver,
) -> None:
    d.ok("create", topic="q", kind="queue", max_messages=3)
    d.publish("q", b"a", b"b", b"c")
    a, b, c = d.claim("q")
    d.ok("ack", topic="q", leases=[lease(b), lease(c)])  # a is still out: the front stays
    assert d.publish("q", b"d") == 3  # only a counts against the limit
    assert (d.stats("q")["depth"], d.machine.describe("q")["messages"]) == (2, 2)
    assert [m["body"] for m in d.machine.read("q", 0, 10)["messages"]] == [b"a", b"d"]
    d.machine.snapshot(1 << 20)
    assert payload_offsets(d, "q") == [0, 1, 2, 3]  # deletion waits for the stored snapshot
    d.machine.snapshot_saved()
    assert payload_offsets(d, "q") == [0, 3]
    copy = QueueMachine(MemoryKeySpace(d.store))
    copy.restore(d.machine.snapshot(1 << 20))
    assert copy.describe("q") == d.machine.describe("q")
    d.publish("q", b"e")
    d.refused(ErrorCode.FULL, "publish", topic="q", messages=[{"body": b"f"}])
    d.ok("ack", topic="q", leases=[lease(a)])
    assert d.machine.describe("q")["first"] == 3  # the front moves past everything acked


def test_two_snapshots_before_one_is_saved_release_both_garbages(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue")
    d.publish("q", b"a", b"b")
    for message in d.claim("q", max=1), d.claim("q", max=1):
        d.ok("ack", topic="q", leases=[lease(message[0])])
        d.machine.snapshot(1 << 20)  # the first is never reported saved
    d.machine.snapshot_saved()
    assert payload_offsets(d, "q") == []


def test_producer_sequences_are_per_topic(d: Driver) -> None:
    d.ok("create", topic="t")
    d.ok("create", topic="u")
    one = d.ok("publish", topic="t", messages=[{"body": b"a"}], producer="p", seq=1)
    two = d.ok("publish", topic="u", messages=[{"body": b"b"}], producer="p", seq=1)
    assert "duplicate" not in one and "duplicate" not in two
    assert d.machine.describe("u")["next"] == 1
    again = d.ok("publish", topic="u", messages=[{"body": b"b"}], producer="p", seq=1)
    assert again == {**two, "duplicate": True}


def poison(d: Driver, topic: str, count: int, **extra) -> None:
    """`count` messages of the queue used up their one delivery."""
    d.publish(topic, *[b"poison-%d" % i for i in range(count)])
    taken = d.claim(topic, max=count, **extra)
    d.ok("nack", topic=topic, leases=[lease(m) for m in taken], **extra)
    assert len(taken) == count


def test_dead_letters_to_a_topic_follow_its_retention(d: Driver) -> None:
    d.ok("create", topic="dead", max_messages=2)
    d.ok("create", topic="q", kind="queue", max_deliveries=1, dead_letter="dead")
    poison(d, "q", 3)
    kept = [m["body"] for m in d.machine.read("dead", 0, 10)["messages"]]
    assert kept == [b"poison-1", b"poison-2"]  # the oldest made room, as retention does
    assert (d.stats("q")["dead_lettered"], d.stats("q")["dead_letter_dropped"]) == (3, 0)


def test_dead_letters_with_nowhere_to_go_are_counted(d: Driver) -> None:
    d.ok("create", topic="dead", kind="queue", max_messages=1)
    d.ok("create", topic="q", kind="queue", max_deliveries=1, dead_letter="dead")
    poison(d, "q", 3)
    assert d.machine.describe("dead")["messages"] == 1
    stats = d.stats("q")
    assert (stats["dead_lettered"], stats["dead_letter_dropped"], stats["depth"]) == (3, 2, 0)


def test_a_long_name_still_gets_a_default_dead_letter_queue(d: Driver) -> None:
    name = "q" * 200
    d.ok("create", topic=name, kind="queue", max_deliveries=1)
    d.ok("create", topic="t" * 200)
    d.ok("subscribe", topic="t" * 200, subscription="s" * 200, max_deliveries=1)
    poison(d, name, 1)
    [dead] = [t for t in d.machine.list_topics() if t["topic"].endswith(".dlq")]
    assert len(dead["topic"]) == 200 and dead["topic"].startswith("q" * 150)
    assert d.stats(name)["dead_letter_dropped"] == 0
    other = d.machine.describe("t" * 200)["subscriptions"]["s" * 200]["dead_letter"]
    assert len(other) == 200 and other != dead["topic"]


def test_leases_ending_together_expire_in_one_order_however_they_were_claimed(
    d: Driver,
) -> None:
    """Two claims with one deadline, the later one holding the lower offset: they expire
    in offset order, as on a replica that rebuilt its expiries from a snapshot."""
    d.ok("create", topic="q", kind="queue", max_deliveries=1)
    d.publish("q", b"a", b"b")
    first = d.claim("q", max=2, lease_ms=100)
    d.ok("release", topic="q", leases=[lease(first[0])])  # "a" back, not counted
    [again] = d.claim("q", max=1, lease_ms=100)
    assert again["offset"] == 0
    copy = Driver()
    copy.machine.restore(d.machine.snapshot(1 << 20))
    copy.store.update(d.store)  # the payloads: in the key space, not in the snapshot
    deadline = d.machine.now_ms + 100
    for driver in (d, copy):
        driver.at(deadline)
        dead = driver.machine.read("q.dlq", 0, 10)["messages"]
        assert [m["body"] for m in dead] == [b"a", b"b"]
    assert state(d.machine) == state(copy.machine)


def test_a_replica_that_looks_for_the_next_deadline_expires_leases_alike() -> None:
    """Only a leader asks `due_ms`, which drops stale entries from the heap's front: the
    leases that end, and their order, must not depend on it."""
    asking, silent = Driver(), Driver()
    for driver in (asking, silent):
        driver.ok("create", topic="q", kind="queue", max_deliveries=1)
        driver.publish("q", *[b"m%d" % n for n in range(30)])
    for step in range(6):
        for driver in (asking, silent):
            taken = driver.claim("q", max=5, lease_ms=100 + 10 * (step % 3))
            driver.ok("ack", topic="q", leases=[lease(m) for m in taken[::2]])
            if taken[1:2]:
                driver.ok("extend", topic="q", leases=[lease(taken[1])], lease_ms=15)
            driver.at(driver.machine.now_ms + 7)
        asking.machine.due_ms()
    for driver in (asking, silent):
        driver.at(driver.machine.now_ms + 1_000)
    dead = [
        [m["body"] for m in d.machine.read("q.dlq", 0, 100)["messages"]] for d in (asking, silent)
    ]
    assert dead[0] == dead[1] and len(dead[0]) > 5
    assert state(asking.machine) == state(silent.machine)


def test_the_expiry_heap_does_not_grow_with_acked_or_extended_leases(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue")
    for _ in range(10):
        d.publish("q", *[b"x"] * 1000)
        taken = d.claim("q", max=1000, lease_ms=3_600_000)
        d.ok("ack", topic="q", leases=[lease(m) for m in taken])
    [kept] = d.claim("q", max=1) or [None]
    assert kept is None
    d.publish("q", b"long job")
    [job] = d.claim("q", lease_ms=3_600_000)
    for ms in range(10_000):
        d.at(1000 + ms)  # each extension moves the deadline
        d.ok("extend", topic="q", leases=[lease(job)], lease_ms=3_600_000)
    assert d.machine.expiries.count <= 4097
    deadline = 10_999 + 3_600_000  # the last extension's
    d.at(deadline - 1)
    assert d.stats("q")["in_flight"] == 1
    d.at(deadline)
    assert [m["body"] for m in d.claim("q")] == [b"long job"]


def test_set_aside_messages_do_not_use_up_a_claims_bytes(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue")
    d.ok(
        "publish",
        topic="q",
        messages=[{"body": b"L" * 1000, "delay_ms": 500}, {"body": b"s"}, {"body": b"t"}],
    )
    assert [m["body"] for m in d.claim("q", max_bytes=300)] == [b"s", b"t"]


def test_a_read_stops_at_its_byte_bound_but_always_gets_one() -> None:
    d = Driver(Limits(read_bytes_max=250))
    d.ok("create", topic="t")
    d.publish("t", *[b"x" * 100] * 5)
    page = d.machine.read("t", 0, 10)
    assert ([m["offset"] for m in page["messages"]], page["next"], page["end"]) == ([0, 1], 2, 5)
    d = Driver(Limits(read_bytes_max=1))
    d.ok("create", topic="t")
    d.publish("t", b"big")
    assert len(d.machine.read("t", 0, 10)["messages"]) == 1


def test_acks_nacks_and_extends_with_a_producer_sequence_are_answered_once(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue")
    d.publish("q", b"a", b"b", b"c")
    a, b, c = d.claim("q", max=3)
    once = {"producer": "w1"}
    acked = d.ok("ack", topic="q", leases=[[0, a["token"]]], seq=0, **once)
    assert acked == {"acked": 1}
    # The resend of a lost reply: answered with the first result, not refused LEASE_LOST.
    assert d.ok("ack", topic="q", leases=[[0, a["token"]]], seq=0, **once) == {
        **acked,
        "duplicate": True,
    }
    assert d.machine.describe("q")["subscriptions"][""]["acked"] == 1
    extended = d.ok("extend", topic="q", leases=[[1, b["token"]]], lease_ms=5000, seq=1, **once)
    d.at(1_500)
    again = d.ok("extend", topic="q", leases=[[1, b["token"]]], lease_ms=5000, seq=1, **once)
    assert again["deadline_ms"] == extended["deadline_ms"] and again["duplicate"]
    nacked = d.ok("nack", topic="q", leases=[[2, c["token"]]], delay_ms=0, seq=2, **once)
    assert d.ok("nack", topic="q", leases=[[2, c["token"]]], delay_ms=0, seq=2, **once) == {
        **nacked,
        "duplicate": True,
    }
    [back] = d.claim("q")
    assert (back["offset"], back["deliveries"]) == (2, 2)  # given back once, not twice
    # A refusal is not remembered: the same sequence may try again.
    d.refused(ErrorCode.LEASE_LOST, "ack", topic="q", leases=[[2, c["token"]]], seq=3, **once)
    assert d.ok("ack", topic="q", leases=[[2, back["token"]]], seq=3, **once) == {"acked": 1}
    d.refused(ErrorCode.BAD_REQUEST, "ack", topic="q", leases=[[1, b["token"]]], seq=4)


def test_the_machine_names_the_topics_a_waiting_reader_should_look_at_again(d: Driver) -> None:
    d.ok("create", topic="q", kind="queue")
    d.ok("create", topic="quiet", kind="queue")
    d.machine.take_changed()
    d.publish("q", b"a")
    assert d.machine.take_changed() == {"q"}
    [a] = d.claim("q", lease_ms=1000)
    assert d.machine.take_changed() == set()  # a claim hands out, it frees nothing
    d.at(5_000)  # the lease expires: the message can be claimed again
    assert d.machine.take_changed() == {"q"}
    [a] = d.claim("q")
    d.ok("nack", topic="q", leases=[[0, a["token"]]], delay_ms=3_000)
    assert d.machine.take_changed() == {"q"}
    # Nothing to claim before the delay: the empty answer says when to look again.
    result = d.ok("claim", topic="q")
    assert result["offsets"] == [] and result["next_due_ms"] == 5_000 + 3_000
    assert "next_due_ms" not in d.ok("claim", topic="quiet")
    d.ok("delete", topic="q")
    assert d.machine.take_changed() == {"q"}


@pytest.mark.parametrize("size", [0, 1, 23, 24, 255, 256, 65535, 65536, 1 << 20])
def test_a_stored_payload_is_the_bytes_cbor2_writes(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for key, headers in [(None, None), (b"k", None), (b"k" * 300, None), (b"k", {"a": 1})]:
        stored = stored_payload(body, key, headers)
        assert stored == cbor2.dumps([body, key, headers])
        assert cbor2.loads(stored) == [body, key, headers]
