"""Property tests: hypothesis chooses the schedule, the core must stay safe under all of them."""

from __future__ import annotations

import pytest
from harness import Cluster, to
from hypothesis import given, settings
from hypothesis import strategies as st
from planted import QuorumTooSmall

from paxq.broker.paxos import (
    LEARNED,
    ZERO,
    AcceptRecord,
    Ballot,
    CommitRecord,
    DurableState,
    PromiseRecord,
    ProposeResult,
    Role,
)

NODES = 3

action = st.one_of(
    st.tuples(st.just("tick"), st.integers(0, NODES - 1), st.integers(1, 12)),
    st.tuples(st.just("deliver"), st.integers(0, 1 << 16), st.just(0)),
    st.tuples(st.just("duplicate"), st.integers(0, 1 << 16), st.just(0)),
    st.tuples(st.just("drop"), st.integers(0, 1 << 16), st.just(0)),
    st.tuples(st.just("propose"), st.integers(0, NODES - 1), st.integers(1, 3)),
    st.tuples(st.just("campaign"), st.integers(0, NODES - 1), st.just(0)),
    st.tuples(st.just("restart"), st.integers(0, NODES - 1), st.just(0)),
    # Coarse steps make the interesting interleavings likely: a node hears everything sent
    # to it, or a node is cut off from everything sent to it.
    st.tuples(st.just("deliver_to"), st.integers(0, NODES - 1), st.just(0)),
    st.tuples(st.just("drop_to"), st.integers(0, NODES - 1), st.just(0)),
)


class Checked:
    """The cluster plus a canonical history that survives restarts."""

    def __init__(self, seed: int) -> None:
        self.cluster = Cluster(NODES, seed=seed, batch_count_max=2, window_slots_max=3)
        self.chosen: list[tuple[bytes, ...]] = []
        self.acked: set[bytes] = set()  # applied at the replica that took the command
        self.taken: dict[bytes, int] = {}  # command -> replica that queued it
        self.serial = 0

    def check(self) -> None:
        c = self.cluster
        for node, log in enumerate(c.applied):
            for slot, value in enumerate(log):
                if slot < len(self.chosen):
                    assert self.chosen[slot] == value, f"agreement broken at slot {slot}"
                else:
                    self.chosen.append(value)
                for command in value:
                    if self.taken.get(command) == node:
                        self.acked.add(command)

    def run(self, kind: str, a: int, b: int) -> None:
        c = self.cluster
        if kind == "tick":
            if c.replicas[a] is not None:
                c.tick(a, b)
        elif kind in ("deliver", "duplicate", "drop") and c.in_flight:
            envelope = c.in_flight[a % len(c.in_flight)]
            picked = [False]

            def once(src, dst, m, envelope=envelope) -> bool:
                if not picked[0] and (src, dst, m) == envelope:
                    picked[0] = True
                    return True
                return False

            if kind == "drop":
                c.drop(once)
            else:
                c.deliver(once, keep=kind == "duplicate")
        elif kind == "propose" and c.replicas[a] is not None:
            for _ in range(b):
                self.serial += 1
                command = b"cmd%d" % self.serial
                if c[a].propose(command) is ProposeResult.QUEUED:
                    self.taken[command] = a
            c._drain(a)
        elif kind == "campaign" and c.replicas[a] is not None:
            c.campaign(a)
        elif kind == "restart":
            c.restart(a)
        elif kind == "deliver_to":
            c.deliver(to(a))
        elif kind == "drop_to":
            c.drop(to(a))
        self.check()

    def calm(self) -> None:
        """No more faults: everyone ticks and every message arrives. One leader must emerge
        and every replica must apply the same log, holding every acknowledged command."""
        c = self.cluster
        for _ in range(400):
            for node in range(NODES):
                c.tick(node)
            c.stabilize()
            self.check()
            leaders = [n for n in range(NODES) if c[n].role is Role.LEADER]
            commits = {c[n].commit for n in range(NODES)}
            if len(leaders) == 1 and len(commits) == 1 and not c[leaders[0]].inflight_count:
                break
        else:
            raise AssertionError("no convergence after faults stopped")
        logs = c.applied
        assert logs[0] == logs[1] == logs[2]
        everything = {command for value in logs[0] for command in value}
        assert self.acked <= everything, "an acknowledged command was lost"


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 1 << 30), actions=st.lists(action, min_size=10, max_size=120))
def test_any_schedule_keeps_agreement_and_converges_once_calm(seed: int, actions: list) -> None:
    run = Checked(seed)
    for kind, a, b in actions:
        run.run(kind, a, b)
    run.calm()


@given(
    st.lists(
        st.one_of(
            st.builds(PromiseRecord, st.builds(Ballot, st.integers(0, 9), st.integers(0, 2))),
            st.builds(
                AcceptRecord,
                st.integers(0, 9),
                st.one_of(
                    st.builds(Ballot, st.integers(0, 9), st.integers(0, 2)), st.just(LEARNED)
                ),
                st.lists(st.binary(max_size=4), max_size=3).map(tuple),
            ),
            st.builds(CommitRecord, st.integers(0, 9)),
        ),
        max_size=40,
    )
)
def test_replaying_the_journal_twice_rebuilds_the_same_state(records: list) -> None:
    once, twice = DurableState(), DurableState()
    for record in records:
        once.apply(record)
    for record in records + records:
        twice.apply(record)
    assert once.promised == twice.promised
    assert once.commit == twice.commit
    assert once.log == twice.log
    assert once.promised >= ZERO


@given(st.builds(Ballot, st.integers(0, 1 << 40), st.integers(0, 1 << 10)))
def test_every_real_ballot_lies_between_zero_and_learned(ballot: Ballot) -> None:
    assert ZERO < ballot < LEARNED or ballot.round == 0


def _schedules_with(factory: type) -> None:
    """The schedule property, run against a planted bug; it must be falsified."""

    @settings(max_examples=1_000, deadline=None, database=None, derandomize=True)
    @given(seed=st.integers(0, 1 << 30), actions=st.lists(action, min_size=10, max_size=120))
    def prop(seed: int, actions: list) -> None:
        run = Checked(seed)
        run.cluster = Cluster(
            NODES, factory=factory, seed=seed, batch_count_max=2, window_slots_max=3
        )
        for kind, a, b in actions:
            run.run(kind, a, b)
        run.calm()

    prop()


def test_the_schedule_property_falsifies_a_too_small_quorum() -> None:
    # Unguided schedules find this bug in a few hundred examples. The subtler planted bugs
    # (a forgotten promise, ignored phase-1 values) need a dozen specific steps in a row; the
    # simulator's targeted faults catch those (tests/test_sim.py), random schedules do not.
    with pytest.raises(AssertionError):
        _schedules_with(QuorumTooSmall)
