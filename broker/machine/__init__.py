"""The replicated state machine: topics, subscriptions, queues and leased claims.

Pure and deterministic; imports nothing from `paxos` or `node`. See `machine` for the
command format and `docs/machine.md` for the model.
"""

from .claims import claimed
from .commands import command, time_command
from .errors import MachineError
from .machine import (
    HEADER_BYTES,
    QUEUE_SUBSCRIPTION,
    SYSTEM_SESSION,
    Limits,
    QueueMachine,
)
from .snapshots import SnapshotInvalid
from .topics import QUEUE, TOPIC

__all__ = [
    "HEADER_BYTES",
    "QUEUE",
    "QUEUE_SUBSCRIPTION",
    "SYSTEM_SESSION",
    "TOPIC",
    "Limits",
    "MachineError",
    "QueueMachine",
    "SnapshotInvalid",
    "claimed",
    "command",
    "time_command",
]
