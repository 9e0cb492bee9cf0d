"""How far this node's wall clock is from its peers', measured from probe round trips.

The leader's clock is the machine's time (it stamps the log), so a leader whose clock is off
moves every lease deadline by as much. Every node probes each peer now and then; the peer
echoes its own reading; the offset is the echo less the midpoint of the round trip (as NTP
does), kept from the fastest of the last few round trips, since a slow one says least. A
node whose clock is further than the bound from a majority of the cluster (itself included)
must not lead. Sans-IO: readings come in as arguments.
"""

from __future__ import annotations

from typing import NamedTuple

#: round trips kept per peer; the one with the smallest round trip gives the offset
_SAMPLES = 8
#: two readings of one peer that differ by more than their round trips allow, and this much
#: more (ticks and scheduling), mean its clock was set: the older ones are dropped
_STEP_MS = 100


class ClockProbe(NamedTuple):
    """What time is it on your clock? `sent_ms` is the sender's reading."""

    src: int
    sent_ms: int


class ClockEcho(NamedTuple):
    """The answer: the probe's `sent_ms` back, and the answering node's reading."""

    src: int
    sent_ms: int
    echo_ms: int


class ClockOffsets:
    """Offsets of the peers' clocks from this one (positive: the peer's is ahead)."""

    def __init__(self, peers: tuple[int, ...], quorum: int, max_age_ticks: int) -> None:
        self.peers = peers
        self.quorum = quorum
        self.max_age_ticks = max_age_ticks
        #: peer -> [(round trip ms, offset ms, tick)], newest last
        self._samples: dict[int, list[tuple[int, float, int]]] = {p: [] for p in peers}

    def on_echo(self, echo: ClockEcho, now_ms: int, tick: int) -> None:
        samples = self._samples.get(echo.src)
        if samples is None or echo.sent_ms > now_ms:
            return  # not a member, or an echo of a probe from before a clock step back
        rtt = now_ms - echo.sent_ms
        offset = echo.echo_ms - (echo.sent_ms + now_ms) / 2
        if samples:
            best = min(samples)
            if abs(offset - best[1]) > (rtt + best[0]) / 2 + _STEP_MS:
                samples.clear()  # more than measuring can miss: the peer's clock stepped
        samples.append((rtt, offset, tick))
        del samples[:-_SAMPLES]

    def offsets(self, tick: int) -> dict[int, float]:
        """Each peer's offset from the fastest recent round trip (peers unheard recently are
        left out)."""
        found: dict[int, float] = {}
        for peer, samples in self._samples.items():
            fresh = [s for s in samples if tick - s[2] <= self.max_age_ticks]
            if fresh:
                found[peer] = min(fresh)[1]
        return found

    def from_majority_ms(self, tick: int) -> float | None:
        """The smallest distance within which a majority of the cluster's clocks (this one
        included) lie from this one; None while too few peers are measured to say."""
        offsets = self.offsets(tick)
        if len(offsets) + 1 < self.quorum:
            return None
        distances = sorted([0.0, *map(abs, offsets.values())])
        return distances[self.quorum - 1]
