"""`paxq traces`: console spans read back from files with other output between them, and
printed as trees; the client's per-request tracing decision."""

from __future__ import annotations

import io

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind

from paxq.client.tracing import Caller, RequestTracing
from paxq.ops.span_files import SpanRecord, parse, render, traces


def console_spans() -> str:
    out = io.StringIO()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=out)))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("outer", kind=SpanKind.PRODUCER) as outer:
        out.write("2026-11-29 12:00:00 node 0 INFO paxq: a log line with { a brace\n")
        with tracer.start_as_current_span("inner", attributes={"paxq.slot": 7}):
            pass
        out.write('{\n    "not": "a span"\n}\n')
        tracer.start_span("linked", links=[Link(outer.get_span_context())]).end()
    with tracer.start_as_current_span("other trace"):
        pass
    return out.getvalue() + '{\n    "name": "cut short by a crash",\n    "context": {'


def test_spans_are_found_among_other_output_and_grouped_into_trees() -> None:
    spans = parse(console_spans())
    assert sorted(s.name for s in spans) == ["inner", "linked", "other trace", "outer"]
    found = traces(spans)
    assert len(found) == 2
    (first, roots), (_, others) = found.items()
    [outer] = roots
    assert outer.kind == "PRODUCER" and outer.parent_id is None
    assert [c.name for c in outer.children] == ["inner", "linked"]
    assert outer.children[1].links == [outer.span_id]
    lines = render(first, roots)
    assert lines[0].startswith(f"trace {first}: 3 spans, 1 services")
    assert "outer" in lines[1] and "PRODUCER" in lines[1]
    assert lines[2].split("ms", 1)[1].startswith("    inner") and "paxq.slot=7" in lines[2]
    assert "links=1" in lines[3]
    assert [s.name for s in others] == ["other trace"]


def test_a_span_whose_parent_is_elsewhere_is_a_root() -> None:
    spans = [s for s in parse(console_spans()) if s.name != "outer"]
    found = traces(spans)
    roots = next(iter(found.values()))
    assert sorted(s.name for s in roots) == ["inner", "linked"]


def test_a_request_is_traced_by_its_callers_or_by_the_draw() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = provider.get_tracer("app")
    never = RequestTracing(provider.get_tracer("paxq"), 0.0)
    assert never.start("publish", "t", [Caller(None, 5), Caller(None, 3)]) is None
    with app.start_as_current_span("a") as a, app.start_as_current_span("b") as b:
        callers = [
            Caller(None, 9),
            Caller(a.get_span_context(), 4),
            Caller(b.get_span_context(), 6),
        ]
        span = never.start("publish", "t", callers)
    assert span is not None
    span.end()
    [request] = [s for s in exporter.get_finished_spans() if s.name == "publish t"]
    assert request.kind == SpanKind.PRODUCER and request.start_time == 4  # the earliest caller
    assert request.parent.span_id == a.get_span_context().span_id
    assert [link.context.span_id for link in request.links] == [b.get_span_context().span_id]
    assert request.attributes["paxq.callers"] == 3
    always = RequestTracing(provider.get_tracer("paxq"), 1.0)
    ack = always.start("ack", "t", [Caller(None, 1)])
    assert ack is not None and ack.kind == SpanKind.CLIENT and ack.parent is None
    ack.end()
    some = RequestTracing(provider.get_tracer("paxq"), 0.25)
    drawn = sum(some.start("ack", "t", [Caller(None, 1)]) is not None for _ in range(4000))
    assert 800 < drawn < 1200


def test_junk_does_not_stop_the_reader() -> None:
    junk = [
        '{\n    "name": "x", "context": {"trace_id": "0x1", "span_id": "0x2"}, "resource": [],\n'
        '    "start_time": "2026-01-01T00:00:00Z", "end_time": "2026-01-01T00:00:00Z",\n'
        '    "links": []\n}\n',
        '{\n    "name": "y", "resource": {"attributes": "x"}}\n',
        "{\n" + '"k": [1,\n' * 5000,  # nested past the stack
        "{\n\x00\xff not json at all }\n",
    ]
    for text in junk:
        assert isinstance(parse(text), list)


def span(span_id: str, parent: str | None, start: int) -> SpanRecord:
    return SpanRecord(
        "s" + span_id, "t", span_id, parent, "INTERNAL", start, start + 1, "x", {}, []
    )


def test_cycles_of_parents_become_roots_and_deep_traces_print() -> None:
    found = traces([span("a", "b", 1), span("b", "a", 2), span("c", "c", 3), span("d", None, 0)])
    roots = found["t"]
    assert [r.span_id for r in roots] == ["d", "a", "c"]
    assert [c.span_id for c in roots[1].children] == ["b"] and not roots[2].children
    assert len(render("t", roots)) == 5
    chain = [span("0", None, 0)] + [span(str(i), str(i - 1), i) for i in range(1, 5000)]
    assert len(render("t", traces(chain)["t"])) == 5001
