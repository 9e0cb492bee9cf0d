"""The fault suite's checker fails every history with an anomaly, and passes a clean one."""

from __future__ import annotations

import dataclasses

import pytest
from history import Ack, Claim, History, Publish, check, longest_stall


def clean() -> History:
    """Two producers, a worker that acks, a subscriber that reads all, a majority throughout."""
    h = History()
    h.publishes = [
        Publish("q", b"a", 0.0, 0, 0.1),
        Publish("q", b"b", 0.2, 1, 0.3),
        Publish("q", b"c", 0.4),  # unknown outcome: it may or may not be in the log
        Publish("q", b"d", 1.0, 3, 1.1),
    ]
    h.logs = {"q": [b"a", b"b", b"c", b"d"]}
    h.claims = [
        Claim("w1", "q", 0, 1, 0.5, 10.5, ended_s=0.6),
        Claim("w2", "q", 1, 2, 0.5, 10.5),  # its holder died holding it...
        Claim("w1", "q", 1, 3, 11.0, 21.0, ended_s=11.2),  # ...and it came back after the lease
    ]
    h.acks = [Ack("w1", "q", 0, 1, True, 0.6), Ack("w1", "q", 1, 3, True, 11.2)]
    h.subscribers = {"s1": ("q", [(0, b"a"), (1, b"b"), (2, b"c"), (3, b"d")])}
    h.majority_s = [(0.0, 1.5)]
    return h


def test_a_clean_history_has_no_anomaly() -> None:
    assert check(clean()) == []
    assert check(queue()) == []
    assert longest_stall(clean()) == pytest.approx(0.8)  # 0.3 -> 1.1


def _with(**changes) -> History:
    return dataclasses.replace(clean(), **changes)


def queue() -> History:
    """`clean()` as a queue: its log is what was delivered, and all of it was acked."""
    h = clean()
    h.logs, h.subscribers = {}, {}
    h.queues = {"q"}
    h.claims = [
        Claim("w1", "q", 0, 1, 0.5, 10.5, 0.6, b"a"),
        Claim("w1", "q", 1, 3, 11.0, 21.0, 11.2, b"b"),
        Claim("w1", "q", 3, 4, 11.0, 21.0, 11.3, b"d"),
    ]
    h.acks = [*h.acks, Ack("w1", "q", 3, 4, True, 11.3)]
    h.consume_to = {"q": 2}
    return h


def _queue(**changes) -> History:
    return dataclasses.replace(queue(), **changes)


@pytest.mark.parametrize(
    ("history", "kind"),
    [
        (
            _with(logs={"q": [b"a", b"b", b"c"]}, subscribers={}),
            "lost",
        ),
        (_with(logs={"q": [b"a", b"b", b"c", b"d", b"zz"]}), "unexpected"),
        (_with(logs={"q": [b"a", b"b", b"c", b"d", b"a"]}), "duplicated"),
        (_with(logs={"q": [b"a", b"b", b"d", b"c"]}, subscribers={}), "misplaced"),
        (
            _with(acks=[*clean().acks, Ack("w2", "q", 0, 9, True, 0.7)]),
            "double acked",
        ),
        (
            _with(claims=[*clean().claims, Claim("w3", "q", 1, 4, 5.0, 15.0)]),
            "lease overlap",
        ),
        (_with(consume_to={"q": 3}), "unconsumed"),
        (
            _queue(claims=[*_queue().claims, Claim("w2", "q", 0, 5, 20, 30, 21, b"x")]),
            "inconsistent",
        ),
        (_queue(claims=_queue().claims[1:]), "lost"),
        (_queue(claims=[*_queue().claims, Claim("w2", "q", 5, 5, 20, 30, 21, b"a")]), "duplicated"),
        (_with(subscribers={"s1": ("q", [(0, b"a"), (2, b"c")])}), "subscriber"),
        (_with(subscribers={"s1": ("q", [(0, b"a"), (1, b"b"), (1, b"b")])}), "subscriber"),
        (_with(subscribers={"s2": ("q", [(0, b"a"), (1, b"x")])}), "subscriber"),
        (_with(majority_s=[(0.0, 9.0)]), "stall"),
        (_with(replica_logs={"q": {0: [b"a", b"b"], 1: [b"a", b"x", b"c"]}}), "diverged"),
        (
            # The later holder came first and still trusts it when the earlier claim begins.
            _with(claims=[*clean().claims, Claim("w3", "q", 1, 4, 0.2, 5.0)]),
            "lease overlap",
        ),
    ],
)
def test_each_anomaly_is_reported(history: History, kind: str) -> None:
    found = check(history)
    assert found and {a.kind for a in found} == {kind}, found


def test_a_lease_trusted_less_its_margin_may_be_taken_after_that() -> None:
    claims = [Claim("w1", "q", 0, 1, 0.0, 10.0), Claim("w2", "q", 0, 2, 9.5, 19.5)]
    assert check(_with(claims=claims), trust_margin_s=1.0) == []
    assert [a.kind for a in check(_with(claims=claims), trust_margin_s=0.0)] == ["lease overlap"]


def test_stalls_count_only_while_a_majority_was_connected() -> None:
    # Acks at 0.1, 0.3, 1.1; no majority from 0.4 to 5.0: that gap is not a stall.
    h = _with(majority_s=[(0.0, 0.4), (5.0, 5.5)])
    assert longest_stall(h) == pytest.approx(0.5)


def test_a_delivery_whose_lease_ended_before_its_holder_had_it_is_no_overlap() -> None:
    # w1's delivery waited in its prefetch buffer past its lease; w2 claimed it meanwhile.
    claims = [Claim("w2", "q", 0, 2, 5.0, 15.0, 6.0), Claim("w1", "q", 0, 1, 7.0, 4.0, 7.1)]
    assert check(_with(claims=claims, acks=[]), trust_margin_s=1.0) == []


def test_logs_that_are_prefixes_of_the_longest_agree() -> None:
    h = _with(replica_logs={"q": {0: [b"a", b"b"], 1: [b"a", b"b", b"c", b"d"], 2: []}})
    assert check(h) == []
