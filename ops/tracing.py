"""Setting up OpenTelemetry tracing for a node or a client program.

Exporters: `otlp` (OTLP over HTTP; the standard OTEL_EXPORTER_OTLP_* variables say where),
`console` (JSON on stdout within 0.2 s of a span's end: for development; `paxq traces`),
`drop` (spans made and thrown away: what tracing itself costs), `none` (tracing off: no
provider, no per-message work). Sampling: a ratio of new traces; a request that carries a
trace context follows its caller's decision.
"""

from __future__ import annotations

import sys
from typing import TextIO

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from .config import EXPORTERS


class _Drop(SpanExporter):
    def export(self, spans) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def tracer_provider(
    service: str,
    exporter: str,
    sample: float,
    attributes: dict | None = None,
    out: TextIO | None = None,
) -> TracerProvider | None:
    """A TracerProvider for `exporter`, or None for "none". Its sampler keeps `sample` of new
    traces and follows the caller's decision for the rest (a node samples new traces itself,
    cheaper: give it 1.0 and CommitTracing the ratio). `out`: where console spans go (standard
    output by default)."""
    if exporter not in EXPORTERS:
        raise ValueError(f"tracing is one of {', '.join(EXPORTERS)}, not {exporter!r}")
    if not 0.0 <= sample <= 1.0:
        raise ValueError("the trace sample ratio is between 0 and 1")
    if exporter == "none":
        return None
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, **(attributes or {})}),
        sampler=ParentBased(TraceIdRatioBased(sample)),
    )
    delay_ms = 5000  # the SDK's default: collectors want batches
    if exporter == "console":
        target: SpanExporter = ConsoleSpanExporter(out=out or sys.stdout)
        delay_ms = 200  # a person reads these (`paxq traces`): soon after the spans end
    elif exporter == "drop":
        target = _Drop()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        target = OTLPSpanExporter()
    # Batched and bounded: spans wait in a queue of 2048 and leave from a background thread,
    # never on the commit path; past the queue they are dropped, not held.
    provider.add_span_processor(
        BatchSpanProcessor(target, max_queue_size=2048, schedule_delay_millis=delay_ms)
    )
    return provider
