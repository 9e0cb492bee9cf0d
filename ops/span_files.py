"""Reading the spans that `--tracing console` writes, and printing each trace as a tree.

A console exporter writes every span as an indented JSON object; a node's log file holds
them among its log lines. `paxq traces FILE...` gathers the spans of several files (the
nodes' logs, a client's span file), groups them by trace and prints each as a tree: when a
span started after its trace did, how long it took, where (service, node) and the
attributes that say which slot, offset or outcome it was about.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

#: read from the end of a file at most (a console exporter's output grows without bound; the
#: newest traces are at its end)
FILE_BYTES_MAX = 256 << 20
#: attributes printed beside a span's name
SHOWN = ("paxq.op", "paxq.slot", "paxq.offset", "paxq.callers", "paxq.outcome", "paxq.persisted")


@dataclass
class SpanRecord:
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    kind: str
    start_us: int
    end_us: int
    service: str
    attributes: dict
    links: list[str]  # span ids
    children: list[SpanRecord] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return (self.end_us - self.start_us) / 1000


def _micros(stamp: str) -> int:
    moment = datetime.fromisoformat(stamp)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _record(span: dict) -> SpanRecord | None:
    """A span from the console exporter's JSON, or None for any other JSON object."""
    try:
        context = span["context"]
        resource = span.get("resource", {}).get("attributes", {})
        service = str(resource.get("service.name", "?"))
        if "paxq.node" in resource:
            service = f"{service} node {resource['paxq.node']}"
        return SpanRecord(
            name=str(span["name"]),
            trace_id=str(context["trace_id"]).removeprefix("0x"),
            span_id=str(context["span_id"]).removeprefix("0x"),
            parent_id=str(span["parent_id"]).removeprefix("0x") if span.get("parent_id") else None,
            kind=str(span.get("kind", "")).removeprefix("SpanKind."),
            start_us=_micros(span["start_time"]),
            end_us=_micros(span["end_time"]),
            service=service,
            attributes=dict(span.get("attributes") or {}),
            links=[str(link["context"]["span_id"]).removeprefix("0x") for link in span["links"]],
        )
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def parse(text: str) -> list[SpanRecord]:
    """Every span in `text`: JSON objects that start on a line of their own ("{"), whatever
    else (log lines, a span cut short by a crash) lies between them."""
    decoder = json.JSONDecoder()
    spans = []
    position = 0
    while (start := text.find("{\n", position)) != -1:
        if start and text[start - 1] != "\n":  # a brace inside a log line
            position = start + 1
            continue
        try:
            value, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
            position = start + 1
            continue
        position = end
        if isinstance(value, dict) and (record := _record(value)) is not None:
            spans.append(record)
    return spans


def read(paths: Iterable[Path]) -> list[SpanRecord]:
    spans: list[SpanRecord] = []
    for path in paths:
        with open(path, "rb") as source:
            source.seek(max(0, os.fstat(source.fileno()).st_size - FILE_BYTES_MAX))
            text = source.read(FILE_BYTES_MAX).decode("utf-8", "replace")
        spans.extend(parse(text))
    return spans


def traces(spans: Iterable[SpanRecord]) -> dict[str, list[SpanRecord]]:
    """Trace id -> its root spans (children attached, by start), traces by start. A span
    whose parent is not among `spans` (another file, not exported yet) counts as a root, and
    so does one caught in a cycle of parents (files that lie)."""
    by_trace: dict[str, dict[str, SpanRecord]] = {}
    for span in spans:
        span.children = []
        by_trace.setdefault(span.trace_id, {})[span.span_id] = span
    out: dict[str, list[SpanRecord]] = {}
    for trace_id, members in by_trace.items():
        roots = []
        parent_of: dict[str, SpanRecord] = {}
        for span in members.values():
            parent = members.get(span.parent_id) if span.parent_id else None
            if parent is None:
                roots.append(span)
            else:
                parent.children.append(span)
                parent_of[span.span_id] = parent
        reached: set[str] = set()
        _reach(roots, reached)
        for span in sorted(members.values(), key=lambda s: s.start_us):
            if span.span_id not in reached:  # in a cycle: cut it loose from its parent
                parent_of[span.span_id].children.remove(span)
                roots.append(span)
                _reach([span], reached)
        for span in members.values():
            span.children.sort(key=lambda s: s.start_us)
        out[trace_id] = sorted(roots, key=lambda s: s.start_us)
    return dict(sorted(out.items(), key=lambda item: item[1][0].start_us))


def _reach(roots: list[SpanRecord], reached: set[str]) -> None:
    stack = list(roots)
    while stack:
        span = stack.pop()
        if span.span_id not in reached:
            reached.add(span.span_id)
            stack.extend(span.children)


def depth_first(roots: list[SpanRecord]) -> list[tuple[int, SpanRecord]]:
    """(depth, span) in print order, without recursion (a trace may be deep)."""
    out: list[tuple[int, SpanRecord]] = []
    stack = [(0, root) for root in reversed(roots)]
    while stack:
        depth, span = stack.pop()
        out.append((depth, span))
        stack.extend((depth + 1, child) for child in reversed(span.children))
    return out


def render(trace_id: str, roots: list[SpanRecord]) -> list[str]:
    """A trace as lines: start (ms after the trace's first span), duration, the span with
    its children indented below it, its kind, service and chosen attributes."""
    spans = depth_first(roots)
    begin = min(span.start_us for _, span in spans)
    end = max(span.end_us for _, span in spans)
    services = {span.service for _, span in spans}
    lines = [
        f"trace {trace_id}: {len(spans)} spans, {len(services)} services, "
        f"{(end - begin) / 1000:.2f} ms"
    ]
    width = max(2 * depth + len(span.name) for depth, span in spans)
    for depth, span in spans:
        shown = " ".join(f"{k}={span.attributes[k]}" for k in SHOWN if k in span.attributes)
        if span.links:
            shown += f" links={len(span.links)}"
        kind = "" if span.kind == "INTERNAL" else f" {span.kind}"
        line = (
            f"  {(span.start_us - begin) / 1000:8.2f} {span.duration_ms:8.2f} ms  "
            f"{'  ' * depth}{span.name:<{width - 2 * depth}}  [{span.service}{kind}] {shown}"
        )
        lines.append(line.rstrip())
    return lines
