"""Clock offsets from probe round trips: the estimate, its filter, and the majority rule."""

from __future__ import annotations

from paxq.broker.node.clocks import ClockEcho, ClockOffsets


def _echo(clocks: ClockOffsets, peer: int, sent: int, rtt: int, offset: int, tick: int) -> None:
    # The peer read its clock halfway through the round trip.
    clocks.on_echo(ClockEcho(peer, sent, sent + rtt // 2 + offset), sent + rtt, tick)


def test_the_fastest_round_trip_gives_the_offset() -> None:
    clocks = ClockOffsets((1, 2), quorum=2, max_age_ticks=100)
    _echo(clocks, 1, 1000, 40, 300, 1)
    clocks.on_echo(ClockEcho(1, 2000, 2000 + 10 + 300 + 30), 2020, 2)  # slow, and skewed by it
    _echo(clocks, 1, 3000, 4, 300, 3)
    assert clocks.offsets(3) == {1: 300}


def test_a_node_far_from_a_majority_is_told_so() -> None:
    # Three nodes: the other two agree with each other and are 5 s ahead of this one.
    clocks = ClockOffsets((1, 2), quorum=2, max_age_ticks=100)
    assert clocks.from_majority_ms(0) is None, "nothing measured: no verdict"
    _echo(clocks, 1, 1000, 2, 5000, 1)
    assert clocks.from_majority_ms(1) == 5000  # itself and one more are a majority of 3
    _echo(clocks, 2, 1000, 2, 5010, 1)
    assert clocks.from_majority_ms(1) == 5000
    # From one of the others: this node is close to the third, so a majority agrees.
    peer = ClockOffsets((0, 2), quorum=2, max_age_ticks=100)
    _echo(peer, 0, 1000, 2, -5000, 1)
    _echo(peer, 2, 1000, 2, 10, 1)
    assert peer.from_majority_ms(1) == 10


def test_old_measurements_age_out_and_a_stepped_clock_replaces_them() -> None:
    clocks = ClockOffsets((1, 2), quorum=2, max_age_ticks=10)
    _echo(clocks, 1, 1000, 2, 0, 1)
    assert clocks.offsets(11) == {1: 0} and clocks.offsets(12) == {}
    _echo(clocks, 1, 2000, 2, 0, 20)
    _echo(clocks, 1, 3000, 30, 4000, 21)  # restarted with its clock 4 s ahead: slower trip
    assert clocks.offsets(21) == {1: 4000}, "the step is believed at once"
