"""Checkers that sit outside the replicas and hold the canonical history of a run.

Agreement, validity and in-order application are checked at every apply; acknowledgements are
checked against what was chosen when they arrive; durability, linearizability and convergence
at the end of the run.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..paxos import ZERO, Ballot, Value


class Violation(Exception):
    """A broken invariant. `invariant` names it; the message says what was seen."""

    def __init__(self, invariant: str, message: str) -> None:
        super().__init__(invariant, message)  # both args, so it pickles across processes
        self.invariant = invariant
        self.message = message

    def __str__(self) -> str:
        return f"{self.invariant}: {self.message}"


class History:
    def __init__(self) -> None:
        #: every command a client issued (validity)
        self.proposed: set[bytes] = set()
        #: the value first applied at each slot; every later apply must match (agreement)
        self.chosen: list[Value] = []
        #: where each applied command stands in the log: (slot, index in its batch)
        self.position: dict[bytes, tuple[int, int]] = {}
        #: acknowledged commands: command -> (issued at, acknowledged at)
        self.acked: dict[bytes, tuple[float, float]] = {}
        #: the highest ballot each acceptor has voted for (promise or accept), across restarts
        self.promised: dict[int, Ballot] = {}
        #: acceptor -> slot -> the highest ballot it sent Accepted for, across restarts
        self.accepted: dict[int, dict[int, Ballot]] = {}
        #: a candidate's ballot -> the slot its phase 1 starts from
        self.prepared: dict[Ballot, int] = {}

    def on_vote(self, node: int, ballot: Ballot, kind: str) -> None:
        """`node` sends a promise or an acceptance for `ballot` (Paxos P1: an acceptor never
        votes below a ballot it has promised, whatever happened to it in between)."""
        highest = self.promised.get(node, ZERO)
        if ballot < highest:
            raise Violation(
                "promise",
                f"node {node} sent {kind} for ballot {ballot} after promising {highest}",
            )
        if ballot > highest:
            self.promised[node] = ballot

    def on_wipe(self, node: int) -> None:
        """`node` lost its disk. Its next votes are checked against what it says from now on
        (it cannot know what it promised before); what it said Accepted before still binds
        its promises (`on_promise`): a learner votes only past every such slot."""
        self.promised.pop(node, None)

    def on_accepted(self, node: int, ballot: Ballot, slot: int) -> None:
        votes = self.accepted.setdefault(node, {})
        if votes.get(slot, ZERO) < ballot:
            votes[slot] = ballot

    def on_prepare(self, ballot: Ballot, from_slot: int) -> None:
        self.prepared[ballot] = from_slot

    def on_promise(self, node: int, ballot: Ballot, commit: int, entries) -> None:
        """Paxos P2's memory: a promise reports, for every slot at or above where phase 1
        starts (and the acceptor's commit point), the value of the highest ballot the
        acceptor ever said Accepted for, whatever happened to it in between (a crash that
        lost a write it had reported as durable is caught here)."""
        votes = self.accepted.get(node)
        if not votes:
            return
        start = max(self.prepared.get(ballot, 0), commit)
        reported = {slot: b for slot, b, _ in entries}
        for slot, voted in votes.items():
            if slot >= start and reported.get(slot, ZERO) < voted:
                raise Violation(
                    "acceptor memory",
                    f"node {node} promised {ballot} reporting "
                    f"{reported.get(slot, 'nothing')} at slot {slot}, "
                    f"after it sent Accepted for {voted} there",
                )

    def on_propose(self, command: bytes) -> None:
        self.proposed.add(command)

    def on_apply(self, node: int, applied_count: int, slot: int, value: Value) -> None:
        """`node` applies `value` at `slot`, having applied `applied_count` slots before."""
        if slot != applied_count:
            raise Violation("order", f"node {node} applied slot {slot} after {applied_count} slots")
        chosen = self.chosen
        if slot < len(chosen):
            known = chosen[slot]
            if known is not value and known != value:
                raise Violation(
                    "agreement",
                    f"slot {slot}: node {node} applied {_show(value)}, "
                    f"another replica applied {_show(known)}",
                )
            return
        chosen.append(value)
        position = self.position
        proposed = self.proposed
        for index, command in enumerate(value):
            if command not in proposed:
                raise Violation("validity", f"slot {slot} holds {command!r}, never proposed")
            earlier = position.get(command)
            if earlier is not None:
                raise Violation(
                    "validity", f"{command!r} applied at slot {earlier[0]} and again at {slot}"
                )
            position[command] = (slot, index)

    def on_ack(self, command: bytes, slot: int, issued_ms: float, acked_ms: float) -> None:
        where = self.position.get(command)
        if where is None or where[0] != slot:
            raise Violation(
                "durability", f"{command!r} acknowledged at slot {slot}, but chosen at {where}"
            )
        self.acked[command] = (issued_ms, acked_ms)

    def check_durable(self, logs: Sequence[Sequence[Value]]) -> None:
        """Every acknowledged command stands at its slot in every replica's applied log."""
        for command in self.acked:
            slot, index = self.position[command]
            for node, log in enumerate(logs):
                if slot >= len(log) or index >= len(log[slot]) or log[slot][index] != command:
                    raise Violation(
                        "durability",
                        f"acknowledged {command!r} (slot {slot}) is missing on node {node}",
                    )

    def check_linearizable(self) -> None:
        """If A was acknowledged before B was issued, A stands before B in the log."""
        position = self.position
        by_ack = sorted(self.acked.items(), key=lambda item: item[1][1])
        by_issue = sorted(self.acked.items(), key=lambda item: item[1][0])
        latest: tuple[int, int] = (-1, -1)  # furthest position among commands acked so far
        latest_command = b""
        i = 0
        for command, (issued, _) in by_issue:
            while i < len(by_ack) and by_ack[i][1][1] < issued:
                acked_command = by_ack[i][0]
                if position[acked_command] > latest:
                    latest, latest_command = position[acked_command], acked_command
                i += 1
            if position[command] < latest:
                raise Violation(
                    "linearizability",
                    f"{command!r} (issued at {issued:.3f} ms) stands at {position[command]}, "
                    f"before {latest_command!r} at {latest}, acknowledged earlier",
                )


def _show(value: Value) -> str:
    if len(value) <= 4:
        return repr(value)
    return f"({value[0]!r}, ... {len(value)} commands)"
