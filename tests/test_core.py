"""The node core on its own: no sockets, threads or clocks. A test plays the driver, holding
every write until it says the write is done, so it sees exactly what waits for what."""

from __future__ import annotations

from random import Random

import pytest

from paxq.broker.machine import command
from paxq.broker.node.clocks import ClockEcho, ClockProbe
from paxq.broker.node.core import OK, CoreSettings, NodeCore, Write
from paxq.broker.node.machines import LogMachine
from paxq.broker.node.transfer import SnapshotChunk
from paxq.broker.paxos import (
    Accept,
    Accepted,
    CatchupRequest,
    CommitRecord,
    Config,
    Prepare,
    Role,
)
from paxq.storage import Identity, JournalState, MemoryDisk, MemoryJournal


class Driver:
    """Three cores; messages and writes move only when the test says so."""

    def __init__(self, size: int = 3, **settings) -> None:
        self.config = Config(nodes=tuple(range(size)))
        # No clock bound unless a test sets one: its ticks read no real clock.
        self.settings = CoreSettings(**{"clock_offset_ms_max": 0, **settings})
        self.disks = [MemoryDisk() for _ in range(size)]
        self.journals = [MemoryJournal(d, Identity("t", i)) for i, d in enumerate(self.disks)]
        self.cores = [self._core(i) for i in range(size)]
        self.writes: list[list[Write]] = [[] for _ in range(size)]
        self.network: list[tuple[int, int, object]] = []
        self.replies: list[tuple[object, str, object, int | None]] = []
        self.ships: dict[int, tuple[int, int, list[bytes]]] = {}
        self.opened: list[tuple[int, int]] = []  # (sender, receiver) of each transfer
        self.applied: list[int] = []  # slots applied per take, every node's
        self.once = False  # drain takes once, as one turn of the runtime's loop

    def _core(self, node: int) -> NodeCore:
        return NodeCore(
            node, self.config, self.settings, Random(node), JournalState(), (0, []), LogMachine
        )

    def drain(self, node: int) -> None:
        core = self.cores[node]
        while (effects := core.take()) is not None:
            self.applied.append(len(effects.applied))
            self.writes[node] += effects.writes
            self.network += [(node, dst, m) for dst, m in effects.send]
            self.replies += effects.replies
            for peer in effects.ship_open:
                self.opened.append((node, peer))
                view = self.journals[node].snapshot_view()
                count, chunks = LogMachine.shipped(view, 1 << 20)
                self.ships[peer] = (view.slot, count, list(chunks))
                core.ship_opened(peer, view.slot, count)
            for peer, first, count, _ in effects.ship_chunks:
                slot, total, chunks = self.ships[peer]
                for index in range(first, first + count):
                    chunk = SnapshotChunk(node, slot, index, total, chunks[index])
                    self.network.append((node, peer, chunk))
            if self.once:
                return

    def finish_writes(self, node: int) -> None:
        """The node's disk completes every write handed to it so far."""
        pending, self.writes[node] = self.writes[node], []
        for write in pending:
            if write.snapshot is not None:
                self.journals[node].save_snapshot(*write.snapshot)
            else:
                self.journals[node].write(write.batch, write.sync)
        if pending:
            self.cores[node].persisted(pending[-1].id)
            self.drain(node)

    def deliver(self, kind: type | None = None, to: int | None = None) -> int:
        chosen = [
            e
            for e in self.network
            if (kind is None or type(e[2]) is kind) and (to is None or e[1] == to)
        ]
        self.network = [e for e in self.network if e not in chosen]
        for _, dst, message in chosen:
            self.cores[dst].step(message)
            self.drain(dst)
        return len(chosen)

    def settle(self) -> None:
        for _ in range(200):
            for node in range(len(self.cores)):
                self.finish_writes(node)
            if not self.deliver():
                return
        raise AssertionError("did not settle")

    def elect(self, node: int = 0) -> NodeCore:
        self.cores[node].replica.campaign()
        self.drain(node)
        self.settle()
        assert self.cores[node].replica.role is Role.LEADER
        return self.cores[node]


def test_a_candidate_sends_its_prepares_only_once_its_promise_is_durable() -> None:
    d = Driver()
    d.cores[0].replica.campaign()
    d.drain(0)
    assert not [m for _, _, m in d.network if type(m) is Prepare]
    assert d.writes[0] and d.writes[0][0].sync
    d.finish_writes(0)
    assert len([m for _, _, m in d.network if type(m) is Prepare]) == 2


