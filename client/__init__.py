"""The paxq client: `Client` (async, on trio or asyncio), `BlockingClient` (threads and
scripts), `WorkerPool` and `Tasks` (worker processes), and the typed errors."""

from .blocking import BlockingClient, BlockingDelivery
from .client import Client, Retry
from .connection import ConnectionLost, connect, parse_address
from .errors import (
    BadRequest,
    InvalidArgument,
    LeaseLost,
    NotLeader,
    Overloaded,
    PaxqError,
    QueueFull,
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
from .messages import Delivery, Message
from .tasks import Task, Tasks, UnknownTask
from .worker import WorkerPool

__all__ = [
    "BadRequest",
    "BlockingClient",
    "BlockingDelivery",
    "Client",
    "ConnectionLost",
    "Delivery",
    "InvalidArgument",
    "LeaseLost",
    "Message",
    "NotLeader",
    "Overloaded",
    "PaxqError",
    "QueueFull",
    "Retry",
    "SequenceTooOld",
    "SubscriptionExists",
    "Task",
    "Tasks",
    "TooLarge",
    "TopicExists",
    "Unavailable",
    "UnknownOutcome",
    "UnknownSubscription",
    "UnknownTask",
    "UnknownTopic",
    "Unreachable",
    "WorkerPool",
    "connect",
    "parse_address",
]
