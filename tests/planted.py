"""Known protocol bugs, planted from the tests by subclassing the real replica, node core,
transfer or machine.

Production code has no switch for any of these: each subclass overrides one decision.
"""

from __future__ import annotations

from collections.abc import Callable

from paxq.broker.machine import MachineError, QueueMachine
from paxq.broker.machine.topics import piece_key
from paxq.broker.node.core import NodeCore
from paxq.broker.node.transfer import Assembler
from paxq.broker.paxos import ZERO, Accepted, Replica, Role
from paxq.client.wire import ErrorCode
from paxq.storage import KeySpace


class QuorumTooSmall(Replica):
    """Counts one vote fewer than a majority as enough, for promises and for accepts."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.quorum = max(1, self.config.quorum - 1)


class ForgetsPromise(Replica):
    """An acceptor whose promise is not restored after a restart (as if never synced)."""

    def __init__(self, node_id, config, rng, durable=None) -> None:
        super().__init__(node_id, config, rng, durable)
        self.promised = ZERO


class IgnoresPhaseOneValues(Replica):
    """A new leader that drops the accepted values reported in its promises."""

    def _maybe_win(self) -> None:
        self._promises = {
            src: promise._replace(entries=()) for src, promise in self._promises.items()
        }
        super()._maybe_win()


class CountsOwnVoteEarly(Replica):
    """A leader that counts its own vote for a slot as soon as it proposes it, before its
    accept is durable."""

    def _propose_slot(self, slot, value) -> None:
        super()._propose_slot(slot, value)
        inflight = self._inflight.get(slot)
        if inflight is not None:
            self._count_vote(slot, inflight, self.id)


class AcceptedBeforeWrite(Replica):
    """An acceptor that answers Accepted at once, before its write of the accept is durable."""

    def _send(self, to, message) -> None:
        if type(message) is Accepted:
            self._out.messages.append((to, message))
        else:
            super()._send(to, message)


# --------------------------------------------------------------------------- the node core


class SkipsTheSync(NodeCore):
    """Writes promises and accepts without a sync, and takes them for durable once written."""

    def _write(self, records, batch, sync, snapshot=None):
        write = super()._write(records, batch, sync, snapshot)
        if batch is not None:
            write.sync = False
        return write


class EarlyAssembler(Assembler):
    """Hands a received snapshot over once all but its last chunk have arrived."""

    def _complete(self, current):
        if current.count > 1 and len(current.chunks) == current.count - 1:
            self.current = None
            current.chunks = [chunk for chunk in current.chunks if chunk]
            return current
        return super()._complete(current)


class InstallsEarly(NodeCore):
    """Installs a snapshot before its last chunk has arrived."""

    assembler_type = EarlyAssembler


# ----------------------------------------------------------------------------- the machine


class AcceptsStaleTokens(QueueMachine):
    """Checks only that a message is leased, not that the token is the current one: a slow
    worker whose lease expired and went to someone else can still ack it."""

    def _refuse_lost(self, sub, leases) -> None:
        lost = [offset for offset, _ in leases if offset not in sub.leases]
        if lost:
            raise MachineError(ErrorCode.LEASE_LOST, "lost", lost)


class ForgetsSettles(QueueMachine):
    """Remembers the sequences of publishes only: a resent ack, nack or extend is applied
    again (and refused, its lease being gone) instead of answered."""

    def _once(self, topic, arguments, act):
        if "messages" in arguments:
            return super()._once(topic, arguments, act)
        return act()


class CountsReleases(QueueMachine):
    """Hands a released lease back as a nack without delay does: the delivery counts, so
    a consumer's hand-backs push messages no handler saw toward the dead letters."""

    def _release(self, arguments):
        topic, sub, leases = self._leases(arguments, "release", frozenset())

        def release() -> dict:
            self._refuse_lost(sub, leases)
            for offset, _ in leases:
                if not sub.give_back(offset, self.now_ms):
                    self._dead_letter(topic, sub, offset, "nacked")
            self.changed.add(topic.name)
            return {"released": len(leases)}

        return self._once(topic, arguments, release)