def test_the_leader_sends_accepts_while_its_own_write_runs_and_votes_once_it_is_durable() -> None:
    d = Driver()
    leader = d.elect(0)
    leader.command(command(b"s" * 8, 1, "noop", {}), "waiter", 1000)
    d.drain(0)
    accepts = [(dst, m) for _, dst, m in d.network if type(m) is Accept]
    assert sorted(dst for dst, _ in accepts) == [1, 2], "accepts leave before the write is done"
    assert d.writes[0], "the leader's own accept is being written"
    slot = accepts[0][1].slot
    # Follower 1 writes its accept; its Accepted waits for the write.
    d.deliver(Accept, to=1)
    assert not [m for _, _, m in d.network if type(m) is Accepted]
    d.finish_writes(1)
    d.deliver(Accepted, to=0)
    # One follower's vote is not a majority while the leader's own write is not durable.
    assert leader.replica.commit <= slot and not [r for r in d.replies if r[1] == OK]
    d.finish_writes(0)
    assert leader.replica.commit == slot + 1
    assert [(w, outcome) for w, outcome, _, _ in d.replies] == [("waiter", OK)]


def test_a_commit_point_alone_is_written_without_a_sync() -> None:
    d = Driver()
    leader = d.elect(0)
    leader.command(command(b"s" * 8, 1, "noop", {}), "w", 1000)
    d.drain(0)
    d.deliver(Accept)
    for node in range(3):
        d.finish_writes(node)
    d.deliver(Accepted)
    assert leader.replica.commit == 1 and d.cores[1].replica.commit == 0
    for _ in range(d.config.heartbeat_ticks):  # the heartbeat carries the commit point
        leader.tick(0)
    d.drain(0)
    d.deliver(to=1)
    commit_only = [w for w in d.writes[1] if all(type(r) is CommitRecord for r in w.records)]
    assert commit_only and not any(w.sync for w in commit_only)


def test_waiters_are_told_apart_by_token_even_for_equal_commands() -> None:
    d = Driver()
    leader = d.elect(0)
    same = command(b"s" * 8, 7, "noop", {})
    leader.command(same, "first", 1000)
    leader.command(same, "second", 1000)
    d.drain(0)
    d.settle()
    answered = sorted((w, outcome) for w, outcome, _, _ in d.replies)
    assert answered == [("first", OK), ("second", OK)]


def _behind_a_snapshot() -> tuple[Driver, NodeCore]:
    """Node 2 hears nothing while 12 commands are chosen and the leader compacts its log."""
    d = Driver(snapshot_every_slots=4, snapshot_keep_slots=0)
    leader = d.elect(0)
    d.network = [e for e in d.network if e[1] != 2]
    for seq in range(12):
        leader.command(command(b"s" * 8, seq, "noop", {}), seq, 1000)
        d.drain(0)
        for node in (0, 1):
            d.finish_writes(node)
        d.network = [e for e in d.network if e[1] != 2]
        d.deliver()
    d.settle()
    return d, leader


def test_a_lagging_follower_receives_the_snapshot_in_chunks_and_installs_it() -> None:
    d, leader = _behind_a_snapshot()
    assert leader.snapshot_at >= 4 and leader.replica.log_start > 0
    for _ in range(d.config.heartbeat_ticks):
        leader.tick(0)
    d.drain(0)
    d.settle()
    follower = d.cores[2]
    assert follower.snapshots_installed == 1
    assert follower.replica.commit == leader.replica.commit
    assert follower.machine.length == leader.machine.length
    assert leader.snapshots_sent >= 1


def test_a_request_sent_before_the_install_starts_no_second_transfer() -> None:
    d, leader = _behind_a_snapshot()
    for _ in range(d.config.heartbeat_ticks):
        leader.tick(0)
    d.drain(0)
    d.deliver(to=2)
    follower = d.cores[2]
    for _ in range(d.config.catchup_retry_ticks):  # unanswered so far: it asks again
        follower.tick(0)
    d.drain(2)
    requests = [e for e in d.network if type(e[2]) is CatchupRequest]
    assert len(requests) == 2
    d.network = [e for e in d.network if e is not requests[1]]
    d.settle()
    assert follower.snapshots_installed == 1 and d.opened == [(0, 2)]
    d.network.append(requests[1])  # the late one arrives after the install
    d.settle()
    assert d.opened == [(0, 2)], "one transfer per need"
    assert follower.replica.commit == leader.replica.commit


def test_a_deposed_leader_answers_its_waiters_at_once() -> None:
    d = Driver()
    leader = d.elect(0)
    leader.command(command(b"s" * 8, 1, "noop", {}), "w", 1000)
    d.drain(0)
    d.network.clear()  # its accepts are lost: the slot may or may not be chosen later
    d.cores[1].replica.campaign()
    d.drain(1)
    d.finish_writes(1)
    d.deliver(Prepare, to=0)
    assert leader.replica.role is not Role.LEADER
    assert [(w, outcome) for w, outcome, _, _ in d.replies] == [("w", "unknown")]
    assert leader.waiting_count == 0


def test_a_stopped_core_answers_every_waiter_unknown() -> None:
    d = Driver()
    leader = d.elect(0)
    leader.command(command(b"s" * 8, 1, "noop", {}), "w", 1000)
    d.drain(0)
    leader.stop()
    d.drain(0)
    assert [(w, outcome) for w, outcome, _, _ in d.replies] == [("w", "unknown")]


