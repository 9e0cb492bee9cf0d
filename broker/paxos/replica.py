"""One Multi-Paxos replica (acceptor, learner and, when elected, leader) as a sans-IO machine.

Inputs: `step(message)`, `tick()`, `propose(command)`, and `persisted(records)` once records
it handed out are durable. Outputs accumulate and are taken with `ready()`. The runtime's
contract: write `Ready.persist`; send `Ready.messages` at once (they depend on no write);
send `Ready.after_persist` only once every record handed out so far is durable (they report
a promise or an acceptance); hand `Ready.committed` to the application in order, at once (a
slot is committed only once a quorum holds it durably). Nothing here reads a clock, touches a
socket or a disk, or draws randomness other than from the `rng` it is given.

Protocol notes (the why behind the code):
- A leader runs phase 1 once for every slot from its commit point on (`Prepare.from_slot`), then
  phase 2 per slot. Promises report entries only at or above max(from_slot, acceptor's commit), so
  they stay small; slots below the highest reported commit are chosen already and are fetched by
  catch-up, never proposed again.
- The commit point travels on accepts and heartbeats. A follower marks slot s chosen only if its
  own entry at s was accepted in the leader's current ballot (a leader proposes one value per slot
  per ballot) or was learned chosen; otherwise it asks for the chosen value (catch-up).
- Promise changes are persisted as their own record; an accepted entry and the commit point too.
- A stable leader (etcd's PreVote): a follower whose election timer runs out first asks its
  peers whether they would promise (`PreVote`); only with a majority of grants does it raise
  its round and campaign. A peer grants only if it has heard no leader for a whole base
  timeout, so a node cut off from a healthy leader (isolated, or on the far side of a bridge)
  never raises its round and deposes nobody when it is healed. It changes who campaigns and
  when, never what a promise or a vote means, so safety is untouched.
- A replica that lost its data (it started with an empty disk, not told to bootstrap a new
  cluster) may have forgotten promises and acceptances it made; voting now could let a second
  value be chosen. It learns instead (Paxos Made Live, section 5.1): it stores what leaders
  propose and learns what is chosen, but sends no Promise, Accepted, Reject or pre-vote grant
  and never campaigns, until every slot its former self can have accepted is chosen. It
  bounds them by a census, taken once every campaign that could hold a promise of its former
  self has ended (phase 1 lasts a base timeout at most): promises from `n - quorum + 1`
  voting peers, and the next slot of a leader at or above all of them, plus a window; it
  raises its promise to that leader's ballot (docs/paxos.md has the proof). A leader
  that hears a learner (`HeartbeatAck.voting`) proposes no-ops while it has nothing else to
  propose, so an idle cluster lets it finish.
- Only what depends on a record waits for it (etcd's `msgsAfterAppend`): a leader's Accepts leave
  while its own accept is written, and its own vote counts only once `persisted` says that
  write is durable; a candidate's own promise likewise. Promise, Accepted and Prepare go in
  `after_persist`. A commit record can be re-learnt from peers and needs no sync of its own.
"""

from __future__ import annotations

import enum
from collections import deque
from random import Random

from .ballot import LEARNED, ZERO, Ballot
from .config import Config
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


