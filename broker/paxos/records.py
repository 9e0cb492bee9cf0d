"""What a replica asks its runtime to persist, and the state it is rebuilt from.

Three records are enough: the acceptor's promise, an accepted (or learned) entry, and the commit
point. The invariant that makes a commit point sufficient: for every slot below it, the entry on
disk is the chosen value (the core only advances it over such entries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .ballot import ZERO, Ballot
from .messages import Value


class PromiseRecord(NamedTuple):
    ballot: Ballot


class AcceptRecord(NamedTuple):
    slot: int
    ballot: Ballot
    value: Value


class CommitRecord(NamedTuple):
    commit: int


class VotingRecord(NamedTuple):
    """A replica that started without its data has caught up and votes from now on."""

    voting: bool


Record = PromiseRecord | AcceptRecord | CommitRecord | VotingRecord


@dataclass(slots=True)
class DurableState:
    """What survives a crash: replaying the persisted records in order rebuilds it."""

    promised: Ballot = ZERO
    log: dict[int, tuple[Ballot, Value]] = field(default_factory=dict)
    commit: int = 0
    #: first slot still in the log; below it a snapshot stands (filled by the snapshot issue)
    log_start: int = 0
    #: False: started without its data (it may have forgotten votes): learn, do not vote
    voting: bool = True

    def apply(self, record: Record) -> None:
        if type(record) is AcceptRecord:
            self.log[record.slot] = (record.ballot, record.value)
        elif type(record) is CommitRecord:
            # Monotone by construction; max() keeps a replayed older record harmless.
            self.commit = max(self.commit, record.commit)
        elif type(record) is PromiseRecord:
            self.promised = max(self.promised, record.ballot)
        elif type(record) is VotingRecord:
            self.voting = record.voting
        else:
            raise TypeError(f"not a paxos record: {record!r}")

    def copy(self) -> DurableState:
        return DurableState(self.promised, dict(self.log), self.commit, self.log_start, self.voting)
