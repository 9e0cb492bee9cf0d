"""Ballots: (round, node) pairs, totally ordered, unique per campaign."""

from __future__ import annotations

from typing import NamedTuple


class Ballot(NamedTuple):
    """A proposal number. Compares as a tuple: by round, then by node id."""

    round: int
    node: int

    def __str__(self) -> str:
        return f"{self.round}.{self.node}"


#: Below every ballot a candidate can pick (candidates start at round 1).
ZERO = Ballot(0, -1)

#: Marks a log entry learned as chosen (catch-up) rather than accepted in some ballot. It is
#: above every real ballot, so a candidate that hears of it adopts it: safe, because a chosen
#: value is the only value any later ballot may propose for that slot.
LEARNED = Ballot(1 << 62, -1)
