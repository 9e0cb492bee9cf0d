"""Frames and the peer message codec: round trips, bounds, and bad input with typed errors."""

from __future__ import annotations

import contextlib
import itertools

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paxq.broker.node import Decoder, encode
from paxq.broker.node.clocks import ClockEcho, ClockProbe
from paxq.broker.node.transfer import SnapshotAck, SnapshotChunk
from paxq.broker.paxos import (
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
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    Reject,
)
from paxq.client.wire import (
    HEADER_BYTES,
    Encoded,
    ErrorCode,
    FrameDecoder,
    FrameTooLarge,
    MalformedFrame,
    MalformedMessage,
    encode_frame,
)

# ---------------------------------------------------------------------------------- frames

bodies = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=50) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


@given(body=bodies, inner=bodies)
def test_an_encoded_value_is_framed_as_the_value_itself(body: object, inner: object) -> None:
    framed = encode_frame({"outer": body, "inner": Encoded(cbor2.dumps(inner))})
    assert framed == encode_frame({"outer": body, "inner": inner})
    with pytest.raises(cbor2.CBOREncodeTypeError, match="cannot encode object"):
        encode_frame({"inner": object()})


@given(frames=st.lists(bodies, max_size=8), cuts=st.lists(st.integers(0, 400), max_size=10))
def test_frames_survive_any_split_of_the_stream(frames: list, cuts: list[int]) -> None:
    stream = b"".join(encode_frame(body) for body in frames)
    points = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    received = []
    for start, end in itertools.pairwise(points):
        received.extend(decoder.feed(stream[start:end]))
    assert received == [cbor2.loads(cbor2.dumps(body)) for body in frames]
    assert decoder.buffered_bytes == 0


def test_an_oversized_frame_is_refused_at_its_length_prefix() -> None:
    decoder = FrameDecoder(frame_bytes_max=100)
    announced = (101).to_bytes(HEADER_BYTES, "big")
    with pytest.raises(FrameTooLarge) as caught:
        list(decoder.feed(announced))  # refused before a single body byte is buffered
    assert caught.value.code is ErrorCode.TOO_LARGE
    with pytest.raises(MalformedFrame):
        list(decoder.feed(b"more"))  # the stream is unusable after an error
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * 200, frame_bytes_max=100)


def test_garbage_in_a_frame_is_a_malformed_frame() -> None:
    decoder = FrameDecoder()
    with pytest.raises(MalformedFrame) as caught:
        list(decoder.feed((2).to_bytes(HEADER_BYTES, "big") + b"\xff\xff"))
    assert caught.value.code is ErrorCode.BAD_FRAME


def test_frames_before_an_error_are_still_delivered() -> None:
    decoder = FrameDecoder()
    good = encode_frame([1, 2])
    bad = (1).to_bytes(HEADER_BYTES, "big") + b"\xff"
    frames = decoder.feed(good + bad)
    assert next(frames) == [1, 2]
    with pytest.raises(MalformedFrame):
        next(frames)


# ----------------------------------------------------------------------------- peer codec

CONFIG = Config(
    nodes=(0, 1, 2),
    batch_count_max=8,
    batch_bytes_max=64,
    command_bytes_max=64,
    window_bytes_max=64,
    pending_bytes_max=64,
    catchup_slots_max=4,
)
DECODER = Decoder(CONFIG)

nodes = st.integers(0, 2)
slots = st.integers(0, 1 << 40)
ballot = st.builds(Ballot, st.integers(0, 1 << 40), st.integers(0, 2))
value = st.lists(st.binary(max_size=8), max_size=8).map(tuple)
messages = st.one_of(
    st.builds(PreVote, nodes, ballot),
    st.builds(PreVoteReply, nodes, ballot, st.booleans(), ballot),
    st.builds(Prepare, nodes, ballot, slots),
    st.builds(
        Promise,
        nodes,
        ballot,
        slots,
        st.lists(st.tuples(slots, ballot | st.just(LEARNED), value), max_size=4).map(tuple),
    ),
    st.builds(Accept, nodes, ballot, slots, value, slots),
    st.builds(Accepted, nodes, ballot, slots),
    st.builds(Reject, nodes, ballot, ballot),
    st.builds(Heartbeat, nodes, ballot, slots),
    st.builds(HeartbeatAck, nodes, ballot, slots, st.booleans()),
    st.builds(CatchupRequest, nodes, slots),
    st.builds(CatchupReply, nodes, slots, st.lists(value, max_size=4).map(tuple), slots),
    st.integers(1, 50).flatmap(
        lambda count: st.builds(
            SnapshotChunk, nodes, slots, st.integers(0, count - 1), st.just(count), st.binary()
        )
    ),
    st.builds(SnapshotAck, nodes, slots, st.integers(0, 1 << 20)),
    st.builds(ClockProbe, nodes, st.integers(0, 1 << 50)),
    st.builds(ClockEcho, nodes, st.integers(0, 1 << 50), st.integers(0, 1 << 50)),
    st.builds(Census, nodes, st.integers(0, (1 << 62) - 1)),
    st.builds(
        CensusReply, nodes, st.integers(0, 1 << 40), ballot, st.booleans(), st.just(-1) | slots
    ),
)


