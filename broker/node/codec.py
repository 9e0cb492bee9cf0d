"""Peer messages on the wire: each paxos message as one CBOR array, tag first.

    Prepare        [1, src, round, node, from_slot]
    Promise        [2, src, round, node, commit, [[slot, round, node, value], ...]]
    Accept         [3, src, round, node, slot, value, commit]
    TracedAccept   [12, src, round, node, slot, value, commit, traceparent]
    Accepted       [4, src, round, node, slot]
    Reject         [5, src, round, node, promised_round, promised_node]
    Heartbeat      [6, src, round, node, commit]
    HeartbeatAck   [7, src, round, node, commit, voting]
    CatchupRequest [8, src, from_slot]
    CatchupReply   [9, src, from_slot, [value, ...], commit]
    SnapshotChunk  [10, src, slot, index, count, data]      (node level: see transfer.py)
    SnapshotAck    [11, src, slot, received]
    PreVote        [13, src, round, node]
    PreVoteReply   [14, src, round, node, granted, promised_round, promised_node]
    ClockProbe     [15, src, sent_ms]                       (node level: see clocks.py)
    ClockEcho      [16, src, sent_ms, echo_ms]
    Census         [17, src, nonce]
    CensusReply    [18, src, nonce, promised_round, promised_node, voting, next_slot]

where value = [command bytes, ...]. The core trusts message fields (it tolerates crashes, not
lies), so decoding checks every type and range, and every batch against the configured bounds,
and refuses anything else with MalformedMessage before the core sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from paxq.client.wire import MalformedMessage

from ..paxos import (
    LEARNED,
    Accept,
    Accepted,
    Ballot,
    CatchupReply,
    CatchupRequest,
    Census,
    CensusReply,
    Config,
    Heartbeat,
    HeartbeatAck,
    Message,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    Reject,
    Value,
)
from .clocks import ClockEcho, ClockProbe
from .transfer import SnapshotAck, SnapshotChunk


class TracedAccept(NamedTuple):
    """An Accept that carries the W3C traceparent of its slot's span (a traced batch): the
    follower's spans join the client's trace. The replica only ever sees `accept`."""

    accept: Accept
    trace: str


PeerMessage = Message | SnapshotChunk | SnapshotAck | TracedAccept | ClockProbe | ClockEcho
#: the longest traceparent taken ("00-" 32 hex "-" 16 hex "-" 2 hex is 55)
_TRACE_CHARS_MAX = 128

_SLOT_MAX = 1 << 62  # far beyond any real log; refuses absurd slot numbers outright
_NODE_MAX = 1 << 16
_CHUNKS_MAX = 1 << 20
_NONCE_MAX = (1 << 62) - 1
_MS_MAX = 1 << 53  # wall clock readings in ms: far beyond any real date


def encode(message: PeerMessage) -> list:
    """The message as a CBOR-ready array (the frame layer adds length and bytes)."""
    kind = type(message)
    if kind is Accept:
        m = message
        return [3, m.src, m.ballot.round, m.ballot.node, m.slot, list(m.value), m.commit]
    if kind is Accepted:
        return [4, message.src, message.ballot.round, message.ballot.node, message.slot]
    if kind is Heartbeat:
        return [6, message.src, message.ballot.round, message.ballot.node, message.commit]
    if kind is HeartbeatAck:
        m = message
        return [7, m.src, m.ballot.round, m.ballot.node, m.commit, m.voting]
    if kind is Prepare:
        return [1, message.src, message.ballot.round, message.ballot.node, message.from_slot]
    if kind is Promise:
        m = message
        entries = [[slot, b.round, b.node, list(value)] for slot, b, value in m.entries]
        return [2, m.src, m.ballot.round, m.ballot.node, m.commit, entries]
    if kind is Reject:
        m = message
        return [5, m.src, m.rejected.round, m.rejected.node, m.promised.round, m.promised.node]
    if kind is PreVote:
        return [13, message.src, message.ballot.round, message.ballot.node]
    if kind is PreVoteReply:
        m = message
        b, p = m.ballot, m.promised
        return [14, m.src, b.round, b.node, m.granted, p.round, p.node]
    if kind is CatchupRequest:
        return [8, message.src, message.from_slot]
    if kind is CatchupReply:
        m = message
        return [9, m.src, m.from_slot, [list(value) for value in m.values], m.commit]
    if kind is Census:
        return [17, *message]
    if kind is CensusReply:
        m = message
        return [18, m.src, m.nonce, m.promised.round, m.promised.node, m.voting, m.next_slot]
    if kind is SnapshotChunk:
        return [10, *message]
    if kind is SnapshotAck:
        return [11, *message]
    if kind is ClockProbe:
        return [15, *message]
    if kind is ClockEcho:
        return [16, *message]
    if kind is TracedAccept:
        return [12, *encode(message.accept)[1:], message.trace]
    raise TypeError(f"not a paxos message: {message!r}")


class Decoder:
    """Decodes peer messages under one configuration's bounds."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._decoders: dict[int, tuple[int, Callable[[list], PeerMessage]]] = {
            1: (5, self._prepare),
            2: (6, self._promise),
            3: (7, self._accept),
            4: (5, self._accepted),
            5: (6, self._reject),
            6: (5, self._heartbeat),
            7: (6, self._heartbeat_ack),
            8: (3, self._catchup_request),
            9: (5, self._catchup_reply),
            10: (6, self._snapshot_chunk),
            11: (4, self._snapshot_ack),
            12: (8, self._traced_accept),
            13: (4, self._pre_vote),
            14: (7, self._pre_vote_reply),
            15: (3, self._clock_probe),
            16: (4, self._clock_echo),
            17: (3, self._census),
            18: (7, self._census_reply),
        }

    def decode(self, body: object) -> PeerMessage:
        if not isinstance(body, list) or not body:
            raise MalformedMessage("a peer message is a non-empty array")
        tag = body[0]
        found = self._decoders.get(tag) if isinstance(tag, int) else None
        if found is None:
            raise MalformedMessage(f"unknown peer message tag {tag!r}")
        arity, decode = found
        if len(body) != arity:
            raise MalformedMessage(f"message {tag} has {len(body)} fields, expected {arity}")
        return decode(body)

    # ---------------------------------------------------------------------------- fields

    @staticmethod
    def _int(value: object, low: int, high: int, what: str) -> int:
        if type(value) is not int or not low <= value <= high:
            raise MalformedMessage(f"{what} must be an integer in [{low}, {high}], got {value!r}")
        return value

    def _src(self, value: object) -> int:
        return self._int(value, 0, _NODE_MAX, "src")

    def _slot(self, value: object, what: str = "slot") -> int:
        return self._int(value, 0, _SLOT_MAX, what)

    def _ballot(self, round_: object, node: object, *, learned: bool = False) -> Ballot:
        ballot = Ballot(
            self._int(round_, 0, LEARNED.round, "ballot round"),
            self._int(node, -1, _NODE_MAX, "ballot node"),
        )
        if ballot.round == LEARNED.round and not (learned and ballot == LEARNED):
            raise MalformedMessage("the learned ballot may only be reported in a promise")
        return ballot

    def _value(self, value: object) -> Value:
        cfg = self.config
        if not isinstance(value, list):
            raise MalformedMessage("a value is an array of commands")
        if len(value) > cfg.batch_count_max:
            raise MalformedMessage(
                f"a batch of {len(value):,} commands; the most is {cfg.batch_count_max:,}"
            )
        size = 0
        for command in value:
            if type(command) is not bytes:
                raise MalformedMessage("a command is a byte string")
            size += len(command)
        if size > cfg.slot_bytes_max:
            raise MalformedMessage(
                f"a batch of {size:,} bytes; the largest is {cfg.slot_bytes_max:,}"
            )
        return tuple(value)

    # -------------------------------------------------------------------------- messages

    def _pre_vote(self, b: list) -> PreVote:
        return PreVote(self._src(b[1]), self._ballot(b[2], b[3]))

    def _pre_vote_reply(self, b: list) -> PreVoteReply:
        if type(b[4]) is not bool:
            raise MalformedMessage(f"granted must be a boolean, got {b[4]!r}")
        return PreVoteReply(
            self._src(b[1]), self._ballot(b[2], b[3]), b[4], self._ballot(b[5], b[6])
        )

    def _prepare(self, b: list) -> Prepare:
        return Prepare(self._src(b[1]), self._ballot(b[2], b[3]), self._slot(b[4], "from_slot"))

    def _promise(self, b: list) -> Promise:
        if not isinstance(b[5], list):
            raise MalformedMessage("promise entries are an array")
        entries = []
        for entry in b[5]:
            if not isinstance(entry, list) or len(entry) != 4:
                raise MalformedMessage("a promise entry is [slot, round, node, value]")
            slot = self._slot(entry[0])
            entries.append(
                (slot, self._ballot(entry[1], entry[2], learned=True), self._value(entry[3]))
            )
        return Promise(
            self._src(b[1]), self._ballot(b[2], b[3]), self._slot(b[4], "commit"), tuple(entries)
        )

    def _accept(self, b: list) -> Accept:
        return Accept(
            self._src(b[1]),
            self._ballot(b[2], b[3]),
            self._slot(b[4]),
            self._value(b[5]),
            self._slot(b[6], "commit"),
        )

    def _traced_accept(self, b: list) -> TracedAccept:
        trace = b[7]
        if type(trace) is not str or len(trace) > _TRACE_CHARS_MAX:
            raise MalformedMessage(f"a trace context is a string of at most {_TRACE_CHARS_MAX}")
        return TracedAccept(self._accept(b[:7]), trace)

    def _accepted(self, b: list) -> Accepted:
        return Accepted(self._src(b[1]), self._ballot(b[2], b[3]), self._slot(b[4]))

    def _reject(self, b: list) -> Reject:
        return Reject(self._src(b[1]), self._ballot(b[2], b[3]), self._ballot(b[4], b[5]))

    def _heartbeat(self, b: list) -> Heartbeat:
        return Heartbeat(self._src(b[1]), self._ballot(b[2], b[3]), self._slot(b[4], "commit"))

    def _heartbeat_ack(self, b: list) -> HeartbeatAck:
        if type(b[5]) is not bool:
            raise MalformedMessage(f"voting must be a boolean, got {b[5]!r}")
        return HeartbeatAck(
            self._src(b[1]), self._ballot(b[2], b[3]), self._slot(b[4], "commit"), b[5]
        )

    def _catchup_request(self, b: list) -> CatchupRequest:
        return CatchupRequest(self._src(b[1]), self._slot(b[2], "from_slot"))

    def _catchup_reply(self, b: list) -> CatchupReply:
        if not isinstance(b[3], list) or len(b[3]) > self.config.catchup_slots_max:
            raise MalformedMessage("catch-up values are an array within catchup_slots_max")
        values = tuple(self._value(value) for value in b[3])
        return CatchupReply(
            self._src(b[1]), self._slot(b[2], "from_slot"), values, self._slot(b[4], "commit")
        )

    def _census(self, b: list) -> Census:
        return Census(self._src(b[1]), self._int(b[2], 0, _NONCE_MAX, "nonce"))

    def _census_reply(self, b: list) -> CensusReply:
        if type(b[5]) is not bool:
            raise MalformedMessage(f"voting must be a boolean, got {b[5]!r}")
        return CensusReply(
            self._src(b[1]),
            self._int(b[2], 0, _NONCE_MAX, "nonce"),
            self._ballot(b[3], b[4]),
            b[5],
            self._int(b[6], -1, _SLOT_MAX, "next_slot"),
        )

    def _snapshot_chunk(self, b: list) -> SnapshotChunk:
        count = self._int(b[4], 1, _CHUNKS_MAX, "chunk count")
        if type(b[5]) is not bytes:
            raise MalformedMessage("a snapshot chunk's data is a byte string")
        return SnapshotChunk(
            self._src(b[1]), self._slot(b[2]), self._int(b[3], 0, count - 1, "index"), count, b[5]
        )

    def _clock_probe(self, b: list) -> ClockProbe:
        return ClockProbe(self._src(b[1]), self._int(b[2], 0, _MS_MAX, "sent_ms"))

    def _clock_echo(self, b: list) -> ClockEcho:
        return ClockEcho(
            self._src(b[1]),
            self._int(b[2], 0, _MS_MAX, "sent_ms"),
            self._int(b[3], 0, _MS_MAX, "echo_ms"),
        )

    def _snapshot_ack(self, b: list) -> SnapshotAck:
        return SnapshotAck(
            self._src(b[1]), self._slot(b[2]), self._int(b[3], 0, _CHUNKS_MAX, "received")
        )
