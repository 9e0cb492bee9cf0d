"""Typed errors of the wire: the codes a peer or a client sees, the root of every error the
client raises (`PaxqError`), and the wire's own exceptions under it."""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Codes carried in error replies. Numbers are part of the wire format: never reuse one."""

    BAD_FRAME = 1  # the frame could not be read (length, encoding)
    TOO_LARGE = 2  # the frame or the command exceeds its bound
    BAD_REQUEST = 3  # well-formed frame, wrong shape or types
    UNKNOWN_OPERATION = 4
    NOT_LEADER = 5  # carries the leader's address when known
    OVERLOADED = 6  # a bound is reached: back off and retry
    NOT_A_MEMBER = 7  # a peer handshake from outside the configuration
    WRONG_CLUSTER = 8
    UNSUPPORTED_VERSION = 9
    UNKNOWN_OUTCOME = 10  # the command may or may not have been applied: do not resend blindly
    UNKNOWN_TOPIC = 11
    TOPIC_EXISTS = 12
    UNKNOWN_SUBSCRIPTION = 13
    SUBSCRIPTION_EXISTS = 14
    LEASE_LOST = 15  # the token is stale: the lease expired or was given to another consumer
    FULL = 16  # a queue at its message or byte limit refuses new messages
    SEQUENCE_TOO_OLD = 17  # an idempotent producer's sequence fell out of the window
    CANCELLED = 18  # a waiting claim or read ended by the client's `cancel`


class PaxqError(Exception):
    """The root of every error paxq raises. `code` is the wire's error code (None for the
    client's own), `message` says what happened naming the limit, value, argument or address
    concerned, `detail` carries the structured part, and `retriable` says whether the same
    call may succeed if made again unchanged (later, or elsewhere)."""

    code: ErrorCode | None = None
    retriable: bool = False

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class WireError(PaxqError):
    """Something on the wire was wrong; `code` says what to answer, if anything."""

    code = ErrorCode.BAD_FRAME


class FrameTooLarge(WireError):
    code = ErrorCode.TOO_LARGE


class MalformedFrame(WireError):
    code = ErrorCode.BAD_FRAME


class MalformedMessage(WireError):
    """A frame that decodes but is not a valid message (wrong shape, type or range)."""

    code = ErrorCode.BAD_REQUEST