class Role(enum.IntEnum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2


class ProposeResult(enum.IntEnum):
    """What became of a command handed to `propose`."""

    QUEUED = 0  # it will be put in a slot by this leader (or reported in Ready.dropped)
    NOT_LEADER = 1  # try `leader_hint`
    OVERLOADED = 2  # the leader's queue is at its bound; back off
    TOO_LARGE = 3  # larger than command_bytes_max


class Ready:
    """Output of one turn. Persist, then send, then apply, in that order."""

    __slots__ = (
        "after_persist",
        "committed",
        "dropped",
        "messages",
        "persist",
        "proposed",
        "snapshot_requests",
    )

    def __init__(self) -> None:
        self.persist: list[Record] = []
        #: may leave at once
        self.messages: list[tuple[int, Message]] = []
        #: votes (Promise, Accepted, a candidate's Prepare): may leave only once every record
        #: handed out so far is durable
        self.after_persist: list[tuple[int, Message]] = []
        #: (slot, value) to apply, strictly in slot order, continuing where the last one ended
        self.committed: list[tuple[int, Value]] = []
        #: tokens of commands accepted by `propose` that will never get a slot here
        #: (leadership lost before they were batched); never proposed, so safe to resend
        self.dropped: list[object] = []
        #: (slot, value, tokens): batches cut from the queue, the token of each command
        self.proposed: list[tuple[int, Value, tuple[object, ...]]] = []
        #: (peer, first slot asked for) of requests for slots this replica has compacted
        #: away: send them a snapshot
        self.snapshot_requests: list[tuple[int, int]] = []

    def __bool__(self) -> bool:
        return bool(
            self.persist
            or self.messages
            or self.after_persist
            or self.committed
            or self.proposed
            or self.dropped
            or self.snapshot_requests
        )

    def __repr__(self) -> str:
        return (
            f"Ready(persist={self.persist!r}, messages={self.messages!r}, "
            f"after_persist={self.after_persist!r}, "
            f"committed={self.committed!r}, dropped={self.dropped!r}, "
            f"snapshot_requests={self.snapshot_requests!r})"
        )


class _InFlight:
    """A slot this leader proposed and has not yet seen chosen."""

    __slots__ = ("acks", "bytes", "sent_tick", "value")

    def __init__(self, value: Value, acks: set[int], sent_tick: int) -> None:
        self.value = value
        self.acks = acks
        self.sent_tick = sent_tick
        self.bytes = sum(map(len, value))


class Replica:
    """See the module docstring. Public attributes are read-only views for runtimes and tests."""

    def __init__(
        self,
        node_id: int,
        config: Config,
        rng: Random,
        durable: DurableState | None = None,
    ) -> None:
        if node_id not in config.nodes:
            raise ValueError(f"node {node_id} is not a member of {config.nodes}")
        self.id = node_id
        self.config = config
        self.peers = tuple(n for n in config.nodes if n != node_id)
        self.quorum = config.quorum
        self._rng = rng

        state = durable if durable is not None else DurableState()
        # Acceptor and learner state, rebuilt from what was persisted.
        self.promised: Ballot = state.promised
        self.log: dict[int, tuple[Ballot, Value]] = dict(state.log)
        self.commit: int = state.commit
        self.log_start: int = state.log_start
        #: next slot to hand to the application; after a restart the log is applied again
        self.applied: int = state.log_start
        #: False while it learns after losing its data (see the module docstring)
        self.voting: bool = state.voting
        self._witness: int | None = None  # the slot whose choice lets it vote
        # Its census (see `_set_witness`): the highest promise each voting peer reported,
        # and the best leader heard of as (ballot, next slot).
        self._census_nonce = rng.getrandbits(62) if not self.voting else 0
        self._census: dict[int, Ballot] = {}
        self._census_leader: tuple[Ballot, int] | None = None
        #: False: the runtime forbids leading (its clock is off): no campaign, and a leader
        #: steps down at its next tick; it still votes
        self.may_lead = True

        self.role = Role.FOLLOWER
        self.ballot: Ballot = ZERO  # the ballot this replica campaigns or leads with
        self.leader_hint: int | None = None
        self._round_seen = self.promised.round
        self._tick = 0
        self._election_elapsed = 0
        self._failed_campaigns = 0
        self._election_timeout = self._draw_election_timeout()

        # Pre-vote state: the ballot asked about, and who granted it.
        self._probe: Ballot | None = None
        self._grants: set[int] = set()
        # Candidate state.
        self._promises: dict[int, Promise] = {}
        self._campaign_tick = 0
        # Leader state.
        self.next_slot = self.commit
        self._lead_from = self.commit  # first slot this leader proposes; below it, catch-up
        self._inflight: dict[int, _InFlight] = {}
        #: chosen slots above the commit point, with their payload bytes (still in the window)
        self._chosen_ahead: dict[int, int] = {}
        self._pending: deque[bytes] = deque()
        self._tokens: deque[object] = deque()  # one per pending command
        self._pending_bytes = 0
        self._heartbeat_elapsed = 0
        self._heard: dict[int, int] = {}  # peer -> tick we last heard it follow our ballot
        #: learners that acknowledged the last heartbeat near the commit point: while there
        #: are any and nothing is in flight, each heartbeat proposes a no-op for them
        self._learners: set[int] = set()
        self._quorum_check_elapsed = 0
        # Catch-up state (any role).
        self._known_commit = self.commit
        self._catchup_source: int | None = None  # the best peer we know to be ahead
        self._catchup_target: int | None = None  # the peer the outstanding request went to
        self._catchup_from = 0  # and the first slot it asked for
        self._catchup_sent_tick: int | None = None
        self._catchup_misses = 0  # requests in a row that went unanswered
        self._commit_moved_tick = 0  # when the commit point last advanced

        self._out = Ready()
        self._handlers = {
            PreVote: self._on_pre_vote,
            PreVoteReply: self._on_pre_vote_reply,
            Prepare: self._on_prepare,
            Promise: self._on_promise,
            Accept: self._on_accept,
            Accepted: self._on_accepted,
            Reject: self._on_reject,
            Heartbeat: self._on_heartbeat,
            HeartbeatAck: self._on_heartbeat_ack,
            CatchupRequest: self._on_catchup_request,
            CatchupReply: self._on_catchup_reply,
            Census: self._on_census,
            CensusReply: self._on_census_reply,
        }
        self._emit_committed()

    # ----------------------------------------------------------------------------- inputs

    def step(self, message: Message) -> None:
        """Handle one message from a peer. Messages from non-members are ignored."""
        handler = self._handlers.get(type(message))
        if handler is None:
            raise TypeError(f"not a paxos message: {type(message).__name__}")
        if message.src not in self.config.nodes or message.src == self.id:
            return
        handler(message)

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._tick += 1
        if not self.voting:
            self._learner_tick()
        if self.role is Role.LEADER:
            self._leader_tick()
        else:
            self._election_elapsed += 1
            if self._election_elapsed >= self._election_timeout or (
                self.role is Role.CANDIDATE
                and self._tick - self._campaign_tick >= self.config.election_ticks_base
            ):
                self._on_election_timeout()
        if (
            self._catchup_sent_tick is not None
            and self._tick - self._catchup_sent_tick >= self.config.catchup_retry_ticks
        ):
            # Unanswered: the source may be gone, so retries alternate between it and the
            # other peers in turn.
            self._catchup_sent_tick = None
            self._catchup_misses += 1
            self._request_catchup()

    def propose(self, command: bytes, token: object = None) -> ProposeResult:
        """Queue a command for the next batch. Only a leader takes commands. `token` (the
        command itself if None) names it in `Ready.proposed` and `Ready.dropped`."""
        if self.role is not Role.LEADER:
            return ProposeResult.NOT_LEADER
        size = len(command)
        if size > self.config.command_bytes_max:
            return ProposeResult.TOO_LARGE
        if (
            len(self._pending) >= self.config.pending_count_max
            or self._pending_bytes + size > self.config.pending_bytes_max
        ):
            return ProposeResult.OVERLOADED
        self._pending.append(command)
        self._tokens.append(command if token is None else token)
        self._pending_bytes += size
        return ProposeResult.QUEUED

    def campaign(self) -> None:
        """Start phase 1 now, without a pre-vote (a test or an operator forces an election).
        A learner does not campaign."""
        if self.voting and self.may_lead:
            self._campaign()

    def ready(self) -> Ready | None:
        """Cut batches into free pipeline slots, then hand over this turn's output (or None)."""
        if self.role is Role.LEADER and self._pending:
            self._fill_pipeline()
        if not self._out:
            return None
        out, self._out = self._out, Ready()
        return out

    def persisted(self, records: list[Record]) -> None:
        """`records` (handed out by `ready`) are durable: a leader's own acceptances and a
        candidate's own promise count from now on."""
        for record in records:
            kind = type(record)
            if kind is AcceptRecord:
                if self.role is Role.LEADER and record.ballot == self.ballot:
                    inflight = self._inflight.get(record.slot)
                    if inflight is not None and inflight.value is record.value:
                        self._count_vote(record.slot, inflight, self.id)
            elif (
                kind is PromiseRecord
                and self.role is Role.CANDIDATE
                and record.ballot == self.ballot
            ):
                self._promises[self.id] = self._promise_for(self.ballot, self.commit)
                self._maybe_win()

    # ----------------------------------------------------------------- snapshot seam

    def compact(self, through_slot: int) -> None:
        """Drop log entries below `through_slot`; the application holds a snapshot of them."""
        if through_slot > self.applied:
            raise ValueError(f"cannot compact past applied slot {self.applied}")
        for slot in range(self.log_start, through_slot):
            self.log.pop(slot, None)
        self.log_start = max(self.log_start, through_slot)

    def install_snapshot(self, through_slot: int) -> None:
        """The application installed a snapshot covering every slot below `through_slot`."""
        if through_slot <= self.commit:
            return
        if self.role is Role.LEADER and through_slot > self._lead_from:
            # The snapshot covers slots we lead without saying what was chosen there: as with
            # an outvoting catch-up reply, stop leading before adopting it.
            self._step_down()
        for slot in [s for s in self.log if s < through_slot]:
            del self.log[slot]
        for slot in [s for s in self._inflight if s < through_slot]:
            del self._inflight[slot]
        self._chosen_ahead = {s: n for s, n in self._chosen_ahead.items() if s >= through_slot}
        self.log_start = self.commit = self.applied = through_slot
        self._known_commit = max(self._known_commit, through_slot)
        self.next_slot = max(self.next_slot, through_slot)
        self._out.persist.append(CommitRecord(through_slot))
        # A leader may already know slots past the snapshot to be chosen: without this its
        # commit point would wait for acceptances that have all arrived (sim seed 1045).
        self._advance_commit()

    # ------------------------------------------------------------------------ election

    @property
    def in_flight_slots(self) -> int:
        """Slots this leader has proposed and not yet seen chosen (the pipeline's depth)."""
        return len(self._inflight) if self.role is Role.LEADER else 0

    @property
    def known_commit(self) -> int:
        """The highest commit point this replica has heard of (it may not hold it yet)."""
        return max(self._known_commit, self.commit)

    def _draw_election_timeout(self) -> int:
        base = self.config.election_ticks_base
        spread = base << min(self._failed_campaigns, self.config.backoff_exponent_max)
        return base + self._rng.randrange(spread)

    def _reset_election_timer(self) -> None:
        self._election_elapsed = 0
        self._election_timeout = self._draw_election_timeout()

    def _on_election_timeout(self) -> None:
        """No leader heard for a whole timeout: ask whether a campaign could win."""
        self.leader_hint = None  # not heard for a whole timeout: no longer taken for leader
        if not self.voting or not self.may_lead:
            self._reset_election_timer()
            return
        if self.role is Role.CANDIDATE or self._probe is not None:
            self._failed_campaigns += 1  # phase 1 or the pre-vote found no quorum in time
        if self.role is Role.CANDIDATE:
            self._step_down()
        self._probe = Ballot(max(self._round_seen, self.promised.round) + 1, self.id)
        self._grants = {self.id}
        self._reset_election_timer()
        if len(self._grants) >= self.quorum:
            self._campaign()
            return
        message = PreVote(self.id, self._probe)
        send = self._out.messages.append
        for peer in self.peers:
            send((peer, message))

    def _hears_leader(self) -> bool:
        """Has a leader been heard within a whole base timeout (or is this one)?"""
        if self.role is Role.LEADER:
            return True
        return (
            self.leader_hint is not None
            and self._election_elapsed < self.config.election_ticks_base
        )

    def _campaign(self) -> None:
        if self.role is Role.LEADER:
            self._step_down()
        self._probe = None
        self.role = Role.CANDIDATE
        self.leader_hint = None
        self._round_seen = max(self._round_seen, self.promised.round) + 1
        self.ballot = Ballot(self._round_seen, self.id)
        self._promises = {}
        self._reset_election_timer()
        # Phase 1 lasts one base timeout at most: a promise it collects is that recent, which
        # a replica that lost its data relies on (it may have made one and forgotten it).
        self._campaign_tick = self._tick
        # The own promise counts once its record is durable (`persisted`); the Prepare leaves
        # after it, so no peer's promise can arrive first.
        self._raise_promise(self.ballot)
        for peer in self.peers:
            self._send(peer, Prepare(self.id, self.ballot, self.commit))

    def _promise_for(self, ballot: Ballot, from_slot: int) -> Promise:
        start = max(from_slot, self.commit)
        entries = tuple((slot, b, v) for slot, (b, v) in self.log.items() if slot >= start)
        return Promise(self.id, ballot, self.commit, entries)

    def _maybe_win(self) -> None:
        if len(self._promises) < self.quorum:
            return
        promises = self._promises.values()
        top = max(promises, key=lambda p: p.commit)
        floor = top.commit
        # For each slot at or above the highest reported commit, the value accepted in the
        # highest ballot must be proposed again; slots nobody reports get a no-op.
        adopted: dict[int, tuple[Ballot, Value]] = {}
        for promise in promises:
            for slot, ballot, value in promise.entries:
                if slot >= floor:
                    current = adopted.get(slot)
                    if current is None or ballot > current[0]:
                        adopted[slot] = (ballot, value)
        self.role = Role.LEADER
        self.leader_hint = self.id
        self._failed_campaigns = 0
        self._promises = {}
        self._inflight = {}
        self._chosen_ahead = {}
        self._heard = {}
        self._heartbeat_elapsed = 0
        self._quorum_check_elapsed = 0
        self.next_slot = self._lead_from = max(floor, self.commit)
        self._commit_moved_tick = self._tick
        end = max(adopted, default=self.next_slot - 1) + 1
        for slot in range(self.next_slot, end):
            entry = adopted.get(slot)
            self._propose_slot(slot, entry[1] if entry is not None else NOOP)
        self.next_slot = max(self.next_slot, end)
        if floor > self.commit:
            # Ask the peer that set the floor first: it is known to have every slot below it.
            self._known_commit = max(self._known_commit, floor)
            self._catchup_source = top.src
            self._catchup_misses = 0
            self._request_catchup()
        self._broadcast_heartbeat()

    def _step_down(self) -> None:
        """Leave candidacy or leadership; queued commands go back to their senders."""
        if self.role is Role.LEADER:
            self._out.dropped.extend(self._tokens)
            self._pending.clear()
            self._tokens.clear()
            self._pending_bytes = 0
            self._inflight = {}
            self._chosen_ahead = {}
        self._promises = {}
        self.role = Role.FOLLOWER
        self.leader_hint = None
        self._reset_election_timer()

    def _raise_promise(self, ballot: Ballot) -> None:
        if ballot > self.promised:
            self.promised = ballot
            self._out.persist.append(PromiseRecord(ballot))
        if ballot.round > self._round_seen:
            self._round_seen = ballot.round

    def _admit_leader(self, m: Accept | Heartbeat) -> bool:
        """Refuse a leader below our promise (telling it why); follow one at or above it."""
        if m.ballot < self.promised:
            if self.voting:
                self._send(m.src, Reject(self.id, m.ballot, self.promised))
            return False
        self._follow(m.ballot)
        return True

    def _follow(self, ballot: Ballot) -> None:
        """A leader at `ballot` (>= our promise) is active: follow it."""
        if self.role is not Role.FOLLOWER and ballot != self.ballot:
            self._step_down()
        self._probe = None
        self.leader_hint = ballot.node
        self._election_elapsed = 0
        if self._failed_campaigns:  # the backoff ends once a leader is heard
            self._failed_campaigns = 0
            self._election_timeout = self._draw_election_timeout()

    # ------------------------------------------------------------------------ handlers

    def _on_pre_vote(self, m: PreVote) -> None:
        granted = self.voting and not self._hears_leader()
        self._send(m.src, PreVoteReply(self.id, m.ballot, granted, self.promised))

    def _on_pre_vote_reply(self, m: PreVoteReply) -> None:
        if m.promised.round > self._round_seen:
            self._round_seen = m.promised.round
        if m.ballot != self._probe or not m.granted or self.role is Role.LEADER:
            return
        self._grants.add(m.src)
        if len(self._grants) >= self.quorum:
            self._campaign()

    def _on_prepare(self, m: Prepare) -> None:
        if not self.voting:
            return  # it may have promised more than it remembers: no answer at all
        if m.ballot < self.promised:
            self._send(m.src, Reject(self.id, m.ballot, self.promised))
            return
        if m.ballot > self.promised and self.role is not Role.FOLLOWER:
            self._step_down()
        self._raise_promise(m.ballot)
        self.leader_hint = None
        self._probe = None  # another campaign is under way
        self._reset_election_timer()  # give the candidate time to finish
        self._send(m.src, self._promise_for(m.ballot, m.from_slot))

    def _on_promise(self, m: Promise) -> None:
        if self.role is Role.CANDIDATE and m.ballot == self.ballot:
            self._promises[m.src] = m
            self._maybe_win()

    def _on_accept(self, m: Accept) -> None:
        if not self._admit_leader(m):
            return
        # A learner raises its promise too: once it votes it refuses the ballots below, as
        # it may have promised them before it lost its data.
        self._raise_promise(m.ballot)
        slot = m.slot
        if slot >= self.log_start:
            current = self.log.get(slot)
            # Below the commit point the entry is the chosen value: keep it. A LEARNED entry is
            # above every ballot, so it is never overwritten either.
            if slot >= self.commit and (current is None or current[0] < m.ballot):
                current = (m.ballot, m.value)
                self.log[slot] = current
                self._out.persist.append(AcceptRecord(slot, m.ballot, m.value))
            # Acknowledge only a value we hold: a stale leader must not count a vote for a
            # different value at a slot we know is chosen. A learner keeps what the leader
            # proposes (later commit points tell it what is chosen) and votes for none of it.
            if (
                self.voting
                and current is not None
                and (current[1] is m.value or current[1] == m.value)
            ):
                self._send(m.src, Accepted(self.id, m.ballot, slot))
        self._learn_commit(m.ballot, m.commit, m.src)

    def _on_accepted(self, m: Accepted) -> None:
        if self.role is not Role.LEADER or m.ballot != self.ballot:
            return
        self._heard[m.src] = self._tick
        inflight = self._inflight.get(m.slot)
        if inflight is not None:
            self._count_vote(m.slot, inflight, m.src)

    # ------------------------------------------------------------------------ learning

    @property
    def witness(self) -> int | None:
        """While it learns: the slot past which every slot must be chosen before it votes
        (None until its census settles it)."""
        return self._witness

    def _learner_tick(self) -> None:
        if self._witness is None:
            # Asked once two base timeouts have passed: every campaign that could count a
            # promise its former self made has by then ended, won or lost (phase 1 lasts a
            # base timeout), and a won one shows in the replies.
            since = self._tick - 2 * self.config.election_ticks_base
            if since >= 0 and since % self.config.resend_ticks == 0:
                census = Census(self.id, self._census_nonce)
                for peer in self.peers:
                    self._send(peer, census)
            self._set_witness()
        elif self.commit > self._witness:
            self.voting = True
            self._census = {}
            self._out.persist.append(VotingRecord(True))

    def _on_census(self, m: Census) -> None:
        leads = self.role is Role.LEADER and self.ballot == self.promised
        next_slot = self.next_slot if leads else -1
        self._send(m.src, CensusReply(self.id, m.nonce, self.promised, self.voting, next_slot))

    def _on_census_reply(self, m: CensusReply) -> None:
        if self.voting or m.nonce != self._census_nonce or not m.voting:
            return
        if m.promised > self._census.get(m.src, ZERO):
            self._census[m.src] = m.promised
        if m.next_slot >= 0:
            best = self._census_leader
            if best is None or (m.promised, m.next_slot) > best:
                self._census_leader = (m.promised, m.next_slot)
        self._set_witness()

    def _set_witness(self) -> None:
        """Pick the slot past every slot its former self can have accepted.

        Replies from n - quorum + 1 voting peers, all sent after this start: every ballot the
        former self accepted had a phase-1 quorum, which meets them, so some reply reports a
        promise at least that high. A leader whose ballot is at or above all of them proposed
        every slot chosen before the wipe below its `next_slot` (its own, or re-proposed from
        its phase 1), so every leader then had its commit point below that, and proposed
        below it plus a window. No commit point heard in a message plays a part: a delayed
        message can carry one long gone by. The census is taken two base timeouts after the
        start, when every campaign that held a promise of its former self has ended, and a
        won one is at or below that leader's ballot, to which it raises its promise.
        """
        cfg = self.config
        leader = self._census_leader
        if (
            self._witness is None
            and leader is not None
            and len(self._census) >= len(cfg.nodes) - self.quorum + 1
            and leader[0] >= max(self._census.values())
        ):
            self._witness = leader[1] + cfg.window_slots_max
            # Refuse, from now on, every ballot below all those its census found: its former
            # self may have promised any of them.
            self._raise_promise(leader[0])

    def _count_vote(self, slot: int, inflight: _InFlight, voter: int) -> None:
        inflight.acks.add(voter)
        if len(inflight.acks) >= self.quorum:
            del self._inflight[slot]
            if slot >= self.commit:  # catch-up may have taught us this slot already
                self._chosen_ahead[slot] = inflight.bytes
                self._advance_commit()

    def _on_reject(self, m: Reject) -> None:
        if m.promised.round > self._round_seen:
            self._round_seen = m.promised.round
        if self.role is Role.FOLLOWER or m.rejected != self.ballot or m.promised <= self.ballot:
            return
        if self.role is Role.CANDIDATE:
            self._failed_campaigns += 1
        self._step_down()

    def _on_heartbeat(self, m: Heartbeat) -> None:
        if not self._admit_leader(m):
            return
        self._send(m.src, HeartbeatAck(self.id, m.ballot, self.commit, self.voting))
        self._learn_commit(m.ballot, m.commit, m.src)

    def _on_heartbeat_ack(self, m: HeartbeatAck) -> None:
        if self.role is Role.LEADER and m.ballot == self.ballot:
            if m.voting:
                self._heard[m.src] = self._tick  # a learner is no part of a quorum
            elif m.commit + self.config.window_slots_max >= self.commit:
                self._learners.add(m.src)  # near enough that new slots let it finish
            self._note_commit(m.commit, m.src)  # a new leader may lag its followers

    def _on_catchup_request(self, m: CatchupRequest) -> None:
        if m.from_slot >= self.commit:
            return
        if m.from_slot < self.log_start:
            self._out.snapshot_requests.append((m.src, m.from_slot))
            return
        values: list[Value] = []
        size = 0
        end = min(self.commit, m.from_slot + self.config.catchup_slots_max)
        for slot in range(m.from_slot, end):
            value = self.log[slot][1]
            size += value_bytes(value)
            if values and size > self.config.catchup_bytes_max:
                break
            values.append(value)
        self._send(m.src, CatchupReply(self.id, m.from_slot, tuple(values), self.commit))

    def _on_catchup_reply(self, m: CatchupReply) -> None:
        if m.src == self._catchup_target and m.from_slot == self._catchup_from:
            # The answer to the outstanding request (not a duplicate or a stale one): the next
            # request may go at once.
            self._catchup_sent_tick = None
            self._catchup_target = None
            self._catchup_misses = 0
        if self.role is Role.LEADER and self._outvoted(m):
            # Our heartbeats would announce the learned values as chosen under our ballot,
            # and followers holding our own proposals there would apply those instead.
            self._step_down()
        if m.from_slot <= self.commit:
            for offset in range(self.commit - m.from_slot, len(m.values)):
                slot = m.from_slot + offset
                value = m.values[offset]
                current = self.log.get(slot)
                # An entry already holding the chosen value keeps its ballot; any other is
                # replaced and marked LEARNED (never with a lower ballot: see ballot.LEARNED).
                if current is None or current[1] != value:
                    self.log[slot] = (LEARNED, value)
                    self._out.persist.append(AcceptRecord(slot, LEARNED, value))
                self._chosen_ahead.pop(slot, None)
                self._inflight.pop(slot, None)
            new_commit = m.from_slot + len(m.values)
            if new_commit > self.commit:
                self._set_commit(new_commit)
                self._advance_commit()
        self._note_commit(m.commit, m.src)

    def _outvoted(self, m: CatchupReply) -> bool:
        """Does the reply show a slot we lead chosen with a value other than our proposal?

        That value was chosen in a ballot above ours (a lower one would have been reported in
        our phase 1 and proposed again by us), so our leadership is over.
        """
        start = max(self._lead_from, m.from_slot, self.commit)  # below commit: known, ours
        for slot in range(start, m.from_slot + len(m.values)):
            entry = self.log.get(slot)
            value = m.values[slot - m.from_slot]
            if entry is None or entry[0] != self.ballot or entry[1] != value:
                return True
        return False

    # ------------------------------------------------------------------- commit and apply

    def _learn_commit(self, ballot: Ballot, commit: int, src: int) -> None:
        """A leader at `ballot` says slots below `commit` are chosen."""
        slot = self.commit
        log = self.log
        while slot < commit:
            entry = log.get(slot)
            if entry is None or (entry[0] != ballot and entry[0] != LEARNED):
                break
            slot += 1
        if slot > self.commit:
            self._set_commit(slot)
        self._note_commit(commit, src)

    def _note_commit(self, commit: int, src: int) -> None:
        """`src` has chosen slots up to `commit`: fetch what we cannot prove chosen ourselves.

        Only a peer at least as far along as the best commit point we know of becomes the
        catch-up source: asking one that is behind would go unanswered forever.
        """
        if commit > self.commit and commit >= self._known_commit:
            self._known_commit = commit
            self._catchup_source = src
        if self._known_commit > self.commit and self._catchup_sent_tick is None:
            self._request_catchup()

    def _request_catchup(self) -> None:
        if self._known_commit <= self.commit or not self.peers:
            return
        target = self._catchup_source
        if target is None or self._catchup_misses % 2:
            target = self.peers[(self._catchup_misses // 2) % len(self.peers)]
        self._catchup_target = target
        self._catchup_from = self.commit
        self._catchup_sent_tick = self._tick
        self._send(target, CatchupRequest(self.id, self.commit))

    def _advance_commit(self) -> None:
        chosen = self._chosen_ahead
        slot = self.commit
        while slot in chosen:
            del chosen[slot]
            slot += 1
        if slot > self.commit:
            self._set_commit(slot)

    def _set_commit(self, commit: int) -> None:
        self.commit = commit
        self._commit_moved_tick = self._tick
        if commit > self._known_commit:
            self._known_commit = commit
        self._out.persist.append(CommitRecord(commit))
        self._emit_committed()

    def _emit_committed(self) -> None:
        log = self.log
        committed = self._out.committed
        for slot in range(self.applied, self.commit):
            committed.append((slot, log[slot][1]))
        self.applied = self.commit

    # --------------------------------------------------------------------------- leader

    def _fill_pipeline(self) -> None:
        cfg = self.config
        pending = self._pending
        tokens = self._tokens
        proposed = self._out.proposed
        in_window = sum(f.bytes for f in self._inflight.values())
        room = cfg.window_bytes_max - in_window - sum(self._chosen_ahead.values())
        while pending and len(self._inflight) + len(self._chosen_ahead) < cfg.window_slots_max:
            if len(pending[0]) > room:
                break  # until the window drains: it always has room for one slot when empty
            batch: list[bytes] = []
            size = 0
            while pending and len(batch) < cfg.batch_count_max:
                n = len(pending[0])
                if batch and (size + n > cfg.batch_bytes_max or size + n > room):
                    break
                batch.append(pending.popleft())
                size += n
            self._pending_bytes -= size
            room -= size
            value = tuple(batch)
            proposed.append((self.next_slot, value, tuple(tokens.popleft() for _ in batch)))
            self._propose_slot(self.next_slot, value)
            self.next_slot += 1

    def _propose_slot(self, slot: int, value: Value) -> None:
        # Below the commit point every entry is the chosen value; writing there would break
        # the invariant restarts and catch-up rely on.
        # (An explicit check, not `assert`: it must hold under `python -O` too.)
        if slot < self.commit:
            raise AssertionError(f"proposing slot {slot} below commit {self.commit}")
        ballot = self.ballot
        self.log[slot] = (ballot, value)
        self._out.persist.append(AcceptRecord(slot, ballot, value))
        # The own vote is counted by `persisted`, once this record is durable.
        self._inflight[slot] = _InFlight(value, set(), self._tick)
        message = Accept(self.id, ballot, slot, value, self.commit)
        send = self._out.messages.append
        for peer in self.peers:
            send((peer, message))

    def _leader_tick(self) -> None:
        cfg = self.config
        if not self.may_lead:
            self._step_down()
            return
        self._heartbeat_elapsed += 1
        if self._heartbeat_elapsed >= cfg.heartbeat_ticks:
            self._broadcast_heartbeat()
        # Resend accepts that have not reached everyone (lost messages, restarted peers).
        for slot, inflight in self._inflight.items():
            if self._tick - inflight.sent_tick >= cfg.resend_ticks:
                inflight.sent_tick = self._tick
                message = Accept(self.id, self.ballot, slot, inflight.value, self.commit)
                for peer in self.peers:
                    if peer not in inflight.acks:
                        self._send(peer, message)
        # A leader that cannot learn the slots below its first one (every replica that had them
        # is gone) cannot apply anything: stand down so a new phase 1 among the living can
        # propose those slots again.
        if (
            self.commit < self._lead_from
            and self._tick - self._commit_moved_tick > 2 * cfg.election_ticks_base
        ):
            self._step_down()
            return
        # Check quorum: a leader cut off from a majority stops taking commands it cannot commit.
        self._quorum_check_elapsed += 1
        if self._quorum_check_elapsed >= 2 * cfg.election_ticks_base:
            self._quorum_check_elapsed = 0
            since = self._tick - 2 * cfg.election_ticks_base
            heard = sum(1 for t in self._heard.values() if t > since)
            if heard + 1 < self.quorum:
                self._step_down()

    def _broadcast_heartbeat(self) -> None:
        if self._learners and not self._inflight and not self._pending:
            # Learners vote again only once slots begun after their restart are chosen.
            self._propose_slot(self.next_slot, NOOP)
            self.next_slot += 1
        self._learners.clear()
        self._heartbeat_elapsed = 0
        message = Heartbeat(self.id, self.ballot, self.commit)
        send = self._out.messages.append
        for peer in self.peers:
            send((peer, message))

    def _send(self, to: int, message: Message) -> None:
        kind = type(message)
        if kind is Accepted or kind is Promise or kind is Prepare:
            self._out.after_persist.append((to, message))
        else:
            self._out.messages.append((to, message))

    # --------------------------------------------------------------------------- views

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def inflight_count(self) -> int:
        return len(self._inflight)

    def __repr__(self) -> str:
        return (
            f"Replica(id={self.id}, role={self.role.name}, ballot={self.ballot}, "
            f"promised={self.promised}, commit={self.commit}, next_slot={self.next_slot})"
        )
