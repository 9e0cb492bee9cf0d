"""The client protocol's vocabulary: the hello, the operations, and the bounds both sides
share. `docs/protocol.md` describes the whole exchange; this is its executable part."""

from __future__ import annotations

#: the version in the hello; a node that speaks another answers UNSUPPORTED_VERSION
PROTOCOL_VERSION = 2
HELLO = {"paxq": "client", "v": PROTOCOL_VERSION}

#: operations that go through the log (the leader's; a follower answers NOT_LEADER)
COMMANDS = frozenset(
    {
        "create",
        "delete",
        "publish",
        "subscribe",
        "unsubscribe",
        "claim",
        "ack",
        "nack",
        "release",
        "reject",
        "extend",
        "purge",
    }
)
#: operations any node answers from its applied state (a follower's may lag the leader's)
QUERIES = frozenset({"status", "list", "describe", "read"})
#: `cancel` ({"request": id}) ends a claim or read of the same connection that is waiting;
#: `ping` is answered at once (a client checks that a quiet node is still there)
PING = "ping"
CONTROL = frozenset({"cancel", PING})
#: commands that may carry `producer` and `seq`, so that a retry is answered, not re-applied
IDEMPOTENT = frozenset({"publish", "ack", "nack", "release", "reject", "extend"})
#: the longest a claim or read may wait for a message (`wait_ms`)
WAIT_MS_MAX = 60_000
#: a producer's sequences on one topic that the machine remembers: a client keeps at most
#: this many of one (producer, topic) unanswered, so every retry finds its result
PRODUCER_WINDOW = 32
#: the most messages in one publish, and leases in one ack, nack or extend
PUBLISH_MESSAGES_MAX = 1000
LEASES_MAX = 1000
#: topics in one `list` answer at most: a client asks for the rest `after` the last name
#: (10,000 topics of 200-character names would not fit one frame)
LIST_TOPICS_MAX = 1000
#: the most messages one claim takes (the machine's claim_max)
CLAIM_MAX = 1000
#: a message's bytes (`message_bytes`: body, key and encoded headers), at most
MESSAGE_BYTES_MAX = 1 << 20
#: a command the log takes, at most: one message of the largest with its request's fields
#: (a command over the node's batch_bytes_max goes alone in its slot)
COMMAND_BYTES_MAX = MESSAGE_BYTES_MAX + (64 << 10)
#: the stored bytes of the messages one claim or read returns (past the first), at most
REPLY_MESSAGES_BYTES_MAX = 1 << 20
#: one frame on the client port, either way: a request of the largest command, a reply of
#: the largest claim with its per-delivery fields
FRAME_BYTES_MAX = 2 << 20
#: a message's key in bytes, its headers, and its delay, at most (the machine's limits)
KEY_BYTES_MAX = 1024
HEADERS_MAX = 64
DELAY_MS_MAX = 30 * 24 * 3600 * 1000
#: a message's `id` (its deduplication id, as JetStream's Nats-Msg-Id), in characters
MESSAGE_ID_CHARS_MAX = 128
#: a nack's `error` (what the handler raised, kept in a dead letter's x-death-error), at most
NACK_ERROR_CHARS_MAX = 512
#: the longest lease a claim or extend may ask for
LEASE_MS_MAX = 12 * 3600 * 1000


def message_bytes(body: bytes, key: bytes | None, headers: bytes | None) -> int:
    """A message's size as its limit counts it: body, key and the headers' CBOR encoding."""
    return len(body) + (0 if key is None else len(key)) + (0 if headers is None else len(headers))
