"""The checkers alone, fed hand-made histories: each must reject what it exists to reject."""

from __future__ import annotations

import pickle

import pytest

from paxq.broker.machine.commands import command as command_of
from paxq.broker.paxos import Ballot
from paxq.broker.sim import History, Violation
from paxq.broker.sim.oracle import QueueOracle


def history_of(*commands: bytes) -> History:
    history = History()
    for command in commands:
        history.on_propose(command)
    return history


def test_agreement_rejects_two_values_at_one_slot() -> None:
    h = history_of(b"a", b"b")
    h.on_apply(0, 0, 0, (b"a",))
    h.on_apply(1, 0, 0, (b"a",))
    with pytest.raises(Violation) as caught:
        h.on_apply(2, 0, 0, (b"b",))
    assert caught.value.invariant == "agreement"


def test_validity_rejects_a_command_nobody_proposed_and_a_duplicate() -> None:
    h = history_of(b"a")
    with pytest.raises(Violation, match="never proposed"):
        h.on_apply(0, 0, 0, (b"forged",))
    h = history_of(b"a")
    h.on_apply(0, 0, 0, (b"a",))
    with pytest.raises(Violation, match="again"):
        h.on_apply(0, 1, 1, (b"a",))


def test_slots_must_be_applied_in_order() -> None:
    h = history_of(b"a")
    with pytest.raises(Violation) as caught:
        h.on_apply(0, 0, 1, (b"a",))
    assert caught.value.invariant == "order"


def test_an_acknowledgement_must_match_the_chosen_slot() -> None:
    h = history_of(b"a")
    h.on_apply(0, 0, 0, (b"a",))
    with pytest.raises(Violation) as caught:
        h.on_ack(b"a", 3, 0.0, 1.0)
    assert caught.value.invariant == "durability"


def test_durability_rejects_an_acknowledged_command_missing_on_a_replica() -> None:
    h = history_of(b"a", b"b")
    h.on_apply(0, 0, 0, (b"a", b"b"))
    h.on_ack(b"b", 0, 0.0, 1.0)
    h.check_durable([[(b"a", b"b")], [(b"a", b"b")]])
    with pytest.raises(Violation) as caught:
        h.check_durable([[(b"a", b"b")], []])
    assert caught.value.invariant == "durability"


def test_linearizability_rejects_a_later_command_ordered_before_an_acknowledged_one() -> None:
    h = history_of(b"first", b"second")
    h.on_apply(0, 0, 0, (b"second",))
    h.on_apply(0, 1, 1, (b"first",))
    h.on_ack(b"first", 1, issued_ms=0.0, acked_ms=5.0)
    h.on_ack(b"second", 0, issued_ms=6.0, acked_ms=9.0)  # issued after "first" was acked
    with pytest.raises(Violation) as caught:
        h.check_linearizable()
    assert caught.value.invariant == "linearizability"


def test_concurrent_commands_may_be_ordered_either_way() -> None:
    h = history_of(b"x", b"y")
    h.on_apply(0, 0, 0, (b"y", b"x"))
    h.on_ack(b"x", 0, issued_ms=0.0, acked_ms=5.0)
    h.on_ack(b"y", 0, issued_ms=1.0, acked_ms=4.0)  # overlapping in time
    h.check_linearizable()


def test_a_violation_crosses_process_boundaries_intact() -> None:
    violation = pickle.loads(pickle.dumps(Violation("agreement", "slot 3")))
    assert violation.invariant == "agreement"
    assert str(violation) == "agreement: slot 3"


def test_an_acceptor_may_not_vote_below_a_ballot_it_promised() -> None:
    h = History()
    h.on_vote(1, Ballot(1, 0), "Accepted")
    h.on_vote(1, Ballot(2, 2), "Promise")
    h.on_vote(1, Ballot(2, 2), "Accepted")  # the same ballot again is fine
    h.on_vote(2, Ballot(1, 0), "Accepted")  # other acceptors are independent
    with pytest.raises(Violation) as caught:
        h.on_vote(1, Ballot(1, 0), "Accepted")
    assert caught.value.invariant == "promise"


def test_an_answered_claim_must_carry_the_bodies_published_there() -> None:
    oracle = QueueOracle({})
    oracle.on_command(
        0,
        command_of(
            b"s" * 8,
            1,
            "publish",
            {"topic": "q", "messages": [{"body": b"first"}, {"body": b"second"}]},
        ),
        {"offset": 0, "count": 2},
    )
    claim = command_of(b"s" * 8, 2, "claim", {"topic": "q"})
    # A follower's result (no payloads) passes on_command; the leader's answer is checked.
    lease = {"offsets": [0], "tokens": [1], "deliveries": [1], "published_ms": [0]}
    lease |= {"deadline_ms": 30_000, "now_ms": 0}
    oracle.on_command(1, claim, lease)
    oracle.on_answer(1, claim, {**lease, "payloads": [[b"first", None, None]]})
    with pytest.raises(Violation, match="answered b'second'"):
        oracle.on_answer(1, claim, {**lease, "payloads": [[b"second", None, None]]})
    with pytest.raises(Violation, match="without its body"):
        oracle.on_answer(1, claim, lease)