class RequeuesRejects(QueueMachine):
    """Hands a rejected message back for another delivery, as a nack does: a message no
    retry can mend is delivered again instead of dead-lettered."""

    def _reject(self, arguments):
        topic, sub, leases = self._leases(arguments, "reject", frozenset({"error"}))

        def reject() -> dict:
            self._refuse_lost(sub, leases)
            for offset, _ in leases:
                if not sub.give_back(offset, self.now_ms):
                    self._dead_letter(topic, sub, offset, "nacked")
            self.changed.add(topic.name)
            return {"rejected": len(leases)}

        return self._once(topic, arguments, reject)


class RejectDropsCopies(QueueMachine):
    """Finishes a rejected message as an ack would: no copy reaches the dead letters."""

    def _reject(self, arguments):
        topic, sub, leases = self._leases(arguments, "reject", frozenset({"error"}))

        def reject() -> dict:
            self._refuse_lost(sub, leases)
            sub.finish([offset for offset, _ in leases], self.now_ms)
            self._work_done(topic, sub, [offset for offset, _ in leases])
            return {"rejected": len(leases)}

        return self._once(topic, arguments, reject)


class IgnoresMessageIds(QueueMachine):
    """Stores every message, its id never looked up: a producer that publishes again after
    a restart stores its messages twice."""

    def _deduplicate(self, topic, ready, ids):
        return ready, {}, {}


class MisreadsAnsweredPayloads(QueueMachine):
    """Reads the next message's payload for an answered claim, where there is one: the
    bodies clients get are wrong while every replica's state (and its results without
    payloads, which followers compute) agree."""

    def stored_payloads(self, topic, offsets):
        if self._answered:
            offsets = [offset + 1 if offset + 1 < topic.next else offset for offset in offsets]
        return super().stored_payloads(topic, offsets)


class MisplacesPieces(QueueMachine):
    """Cuts a full piece of arrays for the key space counting from the first retained offset
    where the arrays start at `base`: once a queue's front has gone but not yet been cut off
    the arrays, the piece holds other messages' times, sizes and keys. Memory stays right;
    only a replica that restores from a snapshot holds the wrong ones."""

    def _store_piece(self, topic, end):
        size = self.limits.array_piece_messages
        start = max(end - size, topic.first)
        low, high = start - topic.first, end - topic.first
        piece = b"".join(
            (
                start.to_bytes(8, "big"),
                topic.times[low:high].tobytes(),
                topic.sizes[low:high].tobytes(),
                topic.keys[low:high].tobytes(),
            )
        )
        self.keys.put(piece_key(topic.id, end // size - 1), piece)


def expiring_on_local_clock(keys: KeySpace, clock: Callable[[], int]) -> QueueMachine:
    """A machine that evaluates expiry against the replica's own clock, not the stamps."""

    class LocalClock(QueueMachine):
        def advance(self, stamp_ms: int) -> None:
            super().advance(clock())

    from paxq.broker.sim.cluster import SIM_LIMITS

    return LocalClock(keys, SIM_LIMITS)


class CampaignsRegardless(Replica):
    """Campaigns on every election timeout, without asking for a pre-vote first: a node cut
    off from a healthy leader raises its round and deposes the leader once healed."""

    def _on_election_timeout(self) -> None:
        if self.role is Role.CANDIDATE:
            self._failed_campaigns += 1
        self._campaign()


class VotesAtOnce(Replica):
    """A replica that lost its data and votes at once, promises and acceptances it made
    before forgotten (no learning first)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.voting = True


class IgnoresClockBound(NodeCore):
    """Measures the peers' clocks but leads whatever its own reads (a node restarted with
    its clock seconds off stamps the log with it)."""

    def _check_clock(self) -> None:
        super()._check_clock()
        self.replica.may_lead = True
