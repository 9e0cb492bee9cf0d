"""Between the paxos core and the journal: records in, one batch out; journal state in,
durable state out. The simulator and the node both persist through here."""

from __future__ import annotations

from collections.abc import Iterable

from paxq.storage import Batch, JournalState

from .paxos import (
    AcceptRecord,
    Ballot,
    CommitRecord,
    DurableState,
    PromiseRecord,
    Record,
    VotingRecord,
)


def batch_of(records: Iterable[Record]) -> Batch:
    """The records of one turn as one group commit."""
    batch = Batch()
    entries = batch.entries
    for record in records:
        kind = type(record)
        # A Ballot is already a (round, node) tuple: stored as it is, no conversion.
        if kind is AcceptRecord:
            entries[record.slot] = (record.ballot, record.value)
        elif kind is CommitRecord:
            batch.commit = record.commit
        elif kind is PromiseRecord:
            batch.promised = record.ballot
        elif kind is VotingRecord:
            batch.voting = record.voting
        else:
            raise TypeError(f"not a paxos record: {record!r}")
    return batch


def durable_state(state: JournalState) -> DurableState:
    """What a replica restarts from.

    A stored snapshot covers slots that were chosen, so the commit point is at least its end
    (a node that stored a peer's snapshot may have stopped before it recorded the new commit).
    """
    return DurableState(
        promised=Ballot(*state.promised),
        log={slot: (Ballot(*ballot), value) for slot, (ballot, value) in state.entries.items()},
        commit=max(state.commit, state.snapshot_slot),
        log_start=state.log_start,
        voting=state.voting,
    )
