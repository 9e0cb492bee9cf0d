"""What the client raises: one exception class per error code of the wire, under `PaxqError`,
and the client's own failures (no node reachable, outcome unknown)."""

from __future__ import annotations

from .wire import ErrorCode


class PaxqError(Exception):
    """An error a node answered, or the client's own. `code` is the wire's error code."""

    code: ErrorCode | None = None

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class BadRequest(PaxqError):
    code = ErrorCode.BAD_REQUEST


class InvalidArgument(BadRequest, ValueError, TypeError):
    """An argument this client refused before sending anything: a wrong type or a value out
    of range. `argument` names it as the caller wrote it. (Also a ValueError and a TypeError,
    for code that catches those.)"""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"{argument}: {message}", argument)
        self.argument = argument


class BadFrame(PaxqError):
    code = ErrorCode.BAD_FRAME


class TooLarge(PaxqError):
    code = ErrorCode.TOO_LARGE


class UnknownOperation(PaxqError):
    code = ErrorCode.UNKNOWN_OPERATION


class NotLeader(PaxqError):
    """Only seen when retries are exhausted: the client follows leader hints itself."""

    code = ErrorCode.NOT_LEADER


class Overloaded(PaxqError):
    code = ErrorCode.OVERLOADED


class NotAMember(PaxqError):
    code = ErrorCode.NOT_A_MEMBER


class WrongCluster(PaxqError):
    code = ErrorCode.WRONG_CLUSTER


class UnsupportedVersion(PaxqError):
    code = ErrorCode.UNSUPPORTED_VERSION


class UnknownOutcome(PaxqError):
    """The command may or may not have been applied, and it is not safe to send again
    (it carries no producer sequence). Check the state before acting on it."""

    code = ErrorCode.UNKNOWN_OUTCOME


class UnknownTopic(PaxqError):
    code = ErrorCode.UNKNOWN_TOPIC


class TopicExists(PaxqError):
    code = ErrorCode.TOPIC_EXISTS


class UnknownSubscription(PaxqError):
    code = ErrorCode.UNKNOWN_SUBSCRIPTION


class SubscriptionExists(PaxqError):
    code = ErrorCode.SUBSCRIPTION_EXISTS


class LeaseLost(PaxqError):
    """The lease expired or went to another consumer: the ack, nack or extend changed
    nothing. `offsets` are the messages concerned."""

    code = ErrorCode.LEASE_LOST

    @property
    def offsets(self) -> list[int]:
        return list(self.detail) if isinstance(self.detail, list) else []


class QueueFull(PaxqError):
    code = ErrorCode.FULL


class SequenceTooOld(PaxqError):
    code = ErrorCode.SEQUENCE_TOO_OLD


class RequestCancelled(PaxqError):
    """The client cancelled the waiting request (the client library's own cancel)."""

    code = ErrorCode.CANCELLED


class Unavailable(PaxqError):
    """No node answered in time (every address tried, with backoff, until the deadline)."""


class Unreachable(Unavailable):
    """No node has answered this client's hello since it was made, within its
    `first_contact_s`: the addresses are wrong, or the cluster is down. `detail` maps each
    address to what happened there (refused, timed out, not a paxq client port, ...)."""

    @property
    def failures(self) -> dict[str, str]:
        return dict(self.detail) if isinstance(self.detail, dict) else {}


_BY_CODE: dict[int, type[PaxqError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        BadFrame,
        TooLarge,
        UnknownOperation,
        NotLeader,
        Overloaded,
        NotAMember,
        WrongCluster,
        UnsupportedVersion,
        UnknownOutcome,
        UnknownTopic,
        TopicExists,
        UnknownSubscription,
        SubscriptionExists,
        LeaseLost,
        QueueFull,
        SequenceTooOld,
        RequestCancelled,
    )
}


def error_from_reply(reply: dict) -> PaxqError:
    """The exception for an error reply ({"ok": false, "error": code, "message": ...})."""
    code = reply.get("error")
    cls = _BY_CODE.get(code, PaxqError) if type(code) is int else PaxqError
    message = reply.get("message")
    error = cls(message if type(message) is str else f"error {code!r}", reply.get("detail"))
    if cls is PaxqError and type(code) is int:
        error.code = code  # a code newer than this client: still reported
    return error