@pytest.mark.parametrize("probe_ticks", [1, 25])
def test_a_node_whose_clock_is_off_from_a_majority_does_not_lead(probe_ticks: int) -> None:
    d = Driver(clock_offset_ms_max=500, clock_probe_ticks=probe_ticks)
    notices: list[tuple[str, str]] = []
    for step in range(3):  # probes on the first tick, echoes meanwhile, verdicts on the next
        for node, core in enumerate(d.cores):
            core.tick(10_000 + 100 * step + (5_000 if node == 0 else 0))
            effects = core.take()
            if effects is not None:
                notices += [n for n in effects.notices if node == 0]
                d.network += [(node, dst, m) for dst, m in effects.send]
        d.deliver(ClockProbe)
        d.deliver(ClockEcho)
    assert d.cores[0].clocks.from_majority_ms(d.cores[0].ticks) == 5_000
    assert not d.cores[0].replica.may_lead and d.cores[1].replica.may_lead
    assert any(level == "error" and "refusing to lead" in text for level, text in notices)
    d.cores[0].replica.campaign()
    d.drain(0)
    assert d.cores[0].replica.role is Role.FOLLOWER, "it starts no campaign"
    d.elect(1)  # the others lead as usual, and node 0 still votes


def test_a_node_answers_no_clock_probe_before_its_first_tick() -> None:
    """Before its first tick a node has no reading: an echo of 0 would put its clock an
    epoch behind, and the prober would refuse to lead."""
    d = Driver()
    fresh = d.cores[1]
    fresh.step(ClockProbe(0, 10_000))
    effects = fresh.take()
    assert effects is None or not [m for _, m in effects.send if isinstance(m, ClockEcho)]
    fresh.tick(10_050)
    fresh.take()
    fresh.step(ClockProbe(0, 10_000))
    effects = fresh.take()
    assert effects is not None
    assert [m for _, m in effects.send if isinstance(m, ClockEcho)] == [
        ClockEcho(1, 10_000, 10_050)
    ]


def _three_slots_committed_in_one_turn(d: Driver) -> NodeCore:
    leader = d.elect(0)
    for seq in range(3):  # a slot each: every drain cuts a batch
        leader.command(command(b"s" * 8, seq + 1, "noop", {}), f"w{seq}", 1000)
        d.drain(0)
    d.deliver(Accept, to=1)
    d.finish_writes(1)
    d.deliver(Accepted, to=0)  # one vote: no majority while the leader's own is not durable
    d.once = True
    d.applied.clear()
    d.finish_writes(0)  # now all three are chosen at once
    return leader


def test_committed_slots_are_applied_a_bounded_number_of_commands_per_turn_and_all_answered() -> (
    None
):
    d = Driver(apply_commands_max=1)
    leader = _three_slots_committed_in_one_turn(d)
    assert leader.replica.commit == leader.applied + 2 and leader.backlog
    assert [w for w, outcome, _, _ in d.replies if outcome == OK] == ["w0"]
    d.drain(0)  # the next turn
    assert [w for w, outcome, _, _ in d.replies if outcome == OK] == ["w0", "w1"]
    d.once = False
    d.drain(0)
    assert not leader.backlog and leader.applied == leader.replica.commit
    assert [w for w, outcome, _, _ in d.replies if outcome == OK] == ["w0", "w1", "w2"]
    assert max(d.applied) == 1


def test_the_apply_bound_counts_commands_in_whole_slots() -> None:
    # Each of the three slots holds two commands: the leader's time stamp and a client's. Three
    # commands' room takes two whole slots.
    d = Driver(apply_commands_max=3)
    leader = _three_slots_committed_in_one_turn(d)
    assert leader.applied == 2
    assert leader.replica.commit == leader.applied + 1 and leader.backlog
    assert [w for w, outcome, _, _ in d.replies if outcome == OK] == ["w0", "w1"]
    with pytest.raises(ValueError, match="apply_commands_max must be positive, not 0"):
        CoreSettings(apply_commands_max=0)


def test_a_deposed_leader_answers_its_chosen_slots_when_it_applies_them() -> None:
    d = Driver(apply_commands_max=1)
    leader = _three_slots_committed_in_one_turn(d)
    assert leader.backlog
    higher = leader.replica.ballot.__class__(leader.replica.ballot.round + 5, 1)
    leader.step(Prepare(1, higher, leader.replica.commit))
    d.once = False
    d.drain(0)
    assert leader.replica.role is not Role.LEADER
    # Chosen: each is answered with its result, not "unknown".
    assert [w for w, outcome, _, _ in d.replies] == ["w0", "w1", "w2"]
    assert {outcome for _, outcome, _, _ in d.replies} == {OK}
