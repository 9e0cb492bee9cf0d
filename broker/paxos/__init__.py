"""Sans-IO Multi-Paxos: ballots, messages, records and the replica state machine.

Nothing in this package reads a clock, opens a socket, touches a disk or imports trio; it
replicates opaque commands (bytes) in batches. See `replica` for the protocol and the contract
with a runtime.
"""

from .ballot import LEARNED, ZERO, Ballot
from .config import Config, ConfigError
from .messages import (
    NOOP,
    Accept,
    Accepted,
    CatchupReply,
    CatchupRequest,
    Census,
    CensusReply,
    Heartbeat,
    HeartbeatAck,
    Message,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    Reject,
    Value,
    value_bytes,
)
from .records import (
    AcceptRecord,
    CommitRecord,
    DurableState,
    PromiseRecord,
    Record,
    VotingRecord,
)
from .replica import ProposeResult, Ready, Replica, Role

__all__ = [
    "LEARNED",
    "NOOP",
    "ZERO",
    "Accept",
    "AcceptRecord",
    "Accepted",
    "Ballot",
    "CatchupReply",
    "CatchupRequest",
    "Census",
    "CensusReply",
    "CommitRecord",
    "Config",
    "ConfigError",
    "DurableState",
    "Heartbeat",
    "HeartbeatAck",
    "Message",
    "PreVote",
    "PreVoteReply",
    "Prepare",
    "Promise",
    "PromiseRecord",
    "ProposeResult",
    "Ready",
    "Record",
    "Reject",
    "Replica",
    "Role",
    "Value",
    "VotingRecord",
    "value_bytes",
]
