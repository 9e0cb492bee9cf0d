"""Messages between replicas. Small immutable values that compare by value.

Every message names its sender (`src`) so a reply needs no envelope. A value is a batch: a tuple
of opaque commands; the empty tuple is a no-op.
"""

from __future__ import annotations

from typing import NamedTuple

from .ballot import Ballot

Value = tuple[bytes, ...]
NOOP: Value = ()


class PreVote(NamedTuple):
    """Would you promise `ballot`? Asked before a campaign (etcd's PreVote, Raft thesis 9.6);
    it changes nothing at the receiver, so a node cut off from the rest never raises rounds."""

    src: int
    ballot: Ballot


class PreVoteReply(NamedTuple):
    """`granted`: the sender hears no live leader (it would promise); `promised` lets the
    candidate pick a round above every promise it will meet."""

    src: int
    ballot: Ballot
    granted: bool
    promised: Ballot


class Prepare(NamedTuple):
    """Phase 1a for every slot from `from_slot` on."""

    src: int
    ballot: Ballot
    from_slot: int


class Promise(NamedTuple):
    """Phase 1b: the acceptor's commit point and its accepted entries at or above
    max(from_slot, commit), as (slot, ballot, value)."""

    src: int
    ballot: Ballot
    commit: int
    entries: tuple[tuple[int, Ballot, Value], ...]


class Accept(NamedTuple):
    """Phase 2a for one slot; `commit` piggybacks the leader's commit point."""

    src: int
    ballot: Ballot
    slot: int
    value: Value
    commit: int


class Accepted(NamedTuple):
    """Phase 2b."""

    src: int
    ballot: Ballot
    slot: int


class Reject(NamedTuple):
    """A prepare, accept or heartbeat at `rejected` refused: the sender promised `promised`."""

    src: int
    rejected: Ballot
    promised: Ballot


class Heartbeat(NamedTuple):
    """The leader is alive; slots below `commit` are chosen."""

    src: int
    ballot: Ballot
    commit: int


class HeartbeatAck(NamedTuple):
    """A follower still follows `ballot` (the leader counts these to keep its quorum);
    `voting` False: it lost its data and learns, and needs new slots chosen to vote again."""

    src: int
    ballot: Ballot
    commit: int
    voting: bool = True


class Census(NamedTuple):
    """From a replica that lost its data: what have you promised, and how far does your
    leadership reach? `nonce` ties the replies to this start of the asker."""

    src: int
    nonce: int


class CensusReply(NamedTuple):
    """`promised` and `voting` are the sender's; `next_slot` is the slot its leadership
    (in ballot `promised`, phase 1 done) proposes next, or -1 if it does not lead."""

    src: int
    nonce: int
    promised: Ballot
    voting: bool
    next_slot: int


class CatchupRequest(NamedTuple):
    """Send me chosen slots from `from_slot` on."""

    src: int
    from_slot: int


class CatchupReply(NamedTuple):
    """Chosen values for the slots from_slot, from_slot+1, ...; `commit` is the sender's."""

    src: int
    from_slot: int
    values: tuple[Value, ...]
    commit: int


Message = (
    PreVote
    | PreVoteReply
    | Prepare
    | Promise
    | Accept
    | Accepted
    | Reject
    | Heartbeat
    | HeartbeatAck
    | CatchupRequest
    | CatchupReply
    | Census
    | CensusReply
)


def value_bytes(value: Value) -> int:
    """Payload size of a batch, as the byte bounds count it."""
    return sum(map(len, value))
