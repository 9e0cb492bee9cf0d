"""What the client raises: one tree under `PaxqError` (code, message, detail, retriable).

- `RequestError`: this side did wrong. The request can never succeed as made (a wrong
  argument, a message over the limit, a client the cluster does not speak to); fix the call.
- `ClusterError`: the cluster answered. Its state refuses the request (no such topic, a lease
  gone, a queue full), or it is busy electing or overloaded: those are `retriable`, and the
  client's own retries handle them until the call's deadline.
- `Unavailable`: no answer within the call's deadline (retriable: later, the same call may
  succeed); `Unreachable` when no node has ever answered this client; `ConnectionLost` for a
  connection that broke under a request (seen only from `Connection`).
- `WireError`: the bytes on a connection could not be read (`FrameTooLarge`, `MalformedFrame`).

A call's retry loop asks the error: a retriable one is tried again until the deadline. Of the
others, a few answers to a command sent more than once are what its first send caused (the
topic exists, or is gone already) and become the call's result, and an unknown outcome of a
command under a producer sequence is sent again; everything else is raised at once.
"""

from __future__ import annotations

from .wire import ErrorCode
from .wire.errors import PaxqError

__all__ = ["PaxqError"]


class RequestError(PaxqError):
    """The request is wrong and would be refused again: this side must change it."""


class ClusterError(PaxqError):
    """The cluster answered the request with a refusal or its condition."""


class BadRequest(RequestError):
    code = ErrorCode.BAD_REQUEST


class InvalidArgument(BadRequest, ValueError, TypeError):
    """An argument this client refused before sending anything: a wrong type or a value out
    of range. `argument` names it as the caller wrote it. (Also a ValueError and a TypeError,
    for code that catches those.)"""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"{argument}: {message}", argument)
        self.argument = argument


class BadFrame(RequestError):
    code = ErrorCode.BAD_FRAME


class TooLarge(RequestError):
    """A message, command or frame over its bound; the message names both sizes."""

    code = ErrorCode.TOO_LARGE


class UnknownOperation(RequestError):
    code = ErrorCode.UNKNOWN_OPERATION


class NotAMember(RequestError):
    code = ErrorCode.NOT_A_MEMBER


class WrongCluster(RequestError):
    code = ErrorCode.WRONG_CLUSTER


class UnsupportedVersion(RequestError):
    code = ErrorCode.UNSUPPORTED_VERSION


class NotLeader(ClusterError):
    """Only seen when retries are exhausted: the client follows leader hints itself."""

    code = ErrorCode.NOT_LEADER
    retriable = True


class Overloaded(ClusterError):
    code = ErrorCode.OVERLOADED
    retriable = True


class UnknownOutcome(ClusterError):
    """The command may or may not have been applied, and it is not safe to send again
    (it carries no producer sequence). Check the state before acting on it."""

    code = ErrorCode.UNKNOWN_OUTCOME


class UnknownTopic(ClusterError):
    code = ErrorCode.UNKNOWN_TOPIC


class TopicExists(ClusterError):
    code = ErrorCode.TOPIC_EXISTS


class UnknownSubscription(ClusterError):
    code = ErrorCode.UNKNOWN_SUBSCRIPTION


class SubscriptionExists(ClusterError):
    code = ErrorCode.SUBSCRIPTION_EXISTS


class LeaseLost(ClusterError):
    """The lease expired or went to another consumer: the ack, nack or extend changed
    nothing. `offsets` are the messages concerned."""

    code = ErrorCode.LEASE_LOST

    @property
    def offsets(self) -> list[int]:
        return list(self.detail) if isinstance(self.detail, list) else []


class QueueFull(ClusterError):
    code = ErrorCode.FULL


class SequenceTooOld(ClusterError):
    code = ErrorCode.SEQUENCE_TOO_OLD


class RequestCancelled(ClusterError):
    """The client cancelled the waiting request (the client library's own cancel)."""

    code = ErrorCode.CANCELLED


class Unavailable(PaxqError):
    """No node answered in time (every address tried, with backoff, until the deadline).
    The same call may succeed later."""

    retriable = True


class ConnectionLost(Unavailable):
    """The connection broke (or was closed) before the reply came: a command sent on it may
    or may not have been applied, so it is not retriable as such. `Client` never lets it
    out: it sends again elsewhere only what is safe to (under a producer sequence, or
    harmless), and reports the rest as UnknownOutcome."""

    retriable = False


class Unreachable(Unavailable):
    """No node has answered this client's hello since it was made, within its
    `first_contact_s`: the addresses are wrong, or the cluster is down. `detail` maps each
    address to what happened there (refused, timed out, not a paxq client port, ...).
    Not retriable: the same addresses are expected to fail the same way until someone
    starts the cluster or fixes them."""

    retriable = False

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
