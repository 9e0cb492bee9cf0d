"""The paxq client: `Client` (async, on trio or asyncio), `BlockingClient` (threads and
scripts), `WorkerPool` and `Tasks` (worker processes), and the typed errors."""

from .blocking import BlockingClient, BlockingDelivery
from .client import Client, Retry
from .connection import connect, parse_address
from .errors import (
    BadRequest,
    ClusterError,
    ConnectionLost,
    InvalidArgument,
    LeaseLost,
    NotLeader,
    Overloaded,
    PaxqError,
    QueueFull,
    RequestError,
    SequenceTooOld,
    SubscriptionExists,
    TooLarge,
    TopicExists,
    Unavailable,
    UnknownOutcome,
    UnknownSubscription,
    UnknownTopic,
    Unreachable,
)
from .messages import Delivery, Message, Offset
from .results import ResultTimeout, TaskFailed, TaskRun
from .tasks import Task, Tasks, UnknownTask
from .wire import FrameTooLarge, MalformedFrame, WireError
from .worker import Reject, RetryAfter, WorkerPool

__all__ = [
    "BadRequest",
    "BlockingClient",
    "BlockingDelivery",
    "Client",
    "ClusterError",
    "ConnectionLost",
    "Delivery",
    "FrameTooLarge",
    "InvalidArgument",
    "LeaseLost",
    "MalformedFrame",
    "Message",
    "NotLeader",
    "Offset",
    "Overloaded",
    "PaxqError",
    "QueueFull",
    "Reject",
    "RequestError",
    "ResultTimeout",
    "Retry",
    "RetryAfter",
    "SequenceTooOld",
    "SubscriptionExists",
    "Task",
    "TaskFailed",
    "TaskRun",
    "Tasks",
    "TooLarge",
    "TopicExists",
    "Unavailable",
    "UnknownOutcome",
    "UnknownSubscription",
    "UnknownTask",
    "UnknownTopic",
    "Unreachable",
    "WireError",
    "WorkerPool",
    "connect",
    "parse_address",
]
