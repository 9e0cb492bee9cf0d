"""The client's side of a trace: one span per traced request, whose W3C traceparent rides in
the frame to the nodes.

A request is traced when one of the callers it carries is inside a sampled span (their trace
goes on through paxq) or, failing that, when a `trace_sample` draw says so. Sampling is per
request, not per message: a publish request carries up to hundreds of callers' messages, and
a trace covers them all. A caller costs the client a context lookup and a clock read, a
request one span; with no tracer nothing here runs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import NamedTuple

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, Tracer


class Caller(NamedTuple):
    """Who is waiting on a request: their sampled span context (None outside a sampled
    trace) and when they asked (the span starts at the earliest, so it counts the time a
    message waited in the batching publisher)."""

    context: SpanContext | None
    since_ns: int


def caller() -> Caller:
    context = trace.get_current_span().get_span_context()
    return Caller(context if context.trace_flags.sampled else None, time.time_ns())


def traceparent(span: Span) -> str | None:
    """The W3C traceparent of a sampled span (None if it is not sampled: the nodes then do
    nothing for the request)."""
    context = span.get_span_context()
    if not context.trace_flags.sampled:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


class RequestTracing:
    """Starts the span of a traced request (None for one that is not traced)."""

    def __init__(self, tracer: Tracer, sample: float) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError("trace_sample is between 0 and 1")
        self.tracer = tracer
        self.sample = sample
        self._random = random.Random()

    def start(self, op: str, topic: object, callers: Sequence[Caller]) -> Span | None:
        contexts = [c.context for c in callers if c.context is not None]
        if not contexts and not (self.sample >= 1.0 or self._random.random() < self.sample):
            return None
        # The first traced caller's span is the parent, the others are linked: each of their
        # traces reaches this request. Without one the request starts a trace of its own.
        parent = trace.set_span_in_context(NonRecordingSpan(contexts[0])) if contexts else Context()
        publish = op == "publish"
        return self.tracer.start_span(
            f"publish {topic}" if publish else f"paxq {op}",
            context=parent,
            kind=SpanKind.PRODUCER if publish else SpanKind.CLIENT,
            links=[Link(c) for c in contexts[1:]],
            start_time=min(c.since_ns for c in callers) if callers else None,
            attributes={"paxq.op": op, "paxq.topic": str(topic), "paxq.callers": len(callers)},
        )
