"""Scenarios of the Multi-Paxos core, each a short conversation between replicas.

The harness delivers exactly the messages a test names, so each test pins one rule of the
protocol: who may lead, what a new leader must propose again, when a slot counts as chosen.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from harness import Cluster, between, of, to

from paxq.broker.paxos import (
    LEARNED,
    NOOP,
    Accept,
    Accepted,
    Ballot,
    CatchupReply,
    CatchupRequest,
    Census,
    CensusReply,
    Config,
    ConfigError,
    DurableState,
    Heartbeat,
    Message,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    ProposeResult,
    Reject,
    Replica,
    Role,
)

# ------------------------------------------------------------------------------------ election


def test_a_campaign_with_a_majority_of_promises_elects_a_leader() -> None:
    c = Cluster(3)
    c.campaign(0)
    prepares = c.messages(Prepare)
    assert [(dst, m.ballot) for _, dst, m in prepares] == [(1, Ballot(1, 0)), (2, Ballot(1, 0))]
    assert c.disks[0].promised == Ballot(1, 0), "a candidate persists its own promise first"

    c.deliver(to(1))  # one promise is enough with its own: 2 of 3
    c.deliver(of(Promise))
    assert c[0].role is Role.LEADER
    c.stabilize()
    assert c[1].leader_hint == 0 and c[2].leader_hint == 0
    assert c.disks[1].promised == c.disks[2].promised == Ballot(1, 0)


def test_a_follower_campaigns_after_its_randomized_election_timeout() -> None:
    c = Cluster(3, election_ticks_base=10)
    c.tick(1, 9)
    assert not c.messages(PreVote), "no campaign before the base timeout"
    c.tick(1, 11)  # the timeout is drawn from [base, 2 * base)
    assert sorted(dst for _, dst, _ in c.messages(PreVote)) == [0, 2], "a pre-vote first"
    assert c[1].role is Role.FOLLOWER and c[1].promised == Ballot(0, -1), "nothing raised yet"
    c.deliver(of(PreVote))
    c.deliver(of(PreVoteReply))  # nobody hears a leader: granted
    assert c[1].role is Role.CANDIDATE
    c.stabilize()
    assert c[1].role is Role.LEADER


def _isolate(node: int) -> Callable[[int, int, Message], bool]:
    return lambda src, dst, m: src == node or dst == node


def test_a_node_cut_off_from_a_live_leader_never_raises_its_round() -> None:
    c = Cluster(3, election_ticks_base=10)
    c.elect(0)
    ballot = c[0].ballot
    for _ in range(300):  # node 2 alone: its pre-votes and the leader's heartbeats are lost
        for node in range(3):
            c.tick(node)
        c.drop(_isolate(2))
        c.stabilize()
    assert c[2].promised == ballot, "its failed pre-votes raised nothing"
    assert c[2].role is Role.FOLLOWER
    for _ in range(50):  # healed: it follows again, and deposes nobody
        for node in range(3):
            c.tick(node)
        c.stabilize()
    assert c[0].role is Role.LEADER and c[0].ballot == ballot
    assert c[2].leader_hint == 0


def test_a_bridge_partition_keeps_its_leader() -> None:
    """Leader 0 and node 2 cannot reach each other; node 1 reaches both. Node 2 asks for a
    pre-vote, node 1 still hears the leader and refuses: nobody campaigns."""
    c = Cluster(3, election_ticks_base=10)
    c.elect(0)
    ballot = c[0].ballot
    cut = between(0, 2)
    for _ in range(300):
        for node in range(3):
            c.tick(node)
        c.drop(cut)
        c.stabilize()
    assert c[0].role is Role.LEADER and c[0].ballot == ballot
    assert c[1].promised == c[2].promised == ballot


def test_a_pre_vote_learns_the_promises_it_must_campaign_above() -> None:
    c = Cluster(3, election_ticks_base=10)
    c.inject(2, Prepare(0, Ballot(7, 0), 0))  # node 2 promised a round node 1 never saw
    c.drop(lambda src, dst, m: True)
    c.tick(1, 20)
    c.deliver(of(PreVote))
    c.deliver(lambda src, dst, m: isinstance(m, PreVoteReply) and src == 2)
    assert c[1].role is Role.CANDIDATE and c[1].ballot == Ballot(8, 1)
    c.stabilize()
    assert c[1].role is Role.LEADER


def test_heartbeats_keep_followers_from_campaigning() -> None:
    c = Cluster(3)
    c.elect(0)
    for _ in range(100):
        c.tick(0)
        c.tick(1)
        c.tick(2)
        c.stabilize()
    assert [c[n].role for n in range(3)] == [Role.LEADER, Role.FOLLOWER, Role.FOLLOWER]
    assert c[0].ballot == Ballot(1, 0)


def test_an_acceptor_rejects_a_prepare_below_its_promise() -> None:
    c = Cluster(3)
    c.elect(2)  # everyone promised 1.2
    c.campaign(1)  # 2.1 > 1.2: accepted
    c.stabilize()
    assert c[1].role is Role.LEADER
    stale = Prepare(0, Ballot(1, 0), 0)
    c[2].step(stale)
    ready = c[2].ready()
    assert ready is not None
    assert ready.messages == [(0, Reject(2, Ballot(1, 0), Ballot(2, 1)))]


def test_duelling_candidates_one_fails_and_backs_off() -> None:
    c = Cluster(3, election_ticks_base=10, backoff_exponent_max=5)
    c.campaign(1)  # ballot 1.1
    c.campaign(2)  # ballot 1.2
    # Each candidate's prepare reaches the other; node 0 hears from 1 first, then from 2.
    c.deliver(between(1, 2))
    c.deliver(lambda src, dst, m: dst == 0 and src == 1)
    c.deliver(lambda src, dst, m: dst == 0 and src == 2)
    c.stabilize()
    assert c[2].role is Role.LEADER
    assert c[1].role is Role.FOLLOWER
    assert c[1].leader_hint == 2
    assert c[0].promised == Ballot(1, 2)


def test_failed_campaigns_widen_the_random_timeout_exponentially() -> None:
    config = Config(nodes=(0, 1, 2), election_ticks_base=10, backoff_exponent_max=4)
    from random import Random

    replica = Replica(0, config, Random(5))
    drawn: dict[int, list[int]] = {}
    for failures in range(6):
        replica._failed_campaigns = failures
        drawn[failures] = [replica._draw_election_timeout() for _ in range(400)]
    for failures, samples in drawn.items():
        spread = 10 << min(failures, 4)
        assert min(samples) >= 10 and max(samples) < 10 + spread
    # The cap holds: past backoff_exponent_max the range stops growing.
    assert max(drawn[5]) < 10 + (10 << 4)
    assert sum(drawn[4]) / 400 > 4 * sum(drawn[0]) / 400


def test_duelling_proposers_settle_on_one_leader() -> None:
    """All three time out together, over and over, with every message delivered each tick:
    randomized, backed-off timeouts must let one of them win within a bounded time."""
    c = Cluster(3, seed=11)
    for replica in range(3):
        c.campaign(replica)
    for tick in range(2_000):  # noqa: B007 (read after the loop)
        for node in range(3):
            c.tick(node)
        c.stabilize()
        leaders = [n for n in range(3) if c[n].role is Role.LEADER]
        followers = [n for n in range(3) if c[n].role is Role.FOLLOWER]
        if len(leaders) == 1 and len(followers) == 2:
            break
    else:
        pytest.fail("no single leader after 2000 ticks")
    assert tick < 500


# ------------------------------------------------------------------------ proposals and commit


def test_commands_are_batched_into_one_slot_and_applied_everywhere() -> None:
    c = Cluster(3)
    c.elect(0)
    c.propose(0, b"a", b"b", b"c")
    accepts = c.messages(Accept)
    assert {m.value for _, _, m in accepts} == {(b"a", b"b", b"c")}
    assert {m.slot for _, _, m in accepts} == {0}
    c.stabilize()
    assert c.applied[0] == [(b"a", b"b", b"c")]
    # Followers learn the commit point from the next heartbeat.
    c.tick(0, c.config.heartbeat_ticks)
    c.stabilize()
    assert c.applied == [[(b"a", b"b", b"c")]] * 3


def test_batches_close_at_the_count_and_byte_bounds() -> None:
    c = Cluster(
        3,
        batch_count_max=2,
        batch_bytes_max=10,
        command_bytes_max=10,
        window_bytes_max=1000,
        pending_bytes_max=1000,
    )
    c.elect(0)
    c.propose(0, b"1", b"2", b"3", b"4567890", b"abcd")
    values = [m.value for _, dst, m in c.messages(Accept) if dst == 1]
    assert values == [(b"1", b"2"), (b"3", b"4567890"), (b"abcd",)]


def test_a_command_larger_than_a_batch_goes_alone_in_its_slot() -> None:
    c = Cluster(3, batch_bytes_max=10, command_bytes_max=30, window_bytes_max=100)
    c.elect(0)
    c.propose(0, b"a", b"x" * 25, b"b", b"c")
    values = [m.value for _, dst, m in c.messages(Accept) if dst == 1]
    assert values == [(b"a",), (b"x" * 25,), (b"b", b"c")]
    assert c[0].propose(b"y" * 31) is ProposeResult.TOO_LARGE
    c.stabilize()
    assert c.applied[0] == [(b"a",), (b"x" * 25,), (b"b", b"c")]


def test_the_byte_window_holds_proposals_until_chosen_slots_are_applied() -> None:
    c = Cluster(3, batch_count_max=1, batch_bytes_max=8, command_bytes_max=8, window_bytes_max=20)
    c.elect(0)
    c.propose(0, b"1" * 8, b"2" * 8, b"3" * 8, b"4" * 8)
    assert sorted({m.slot for _, _, m in c.messages(Accept)}) == [0, 1], "24 bytes > 20"
    assert c[0].pending_count == 2
    c.deliver(lambda src, dst, m: isinstance(m, Accept) and m.slot == 1)
    c.deliver(of(Accepted))
    assert c[0].commit == 0
    assert not c.messages(Accept) or {m.slot for _, _, m in c.messages(Accept)} == {0}, (
        "slot 1 is chosen but not yet committed: its bytes still count in the window"
    )
    c.deliver(of(Accept))
    c.deliver(of(Accepted))
    assert c[0].commit == 2
    assert sorted({m.slot for _, _, m in c.messages(Accept)}) == [2, 3]
    c.stabilize()
    assert c.applied[0] == [(b"1" * 8,), (b"2" * 8,), (b"3" * 8,), (b"4" * 8,)]


def test_the_pipeline_window_bounds_slots_in_flight() -> None:
    c = Cluster(3, window_slots_max=2, batch_count_max=1)
    c.elect(0)
    c.propose(0, b"a", b"b", b"c", b"d")
    assert sorted({m.slot for _, _, m in c.messages(Accept)}) == [0, 1]
    assert c[0].pending_count == 2
    c.deliver(of(Accept))
    c.deliver(of(Accepted))  # slots 0 and 1 chosen: the runtime's next turn cuts two more
    assert sorted({m.slot for _, _, m in c.messages(Accept)}) == [2, 3]
    c.stabilize()
    assert c.applied[0] == [(b"a",), (b"b",), (b"c",), (b"d",)]


def test_proposals_at_a_follower_are_redirected_and_bounds_are_typed() -> None:
    c = Cluster(
        3,
        pending_count_max=2,
        batch_bytes_max=8,
        command_bytes_max=8,
        window_bytes_max=16,
        pending_bytes_max=16,
    )
    c.elect(0)
    assert c[1].propose(b"x") is ProposeResult.NOT_LEADER
    assert c[1].leader_hint == 0
    assert c[0].propose(b"123456789") is ProposeResult.TOO_LARGE
    assert c[0].propose(b"a") is ProposeResult.QUEUED
    assert c[0].propose(b"b") is ProposeResult.QUEUED
    assert c[0].propose(b"c") is ProposeResult.OVERLOADED


def test_a_single_replica_cluster_commits_alone() -> None:
    c = Cluster(1)
    c.campaign(0)
    assert c[0].role is Role.LEADER
    c.propose(0, b"solo")
    assert c.applied[0] == [(b"solo",)]


def test_a_slot_is_chosen_only_at_a_majority() -> None:
    c = Cluster(5)
    c.elect(0)
    c.propose(0, b"x")
    c.deliver(to(1))
    c.deliver(lambda src, dst, m: isinstance(m, Accepted) and src == 1)
    assert c[0].commit == 0, "2 of 5 is not a majority"
    c.deliver(to(2))
    c.deliver(lambda src, dst, m: isinstance(m, Accepted) and src == 2)
    assert c[0].commit == 1
    assert c.applied[0] == [(b"x",)]


# ------------------------------------------------------------------------ changes of leader


def test_a_new_leader_proposes_again_the_value_a_minority_accepted() -> None:
    c = Cluster(3)
    c.elect(0)
    c.propose(0, b"v")
    c.deliver(lambda src, dst, m: isinstance(m, Accept) and dst == 1)  # only 1 accepts
    c.crash(0)
    c.drop(lambda src, dst, m: True)
    c.campaign(2)
    c.stabilize()
    assert c[2].role is Role.LEADER
    c.tick(2, c.config.heartbeat_ticks)
    c.stabilize()
    assert c.applied[1] == c.applied[2] == [(b"v",)]
    # The old leader comes back and learns the same value.
    c.start(0)
    c.tick(2, c.config.heartbeat_ticks)
    c.stabilize()
    assert c.applied[0] == [(b"v",)]


def test_the_highest_ballot_value_wins_when_promises_disagree() -> None:
    c = Cluster(5)
    c.elect(0)
    c.propose(0, b"old")  # accepted by 0 and 1 only: 2 of 5, not chosen
    c.deliver(lambda src, dst, m: isinstance(m, Accept) and dst == 1)
    c.drop(lambda src, dst, m: True)
    # Node 2 leads at 2.2 with promises from 3 and 4, which know nothing of "old".
    c.campaign(2)
    c.deliver(lambda src, dst, m: isinstance(m, Prepare) and dst in (3, 4))
    c.deliver(of(Promise))
    assert c[2].role is Role.LEADER
    c.drop(lambda src, dst, m: True)
    c.propose(2, b"new")  # only node 2 accepts it
    c.drop(lambda src, dst, m: True)
    assert c[2].log[0] == (Ballot(2, 2), (b"new",))
    # Node 1 campaigns at 2.1, is rejected by node 2 (promised 2.2) and learns the round.
    c.campaign(1)
    c.deliver(lambda src, dst, m: isinstance(m, Prepare) and dst in (2, 3))
    c.deliver(to(1))
    assert c[1].role is Role.FOLLOWER
    c.drop(lambda src, dst, m: True)
    # At 3.1 it hears "old" at 1.0 from itself and "new" at 2.2 from node 2.
    c.campaign(1)
    assert c[1].ballot == Ballot(3, 1)
    c.deliver(lambda src, dst, m: isinstance(m, Prepare) and dst in (2, 3))
    c.deliver(of(Promise))
    assert c[1].role is Role.LEADER
    assert c[1].log[0] == (Ballot(3, 1), (b"new",))
    c.stabilize()
    c.tick(1, c.config.heartbeat_ticks)
    c.stabilize()
    assert c.applied == [[(b"new",)]] * 5


def test_holes_after_a_leader_change_are_filled_with_noops() -> None:
    c = Cluster(3, batch_count_max=1)
    c.elect(0)
    c.propose(0, b"s0", b"s1", b"s2")
    # Only the accept for slot 2 reaches node 1; slots 0 and 1 reach nobody.
    c.deliver(lambda src, dst, m: isinstance(m, Accept) and dst == 1 and m.slot == 2)
    c.crash(0)
    c.drop(lambda src, dst, m: True)
    c.campaign(1)
    c.stabilize()
    c.tick(1, c.config.heartbeat_ticks)
    c.stabilize()
    assert c.applied[1] == [NOOP, NOOP, (b"s2",)]
    assert c.applied[2] == c.applied[1]


def test_a_deposed_leader_steps_down_and_hands_back_unbatched_commands() -> None:
    c = Cluster(3)
    c.elect(0)
    c.propose(0, b"committed")
    c.stabilize()
    c.drop(lambda src, dst, m: True)
    # 0 is cut off; 1 takes over.
    c.campaign(1)
    c.stabilize(between(1, 2))
    c.drop(lambda src, dst, m: True)
    assert c[1].role is Role.LEADER and c[0].role is Role.LEADER
    # The old leader takes a command and sends its accept; the newer promise rejects it.
    c[0].propose(b"stale")
    assert c[0].propose(b"queued") is ProposeResult.QUEUED
    c._drain(0)
    c.deliver(lambda src, dst, m: src == 0 and isinstance(m, Accept))
    rejects = c.messages(Reject)
    assert rejects and all(m.promised == Ballot(2, 1) for _, _, m in rejects)
    c.deliver(of(Reject))
    assert c[0].role is Role.FOLLOWER
    c.stabilize()
    c.tick(1, c.config.heartbeat_ticks)
    c.stabilize()
    assert all(b"stale" not in value for value in c.applied[1])
    assert c.applied[0] == c.applied[1] == c.applied[2]


def test_a_leader_that_loses_its_majority_steps_down() -> None:
    c = Cluster(3, election_ticks_base=10)
    c.elect(0)
    for _ in range(2 * 10 + 1):
        c.tick(0)
        c.drop(lambda src, dst, m: True)  # nothing gets through
    assert c[0].role is Role.FOLLOWER
    assert c[0].propose(b"x") is ProposeResult.NOT_LEADER


def test_a_stale_accept_for_a_chosen_slot_is_not_acknowledged() -> None:
    """Node 2 learned slot 0 chosen by catch-up; a stale leader's different value for that
    slot must not be counted as a vote."""
    c = Cluster(3)
    c.elect(0)
    c.propose(0, b"chosen")
    c.stabilize()
    c.tick(0, c.config.heartbeat_ticks)
    c.stabilize()
    assert c[2].commit == 1
    c[2].step(Accept(1, Ballot(5, 1), 0, (b"other",), 0))
    ready = c[2].ready()
    assert ready is not None
    assert not [m for _, m in ready.after_persist if isinstance(m, Accepted)]
    c[2].step(Accept(1, Ballot(5, 1), 0, (b"chosen",), 0))
    ready = c[2].ready()
    assert ready is not None
    assert not [m for _, m in ready.messages if isinstance(m, Accepted)], "votes wait"
    assert [m for _, m in ready.after_persist if isinstance(m, Accepted)] == [
        Accepted(2, Ballot(5, 1), 0)
    ]


# ------------------------------------------------------------------------------- catch-up


def test_a_lagging_replica_catches_up_from_the_leader_in_bounded_chunks() -> None:
    c = Cluster(3, batch_count_max=1, catchup_slots_max=3)
    c.elect(0)
    for i in range(10):
        c.propose(0, b"%d" % i)
        c.stabilize(between(0, 1))
        c.drop(to(2))
    assert len(c.applied[0]) == 10 and c.applied[2] == []
    c.tick(0, c.config.heartbeat_ticks)
    c.deliver(to(2))  # the heartbeat tells 2 the commit point; 2 asks for the slots
    requests = c.messages(CatchupRequest)
    assert [(dst, m.from_slot) for _, dst, m in requests] == [(0, 0)]
    chunks = []
    while c.in_flight:
        chunks += [len(m.values) for _, _, m in c.messages(CatchupReply)]
        c.deliver()
    assert chunks == [3, 3, 3, 1]
    assert c[2].commit == 10 and c.disks[2].commit == 10
    assert c.applied[2] == c.applied[0]


def test_a_learned_entry_is_reported_above_every_ballot() -> None:
    c = Cluster(3)
    c.elect(0)
    c.propose(0, b"x")
    c.stabilize(between(0, 1))
    c.drop(to(2))
    c[2].step(CatchupReply(0, 0, ((b"x",),), 1))
    c._drain(2)
    assert c[2].log[0] == (LEARNED, (b"x",))
    assert c.disks[2].log[0] == (LEARNED, (b"x",))
    assert c.applied[2] == [(b"x",)]


def test_a_restarted_replica_recovers_its_promise_and_log_and_replays_them() -> None:
    c = Cluster(3)
    c.elect(0)
    c.propose(0, b"a")
    c.stabilize()
    c.tick(0, c.config.heartbeat_ticks)
    c.stabilize()
    c.propose(0, b"b")
    c.stabilize()
    c.restart(1)
    assert c[1].promised == Ballot(1, 0)
    assert c[1].log[1] == (Ballot(1, 0), (b"b",))
    assert c.applied[1] == [(b"a",)], "the commit point on disk is replayed at start"
    c.tick(0, c.config.heartbeat_ticks)
    c.stabilize()
    assert c.applied[1] == [(b"a",), (b"b",)]


def test_duplicated_messages_change_nothing() -> None:
    c = Cluster(3)
    c.campaign(0)
    c.deliver(keep=True)  # every prepare delivered, and left in flight to arrive again
    c.stabilize()
    c.propose(0, b"once")
    for _ in range(3):
        c.deliver(keep=True)
    c.stabilize()
    c.tick(0, c.config.heartbeat_ticks)
    c.stabilize()
    assert c.applied == [[(b"once",)]] * 3


# ------------------------------------------------------------------------------ snapshot seam


def test_compacted_slots_are_answered_with_a_snapshot_request() -> None:
    c = Cluster(3, batch_count_max=1)
    c.elect(0)
    c.propose(0, b"a", b"b", b"c")
    c.stabilize(between(0, 1))
    c.drop(to(2))
    c[0].compact(2)
    assert 0 not in c[0].log and 1 not in c[0].log
    with pytest.raises(ValueError):
        c[0].compact(99)
    c[0].step(CatchupRequest(2, 0))
    ready = c[0].ready()
    assert ready is not None and ready.snapshot_requests == [(2, 0)]
    # The runtime ships the snapshot; the replica then resumes from its end.
    c.applied[2] = c.applied[0][:2]
    c[2].install_snapshot(2)
    c._drain(2)
    assert c[2].commit == 2 and c.disks[2].commit == 2
    c.tick(0, c.config.heartbeat_ticks)
    c.stabilize()
    assert c[2].commit == 3


# ----------------------------------------------------------------------------- robustness


def test_messages_from_non_members_are_ignored() -> None:
    c = Cluster(3)
    c[1].step(Prepare(7, Ballot(9, 7), 0))
    c[1].step(Heartbeat(1, Ballot(9, 1), 5))  # claims to come from the receiver itself
    assert c[1].ready() is None
    assert c[1].promised < Ballot(1, 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"nodes": ()},
        {"nodes": (1, 1)},
        {"nodes": (0, -1)},
        {"nodes": (0, 1, 2), "window_slots_max": 0},
        {"nodes": (0, 1, 2), "heartbeat_ticks": 10, "election_ticks_base": 10},
        {
            "nodes": (0, 1, 2),
            "batch_bytes_max": 100,
            "command_bytes_max": 100,
            "pending_bytes_max": 50,
        },
        {
            "nodes": (0, 1, 2),
            "batch_bytes_max": 10,
            "command_bytes_max": 100,
            "window_bytes_max": 50,
        },
        {"nodes": (0, 1, 2), "command_bytes_max": 0},
        {"nodes": (0, 1, 2), "backoff_exponent_max": 40},
    ],
)
def test_bad_configurations_are_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        Config(**kwargs)


def test_a_replica_must_be_a_member() -> None:
    from random import Random

    with pytest.raises(ValueError, match="not a member"):
        Replica(9, Config(nodes=(0, 1, 2)), Random(0))


def test_catch_up_reaches_a_peer_that_can_answer_despite_stale_replies() -> None:
    """Regression (sim seed 466): a new leader lagging its quorum kept asking a follower that
    was as far behind as itself, and stalled forever. Now a stale reply does not redirect the
    request, and unanswered requests move on to the next peer."""
    c = Cluster(3)
    c.elect(0)
    c.propose(0, b"a")
    c.stabilize(between(0, 1))
    c.tick(0, c.config.heartbeat_ticks)
    c.stabilize(between(0, 1))
    c.drop(to(2))
    assert c[1].commit == 1 and c[2].commit == 0
    c.crash(0)
    c.campaign(2)
    c.deliver(lambda src, dst, m: isinstance(m, Prepare) and dst == 1)
    c.deliver(of(Promise))
    assert c[2].role is Role.LEADER
    c.drop(everything)  # its first catch-up request is lost
    # A late reply from node 0, which knows no more than node 2 does.
    c[2].step(CatchupReply(0, 0, (), 0))
    c._drain(2)
    targets = []
    for _ in range(3 * c.config.catchup_retry_ticks):
        c.tick(2)
        targets += [dst for _, dst, _ in c.messages(CatchupRequest)]
        c.stabilize(between(1, 2))
        if c[2].commit >= 1:
            break
    assert 1 in targets
    assert c[2].commit >= 1 and c.applied[2][0] == (b"a",)


# ---------------------------------------------- regressions found in review (catch-up vs. leading)


def among(*nodes: int):
    group = set(nodes)
    return lambda src, dst, m: src in group and dst in group


def everything(src: int, dst: int, m: object) -> bool:
    return True


def test_a_leader_outvoted_by_catch_up_steps_down_before_announcing_a_commit() -> None:
    """Node 0 leads at a low ballot with a stale catch-up request out. A higher ballot chooses
    w at slot 1 where node 0 proposed v (accepted by node 4 only). When the catch-up reply
    brings w, node 0 must not announce commit 2 under its ballot: node 4 would apply v."""
    c = Cluster(5)
    held = of(CatchupRequest)
    not_held = lambda src, dst, m: not held(src, dst, m)  # noqa: E731
    # Node 1 chooses a at slot 0; nodes 1..4 learn it, node 0 hears nothing.
    c.campaign(1)
    c.drop(to(0))
    c.stabilize(among(1, 2, 3, 4))
    c.propose(1, b"a")
    c.drop(to(0))
    c.stabilize(among(1, 2, 3, 4))
    c.tick(1, c.config.heartbeat_ticks)
    c.drop(to(0))
    c.stabilize(among(1, 2, 3, 4))
    assert [c[n].commit for n in range(5)] == [0, 1, 1, 1, 1]
    # Node 0 is refused at 1.0, learns the round, and wins at 2.0 with nodes 2 and 4:
    # floor 1 (from node 2), so it asks node 2 for slot 0; that request is held back.
    c.campaign(0)
    c.stabilize(among(0, 2))
    c.drop(everything)
    c.campaign(0)
    c.deliver(lambda src, dst, m: src == 0 and dst in (2, 4))
    c.deliver(lambda src, dst, m: src in (2, 4) and dst == 0)
    assert c[0].role is Role.LEADER and c.messages(CatchupRequest)
    c.drop(not_held)
    # Node 0 proposes v at slot 1; only node 4 accepts it.
    c.propose(0, b"v")
    c.deliver(lambda src, dst, m: src == 0 and dst == 4 and isinstance(m, Accept))
    c.drop(not_held)
    # Node 3 wins with nodes 1 and 2 and chooses w at slot 1.
    c.campaign(3)
    c.stabilize(among(1, 2, 3))
    c.propose(3, b"w")
    c.stabilize(among(1, 2, 3))
    c.tick(3, c.config.heartbeat_ticks)
    c.stabilize(among(1, 2, 3))
    c.drop(not_held)
    # The held request reaches node 2; its reply shows w chosen at slot 1.
    c.deliver(held)
    c.deliver(lambda src, dst, m: src == 2 and dst == 0)
    assert c[0].role is Role.FOLLOWER
    c.tick(0, c.config.heartbeat_ticks)
    c.deliver(lambda src, dst, m: src == 0 and dst == 4)
    assert c.applied[4] == [(b"a",)]
    assert c.applied[1] == c.applied[0] == [(b"a",), (b"w",)]


def test_catch_up_never_lets_a_leader_propose_below_its_commit_point() -> None:
    """A stale leader whose catch-up reply reaches past its next slot must step down, not
    write a new value into a chosen slot (which a restart would then replay)."""
    c = Cluster(3)
    c.campaign(0)
    c.drop(to(2))
    c.stabilize(between(0, 1))
    c.propose(0, b"a")
    c.drop(to(2))
    c.stabilize(between(0, 1))
    c.tick(0, c.config.heartbeat_ticks)
    c.drop(to(2))
    c.stabilize(between(0, 1))
    assert [c[n].commit for n in range(3)] == [1, 1, 0]
    # Node 2 wins at 1.2 with node 1: floor 1, its catch-up request is held back.
    c.campaign(2)
    c.deliver(lambda src, dst, m: src == 2 and dst == 1 and isinstance(m, Prepare))
    c.deliver(lambda src, dst, m: src == 1 and dst == 2)
    assert c[2].role is Role.LEADER and c.messages(CatchupRequest)
    c.drop(lambda src, dst, m: src == 2 and not isinstance(m, CatchupRequest))
    # Node 0 wins at 2.0 with node 1 and chooses x at slot 1 and y at slot 2.
    c.campaign(0)
    c.stabilize(between(0, 1))
    for command in (b"x", b"y"):
        c.propose(0, command)
        c.stabilize(between(0, 1))
    c.tick(0, c.config.heartbeat_ticks)
    c.stabilize(between(0, 1))
    # The held request is answered with slots 0..2: node 2 must give up leading.
    c.deliver(of(CatchupRequest))
    c.deliver(lambda src, dst, m: src == 1 and dst == 2)
    assert c[2].role is Role.FOLLOWER
    assert c[2].propose(b"z") is ProposeResult.NOT_LEADER
    assert c.applied[2] == [(b"a",), (b"x",), (b"y",)]
    c.restart(2)
    assert c.applied[2] == [(b"a",), (b"x",), (b"y",)]


def test_a_leader_whose_catch_up_source_died_hands_over_to_the_living_majority() -> None:
    c = Cluster(5)
    # Slot 0 is chosen by {0, 1, 2}; only node 1 learns the commit point.
    c.campaign(0)
    c.stabilize(among(0, 1, 2))
    c.drop(everything)
    c.propose(0, b"a")
    c.stabilize(among(0, 1, 2))
    c.drop(everything)
    c.tick(0, c.config.heartbeat_ticks)
    c.deliver(to(1))
    c.stabilize(among(0, 1))
    c.drop(everything)
    c.crash(0)
    # Node 3 wins with 1, 2 and 4: floor 1 (node 1's commit); then node 1 dies for good.
    c.campaign(3)
    c.deliver(of(Prepare))
    c.deliver(of(Promise))
    assert c[3].role is Role.LEADER and c[3].commit == 0
    c.crash(1)
    c.drop(everything)
    live = (2, 3, 4)
    for tick in range(1_000):
        for node in live:
            if tick % 10 == 0 and c[node].role is Role.LEADER:
                c.propose(node, b"load%d" % tick)
            c.tick(node)
        c.stabilize(among(*live))
        c.drop(everything)
        if all(c[n].commit > 5 for n in live):
            break
    else:
        pytest.fail("the live majority never committed")
    assert all(c.applied[n][0] == (b"a",) for n in live)
    assert c.applied[2][:5] == c.applied[3][:5] == c.applied[4][:5]


def test_a_leader_installing_a_snapshot_commits_the_slots_it_already_knows_chosen() -> None:
    # Sim seed 1045: a leader behind its followers got a snapshot of the slots below its lead
    # point while its own proposals above it were already chosen; its commit point then
    # stopped at the snapshot's end for good, the window full of chosen slots.
    c = Cluster(3, batch_count_max=1)
    c.elect(1)
    c.propose(1, b"a", b"b")
    c.stabilize(between(1, 2))
    c.tick(1, c.config.heartbeat_ticks)
    c.stabilize(between(1, 2))
    c.drop(everything)
    assert c[2].commit == 2 and c[0].commit == 0
    c.crash(1)
    c[2].compact(2)
    c.campaign(0)
    c.stabilize(between(0, 2))
    assert c[0].role is Role.LEADER and c[0].commit == 0  # slots 0..1 need a snapshot
    c.propose(0, b"c", b"d")
    c.stabilize(between(0, 2))
    assert c[0].commit == 0
    c.applied[0] = c.applied[2][:2]
    c[0].install_snapshot(2)
    c._drain(0)
    assert c[0].role is Role.LEADER and c[0].commit == 4


# ------------------------------------------------------- regressions found in the second review


def test_a_snapshot_covering_a_leaders_own_slots_ends_its_leadership() -> None:
    c = Cluster(3, batch_count_max=1)
    c.elect(0)
    c.propose(0, b"a", b"b")
    c.deliver(to(1))  # accepts reach node 1, but no vote comes back yet
    assert c[0].commit == 0 and c[0].inflight_count == 2
    # A snapshot of slots 0..1 says nothing of which values were chosen there.
    c.applied[0] = [(b"a",), (b"b",)]
    c[0].install_snapshot(2)
    c._drain(0)
    assert c[0].role is Role.FOLLOWER
    assert c[0].inflight_count == 0 and c[0].commit == 2 and c.disks[0].commit == 2


def test_a_new_leader_asks_the_peer_that_set_its_floor_first() -> None:
    c = Cluster(5)
    c.elect(1)
    c.propose(1, b"a")
    c.stabilize()
    c.tick(1, c.config.heartbeat_ticks)
    c.deliver(lambda src, dst, m: src == 1 and dst == 4)  # only node 4 learns the commit
    c.drop(everything)
    # Node 0 heard of a higher commit point from node 1 long ago (now dead).
    c[0]._note_commit(1, 1)
    c.drop(everything)
    c.crash(1)
    c.campaign(0)
    c.deliver(lambda src, dst, m: src == 0 and dst in (2, 4))
    c.deliver(lambda src, dst, m: dst == 0)
    assert c[0].role is Role.LEADER
    assert [dst for _, dst, _ in c.messages(CatchupRequest)][-1] == 4
    c.stabilize(lambda src, dst, m: dst != 1)
    assert c.applied[0] == [(b"a",)]


def test_duplicated_catch_up_replies_do_not_multiply_requests() -> None:
    c = Cluster(3, catchup_slots_max=2)
    c.elect(0)
    for i in range(40):
        c.propose(0, b"x%d" % i)
        c.drop(to(2))
        c.stabilize(between(0, 1))
    c.tick(0, c.config.heartbeat_ticks)
    c.deliver(lambda src, dst, m: dst == 2 and isinstance(m, Heartbeat))
    c.drop(lambda src, dst, m: not isinstance(m, CatchupRequest))
    for _ in range(30):
        assert len(c.messages(CatchupRequest)) == 1, "one request chain at a time"
        c.deliver(of(CatchupRequest))
        c.deliver(of(CatchupReply), keep=True)  # every reply arrives twice
        c.deliver(of(CatchupReply))
        c.drop(lambda src, dst, m: not isinstance(m, CatchupRequest))
        if c[2].commit == 40:
            break
    assert c[2].commit == 40 and c.applied[2] == c.applied[0]


# ------------------------------------------------------------------------ a lost disk


def test_a_replica_that_lost_its_data_learns_before_it_votes() -> None:
    c = Cluster(3, election_ticks_base=10, window_slots_max=4)
    c.elect(0)
    c.propose(0, b"a", b"b")
    c.stabilize()
    c.disks[2] = DurableState(voting=False)  # its disk replaced by a blank one
    c.restart(2)
    learner = c[2]
    assert not learner.voting
    # No vote of any kind: no promise to a candidate, no grant, no campaign of its own.
    c.inject(2, Prepare(1, Ballot(9, 1), 0))
    c.inject(2, PreVote(1, Ballot(9, 1)))
    assert not c.messages(Promise) and not [m for _, _, m in c.messages(PreVoteReply) if m.granted]
    c.drop(lambda src, dst, m: True)
    c.tick(2, 100)
    assert learner.role is Role.FOLLOWER and not c.messages(PreVote)
    # It follows the leader and learns; it acknowledges no accept while it learns.
    c.propose(0, b"c")
    c.deliver(of(Accept))
    assert not [m for src, _, m in c.messages(Accepted) if src == 2]
    # Idle, the leader proposes no-ops for it until slots begun after its restart are
    # chosen; then it votes again, and says so durably.
    for _ in range(200):
        for node in range(3):
            c.tick(node)
        c.stabilize()
        if learner.voting:
            break
    assert learner.voting and c.disks[2].voting
    # Past a whole window beyond where the leader's proposals stood when it answered the
    # census (slot 0 held "a b", slot 1 "c").
    assert c[0].commit >= learner.commit > 2 + c.config.window_slots_max
    for _ in range(2):  # the last learning ack may ask for one more no-op
        c.tick(0, c.config.heartbeat_ticks)
        c.stabilize()
    assert c.applied[2] == c.applied[0]
    c.propose(0, b"d")
    c.deliver(of(Accept))
    assert [m for src, _, m in c.messages(Accepted) if src == 2], "it votes again"


def _run(c: Cluster, rounds: int, where=lambda src, dst, m: True) -> None:
    for _ in range(rounds):
        for node in range(len(c.replicas)):
            if c.replicas[node] is not None:
                c.tick(node)
        c.stabilize(where)
        c.drop(lambda src, dst, m: True)  # what `where` held back is lost


def test_a_learner_takes_no_witness_from_commit_points_it_hears() -> None:
    """A delayed message can carry a commit point long gone by: only a census of the voting
    peers and a leader at or above every promise they report let the learner vote."""
    c = Cluster(3, election_ticks_base=10, window_slots_max=4)
    c.elect(0)
    for n in range(20):
        c.propose(0, b"m%d" % n)
        c.stabilize()
    c.disks[2] = DurableState(voting=False)
    c.restart(2)
    learner = c[2]
    c.tick(2, 2 * 10 - 1)
    assert not c.messages(Census), "no census before two base timeouts"
    c.tick(2)
    nonces = {m.nonce for src, _, m in c.messages(Census) if src == 2}
    assert len(nonces) == 1 and sorted(dst for _, dst, _ in c.messages(Census)) == [0, 1]
    # An old accept with commit point 1 arrives: the old rule would have voted past 1 + 4.
    c.inject(2, Accept(0, c[0].ballot, 1, c[0].log[1][1], 1))
    # The leader's census replies are lost: no witness, however far the commit point goes.
    _run(c, 100, where=lambda src, dst, m: not (type(m) is CensusReply and src == 0))
    assert learner.commit >= c[0].commit - 1 > 20 + c.config.window_slots_max
    assert not learner.voting
    # A reply to an earlier start (another nonce) counts for nothing either.
    c.inject(2, CensusReply(0, nonces.pop() ^ 1, c[0].promised, True, c[0].next_slot))
    c.tick(2)
    assert not learner.voting
    # With the leader's replies it votes once the slots past its answer are chosen.
    _run(c, 100)
    assert learner.voting and c.disks[2].voting


def test_a_learner_waits_for_a_leader_above_every_promise_in_its_census() -> None:
    c = Cluster(3, election_ticks_base=10, window_slots_max=4)
    c.elect(0)
    c.propose(0, b"a")
    c.stabilize()
    c.disks[2] = DurableState(voting=False)
    c.restart(2)
    # Node 1 promises a ballot above the leader's (a candidate whose promise is lost):
    # the learner's former self may have accepted in it, at slots leader 0 never saw.
    c.inject(1, Prepare(0, Ballot(9, 0), 0))
    c.drop(lambda src, dst, m: True)
    # While leader 0 does not learn of it, its answers do not settle the census.
    _run(c, 15, where=lambda src, dst, m: type(m) is not Reject)
    assert c[0].role is Role.LEADER and c[2].witness is None
    voted_under: Ballot | None = None
    for _ in range(300):
        for node in range(3):
            c.tick(node)
        c.stabilize()
        if c[2].voting:
            leaders = [r.ballot for r in c.replicas if r is not None and r.role is Role.LEADER]
            voted_under = max(leaders)
            break
    assert voted_under is not None, "it votes once a new leader is in place"
    assert voted_under > Ballot(9, 0)


def test_a_campaign_that_counted_a_forgotten_promise_is_over_before_the_learner_votes() -> None:
    """Node 1's phase 1 holds node 4's promise when node 4 loses its disk; the rest of its
    quorum is slow to answer. Had the campaign outlived the learner's wait, the learner
    could help choose X in the old ballot and node 1 then choose Y at the same slot with
    the forgotten promise. A phase 1 lasts a base timeout and the census waits two."""
    c = Cluster(5, election_ticks_base=10, window_slots_max=4)
    c.elect(0)
    for n in range(5):
        c.propose(0, b"m%d" % n)
        c.stabilize()
    c.campaign(1)
    c[1]._election_timeout = 300  # a backed-off draw (up to base << backoff_exponent_max)
    c.drop(lambda src, dst, m: type(m) is Prepare and dst in (0, 3))
    c.deliver(lambda src, dst, m: type(m) is Prepare and dst == 4)
    c.deliver(lambda src, dst, m: type(m) is Promise and src == 4)
    held = [e for e in c.in_flight if type(e[2]) is Prepare and e[1] == 2]  # slow to node 2
    c.in_flight = [e for e in c.in_flight if e not in held]
    candidate = c[1].ballot
    c.disks[4] = DurableState(voting=False)
    c.restart(4)

    def cut(src: int, dst: int, m: Message) -> bool:  # node 1 cut from nodes 0 and 4
        return {src, dst} in ({0, 1}, {1, 4})

    for ticks in range(1, 200):
        for node in range(5):
            c.tick(node)
        c.propose(0, b"x%d" % ticks)
        c.drop(cut)
        c.stabilize(lambda src, dst, m: not cut(src, dst, m))
        c.drop(cut)
        if c[4].voting:
            break
    assert c[4].voting
    assert c[1].role is not Role.CANDIDATE or c[1].ballot != candidate, "its phase 1 is over"
    assert c[4].promised >= c[0].ballot
    # The slow promise arrives now: it completes no quorum for the abandoned ballot.
    c.in_flight = held
    c.deliver(of(Prepare))
    c.deliver(lambda src, dst, m: type(m) is Promise and dst == 1)
    assert not (c[1].role is Role.LEADER and c[1].ballot == candidate)