@given(messages)
def test_every_message_round_trips_through_a_frame(message) -> None:
    (body,) = list(FrameDecoder().feed(encode_frame(encode(message))))
    assert DECODER.decode(body) == message


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ("hello", "non-empty array"),
        ([], "non-empty array"),
        ([42, 0], "unknown peer message tag"),
        ([1.0, 0, 1, 0, 0], "unknown peer message tag"),
        ([1, 0, 1, 0], "fields"),
        ([1, "0", 1, 0, 0], "src"),
        ([1, 0, 1, 0, -1], "from_slot"),
        ([1, 0, True, 0, 0], "ballot round"),
        ([1, 0, 1 << 62, -1, 0], "learned ballot"),
        ([4, 0, 1, 0, 1 << 63], "slot"),
        ([3, 0, 1, 0, 0, ["text"], 0], "byte string"),
        ([3, 0, 1, 0, 0, [b"x"] * 9, 0], "a batch of 9 commands; the most is 8"),
        ([3, 0, 1, 0, 0, [b"x" * 65], 0], "a batch of 65 bytes; the largest is 64"),
        ([3, 0, 1, 0, 0, b"not a list", 0], "array of commands"),
        ([2, 0, 1, 0, 0, [[0, 1, 0]]], "promise entry"),
        ([9, 0, 0, [[b"a"]] * 5, 0], "catchup_slots_max"),
        ([10, 0, 5, 2, 2, b"x"], "index"),
        ([10, 0, 5, 0, 0, b"x"], "chunk count"),
        ([10, 0, 5, 0, 1, "text"], "byte string"),
        ([11, 0, 5, -1], "received"),
        ([14, 0, 1, 0, 1, 1, 0], "granted must be a boolean"),
        ([16, 0, 5, -1], "echo_ms"),
        ([17, 0, 1 << 62], "nonce"),
        ([18, 0, 7, 1, 0, 1, 3], "voting must be a boolean"),
        ([18, 0, 7, 1, 0, True, -2], "next_slot"),
    ],
)
def test_malformed_peer_messages_are_refused_with_a_typed_error(body, complaint) -> None:
    with pytest.raises(MalformedMessage, match=complaint) as caught:
        DECODER.decode(body)
    assert caught.value.code is ErrorCode.BAD_REQUEST


@settings(max_examples=300)
@given(body=st.lists(bodies, max_size=8) | bodies)
def test_arbitrary_input_decodes_to_a_message_or_a_typed_error(body) -> None:
    with contextlib.suppress(MalformedMessage):
        DECODER.decode(body)


@given(
    st.integers(1, 18).flatmap(
        lambda tag: st.tuples(
            st.just(tag),
            st.lists(
                st.integers(-2, 3)
                | st.binary(max_size=3)
                | st.lists(st.integers(0, 3) | st.binary(max_size=3), max_size=3),
                min_size=1,
                max_size=7,
            ),
        )
    )
)
def test_near_miss_messages_never_raise_anything_but_a_typed_error(tagged) -> None:
    tag, fields = tagged
    with contextlib.suppress(MalformedMessage):
        DECODER.decode([tag, *fields])


def test_the_limits_client_and_node_share_agree() -> None:
    from paxq.broker.machine import Limits
    from paxq.client.wire import protocol

    assert Limits().message_bytes_max == protocol.MESSAGE_BYTES_MAX
    assert Config(nodes=(0,)).command_bytes_max == protocol.COMMAND_BYTES_MAX
    # The largest message with a request's fields fits a command, and a command a frame.
    largest = {"body": b"x" * protocol.MESSAGE_BYTES_MAX}
    request = {"id": 1 << 62, "op": "publish", "topic": "t" * 200, "messages": [largest]}
    assert len(cbor2.dumps(request)) + 1024 < protocol.COMMAND_BYTES_MAX
    assert protocol.COMMAND_BYTES_MAX + 4096 < protocol.FRAME_BYTES_MAX
    # A claim's reply: its messages' bytes and a thousand deliveries' fields fit a frame.
    fields = [1 << 62, 1 << 62, 1 << 30, 1 << 50, [b"", None, None]]  # offset, token, ...
    reply = protocol.REPLY_MESSAGES_BYTES_MAX + protocol.CLAIM_MAX * len(cbor2.dumps(fields))
    assert reply + 4096 < protocol.FRAME_BYTES_MAX
