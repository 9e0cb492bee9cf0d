"""OpenTelemetry spans on a leader's commit path.

A command that arrives with a sampled W3C traceparent (or that the node's own sampler picks)
gets, under a `paxq.receive` span (child of the client's span):

    paxq.batch    from arrival until a slot carries it
    paxq.reply    from its result to its answer queued on the connection

and its slot gets one `paxq.slot` span that links to the client spans of every traced command
it carries, with children: `paxq.persist` (the synced write of the leader's own accept) and,
beside it in time, `paxq.quorum` (from the accepts leaving, which they do while the leader's
own write runs, to the slot being known chosen); then `paxq.apply`. Each follower's
`paxq.replicate` span covers its write of the accept until its Accepted may leave.

Nothing here runs for a command that is not traced: the node calls in only while `traced`
(commands) or `slots` (slots) is non-empty, and not at all when tracing is off.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from paxq.client.tracing import traceparent as traceparent_of

from ..paxos import AcceptRecord

_PROPAGATOR = TraceContextTextMapPropagator()
#: traced commands or slots at most (a bound on what tracing may hold; past it, untraced)
TRACED_MAX = 10_000


def _sampled(traceparent: str) -> bool:
    """The W3C trace flags (the last field, two hex digits) have the sampled bit (0) set."""
    try:
        return bool(int(traceparent[-2:], 16) & 1)
    except ValueError:
        return False


@dataclass
class _Command:
    receive: Span
    batch: Span
    client: trace.SpanContext | None  # the client's span, for the slot's link
    slot: int | None = None


@dataclass
class _Slot:
    span: Span
    commands: list[bytes] = field(default_factory=list)
    persist: Span | None = None  # the leader's own accept being written
    quorum: Span | None = None  # from the accepts leaving to the slot known chosen
    apply: Span | None = None


def _end(span: Span | None) -> None:
    if span is not None:
        span.end()


class CommitTracing:
    """`root_sample`: the ratio of commands without a trace context that start a trace here
    (a command with one follows its client's decision)."""

    def __init__(self, tracer: Tracer, node: int, root_sample: float = 0.0) -> None:
        self.tracer = tracer
        self.node = node
        self.root_sample = root_sample
        self.traced: dict[bytes, _Command] = {}
        self.slots: dict[int, _Slot] = {}
        #: on a follower: slots whose accept came traced -> the span until it is persisted
        self.replicas: dict[int, Span] = {}
        #: on the leader: persist spans of slots applied before their write was durable
        self.unpersisted: dict[int, Span] = {}
        self._random = random.Random()

    def received(self, command: bytes, traceparent: object, op: str) -> bool:
        """Start the spans of a command; False if it is not sampled (nothing kept). The
        decision costs a lookup and a comparison: most commands are not sampled."""
        parent: Context | None = None
        if type(traceparent) is str:
            if not _sampled(traceparent):
                return False
            parent = _PROPAGATOR.extract({"traceparent": traceparent})
        elif self._random.random() >= self.root_sample:
            return False
        if len(self.traced) >= TRACED_MAX:
            return False
        receive = self.tracer.start_span(
            "paxq.receive",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"paxq.node": self.node, "paxq.op": op},
        )
        if not receive.is_recording():
            receive.end()
            return False
        client = trace.get_current_span(parent).get_span_context() if parent else None
        inside = trace.set_span_in_context(receive)
        batch = self.tracer.start_span("paxq.batch", context=inside)
        self.traced[command] = _Command(receive, batch, client)
        return True

    def slot_context(self, number: int) -> str | None:
        """The traceparent of a slot's span, for the accepts that carry it to followers."""
        slot = self.slots.get(number)
        return traceparent_of(slot.span) if slot is not None else None

    def replicating(self, number: int, traceparent: str) -> None:
        """A follower got a traced accept: its `paxq.replicate` span runs until the accept
        is persisted (and its Accepted goes back)."""
        if number in self.replicas or len(self.replicas) >= TRACED_MAX:
            return
        if not _sampled(traceparent):
            return
        parent = _PROPAGATOR.extract({"traceparent": traceparent})
        self.replicas[number] = self.tracer.start_span(
            "paxq.replicate",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"paxq.node": self.node, "paxq.slot": number},
        )

    def writing(self, records: list) -> list[int]:
        """A write is handed to the journal: slots of traced commands get their slot span,
        whose persist and quorum stages start together. Returns the traced slots it holds
        (a follower's too), for `persisted`."""
        started: list[int] = []
        tracer = self.tracer
        for record in records:
            if type(record) is not AcceptRecord:
                continue
            if self.replicas and record.slot in self.replicas:
                started.append(record.slot)
                continue
            if record.slot in self.slots:
                continue
            mine = [c for c in record.value if c in self.traced]
            if not mine or len(self.slots) >= TRACED_MAX:
                continue
            links = []
            for command in mine:
                state = self.traced[command]
                state.slot = record.slot
                state.batch.set_attribute("paxq.slot", record.slot)
                state.batch.end()
                if state.client is not None and state.client.is_valid:
                    links.append(Link(state.client))
            first = self.traced[mine[0]]
            span = tracer.start_span(
                "paxq.slot",
                context=trace.set_span_in_context(first.receive),
                links=links,
                attributes={
                    "paxq.slot": record.slot,
                    "paxq.batch.commands": len(record.value),
                    "paxq.batch.traced": len(mine),
                },
            )
            inside = trace.set_span_in_context(span)
            self.slots[record.slot] = _Slot(
                span,
                mine,
                persist=tracer.start_span("paxq.persist", context=inside),
                quorum=tracer.start_span("paxq.quorum", context=inside),
            )
            started.append(record.slot)
        return list(dict.fromkeys(started))  # a slot accepted twice in one write: once

    def persisted(self, slots: list[int]) -> None:
        """The write holding these slots is durable: their persist (or replicate) ends."""
        for number in slots:
            replica = self.replicas.pop(number, None)
            if replica is not None:
                replica.end()
                continue
            slot = self.slots.get(number)
            if slot is not None:
                _end(slot.persist)
                slot.persist = None
            else:
                _end(self.unpersisted.pop(number, None))

    def applying(self, number: int) -> None:
        slot = self.slots.get(number)
        if slot is not None:
            _end(slot.quorum)
            slot.quorum = None
            slot.apply = self.tracer.start_span(
                "paxq.apply", context=trace.set_span_in_context(slot.span)
            )

    def applied(self, number: int) -> None:
        replica = self.replicas.pop(number, None)
        if replica is not None:
            # Applied without this follower persisting the traced accept (another ballot's
            # value won, or the slot came by catch-up): its span ends here, not never.
            replica.set_attribute("paxq.persisted", False)
            replica.end()
        slot = self.slots.pop(number, None)
        if slot is None:
            return
        _end(slot.quorum)
        _end(slot.apply)
        slot.span.end()
        if slot.persist is not None:
            # Chosen by the followers before the leader's own write was durable.
            if len(self.unpersisted) < TRACED_MAX:
                self.unpersisted[number] = slot.persist
            else:
                slot.persist.end()

    def replying(self, command: bytes, outcome: str) -> _Reply | None:
        """The command's result is known: its reply span starts (ended by `replied`)."""
        state = self.traced.pop(command, None)
        if state is None:
            return None
        if state.slot is None:  # never got a slot (not leader, overloaded, ...)
            state.batch.end()
        state.receive.set_attribute("paxq.outcome", outcome)
        reply = self.tracer.start_span(
            "paxq.reply", context=trace.set_span_in_context(state.receive)
        )
        reply.set_attribute("paxq.node", self.node)
        return _Reply(reply, state.receive)

    def abandon(self) -> None:
        """Leadership or the node is gone: end whatever is open."""
        for state in self.traced.values():
            if state.slot is None:  # else ended when its slot was written
                state.batch.end()
            state.receive.end()
        for slot in self.slots.values():
            for span in (slot.persist, slot.quorum, slot.apply, slot.span):
                _end(span)
        for span in [*self.replicas.values(), *self.unpersisted.values()]:
            span.end()
        self.traced.clear()
        self.slots.clear()
        self.replicas.clear()
        self.unpersisted.clear()


class _Reply:
    """The reply span and, once the answer is encoded, the end of the whole receive span."""

    def __init__(self, reply: Span, receive: Span) -> None:
        self.reply = reply
        self.receive = receive

    def end(self) -> None:
        self.reply.end()
        self.receive.end()
