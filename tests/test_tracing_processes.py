"""One publish, one connected trace across real processes: a client with a console span file
and three `paxq node --tracing console` processes, whose logs `paxq traces` reads."""

from __future__ import annotations

import gzip
import itertools
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from processes import Cluster

from paxq.client import Client
from paxq.ops.span_files import SpanRecord, depth_first, read, traces
from paxq.ops.tracing import tracer_provider

LIMIT_S = 90


async def test_one_publish_is_one_trace_across_client_leader_and_followers(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.extra = ["--tracing", "console", "--trace-sample", "0"]
    for node in range(3):
        cluster.start(node)
    client_spans = tmp_path / "client-spans.json"
    logs = [cluster.data / f"node{node}.log" for node in range(3)]
    with trio.fail_after(LIMIT_S):
        leader = await cluster.leader()
        seeds = [f"{h}:{p}" for h, p in cluster.client_addresses]
        with open(client_spans, "w") as out:
            provider = tracer_provider("test-app", "console", 1.0, out=out)
            assert provider is not None
            async with Client(seeds, tracer=provider.get_tracer("test")) as client:
                await client.create_topic("traced")
                offset = await client.publish("traced", b"follow me")
            provider.shutdown()
        # The nodes write their spans within 0.2 s of their end; some end around the
        # answer: wait until the whole trace is in their logs.
        while True:
            found = traces(read([client_spans, *logs]))
            [(trace_id, roots)] = [
                (t, r) for t, r in found.items() if r[0].name == "publish traced"
            ] or [(None, [])]
            spans = [span for _, span in depth_first(roots)]
            names = [s.name for s in spans]
            answered = any(
                s.name == "paxq.receive" and s.attributes.get("paxq.outcome") == "ok" for s in spans
            )
            wanted = {"paxq.batch", "paxq.slot", "paxq.persist", "paxq.quorum"}
            wanted |= {"paxq.apply", "paxq.reply"}
            if answered and wanted <= set(names) and names.count("paxq.replicate") >= 2:
                break
            await trio.sleep(0.05)

    # Connected: one root, the client's publish; every other span hangs below it.
    [publish] = roots
    assert publish.kind == "PRODUCER" and publish.service == "test-app"
    assert publish.attributes["paxq.offset"] == offset
    by_name: dict[str, list[SpanRecord]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    # A node that does not lead answers "not leader" (the client goes on to the leader); the
    # leader's receive carries the command through every stage.
    [receive] = [r for r in by_name["paxq.receive"] if r.service == f"paxq node {leader}"]
    assert receive.parent_id == publish.span_id and receive.kind == "SERVER"
    assert receive.attributes["paxq.outcome"] == "ok"
    for other in by_name["paxq.receive"]:
        assert other is receive or other.attributes["paxq.outcome"] == "not leader"
    stage = {name: by_name[name][0] for name in ("paxq.batch", "paxq.slot", "paxq.reply")}
    for span in stage.values():
        assert span.parent_id == receive.span_id and span.service == receive.service
    slot = stage["paxq.slot"]
    assert slot.links == [publish.span_id]  # the batch links to the client span it carries
    for name in ("paxq.persist", "paxq.quorum", "paxq.apply"):
        [span] = by_name[name]
        assert span.parent_id == slot.span_id
        stage[name] = span
    replicas = by_name["paxq.replicate"]
    assert {r.service for r in replicas} == {f"paxq node {n}" for n in range(3) if n != leader}
    for replica in replicas:
        assert replica.parent_id == slot.span_id
        assert replica.attributes["paxq.slot"] == slot.attributes["paxq.slot"]
    # In order (to the microsecond the console exporter keeps, across three processes); the
    # leader's own write and the followers' overlap: the accepts leave while it writes.
    # Two followers are a quorum of three, so persist need not end before the apply.
    names = ("paxq.batch", "paxq.quorum", "paxq.apply")
    order = [stage[n] for n in names]
    for earlier, later in itertools.pairwise(order):
        assert earlier.end_us <= later.start_us, (earlier.name, later.name)
    persist, quorum = stage["paxq.persist"], stage["paxq.quorum"]
    assert stage["paxq.batch"].end_us <= persist.start_us <= quorum.start_us < persist.end_us
    assert stage["paxq.apply"].end_us <= stage["paxq.reply"].start_us
    assert publish.start_us <= receive.start_us and receive.end_us <= publish.end_us

    # `paxq traces` prints the same trace as a tree.
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "paxq.ops.cli",
            "traces",
            str(client_spans),
            *map(str, logs),
            "--trace",
            trace_id,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"trace {trace_id}: {len(spans)} spans")
    assert "publish traced" in lines[1] and "[test-app PRODUCER]" in lines[1]
    assert sum("paxq.replicate" in line for line in lines) == len(replicas)


@contextmanager
def otlp_collector() -> Iterator[tuple[str, list]]:
    """A minimal OTLP/HTTP trace receiver on 127.0.0.1: (its endpoint, the spans it got as
    (service, span) pairs)."""
    received: list = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                service = {a.key: a.value for a in resource.resource.attributes}
                for scope in resource.scope_spans:
                    received.extend((service, span) for span in scope.spans)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def test_nodes_export_a_publish_trace_over_otlp(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    with otlp_collector() as (endpoint, received):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
        cluster.extra = ["--tracing", "otlp", "--trace-sample", "0"]
        for node in range(3):
            cluster.start(node)
        provider, exporter_spans = _memory_provider()
        with trio.fail_after(LIMIT_S):
            await cluster.leader()
            seeds = [f"{h}:{p}" for h, p in cluster.client_addresses]
            async with Client(seeds, tracer=provider.get_tracer("test")) as client:
                await client.create_topic("otlp")
                await client.publish("otlp", b"over the wire")
            [publish] = [s for s in exporter_spans.get_finished_spans() if s.name == "publish otlp"]
            # Every node has applied the slot (each follower's span has ended)...
            [leader] = [s for s in await cluster.statuses() if s.get("role") == "leader"]
            while min(s.get("applied", -1) for s in await cluster.statuses()) < leader["applied"]:
                await trio.sleep(0.02)
            # ... and a node stopped by SIGTERM sends what it still holds before it exits.
            for node in range(3):
                cluster.kill(node, signal.SIGTERM)
            for node in range(3):
                await trio.to_thread.run_sync(cluster.procs[node].wait, 30)
                assert cluster.procs[node].returncode == 0
    trace_id = publish.context.trace_id.to_bytes(16, "big")
    mine = [(service, span) for service, span in received if span.trace_id == trace_id]
    names = sorted(span.name for _, span in mine)
    assert names == sorted(
        ["paxq.receive"] * names.count("paxq.receive")
        + ["paxq.batch", "paxq.slot", "paxq.persist", "paxq.quorum"]
        + ["paxq.apply", "paxq.reply", "paxq.replicate", "paxq.replicate"]
    )
    nodes = {service["paxq.node"].int_value for service, _ in mine}
    assert nodes == {0, 1, 2}  # the leader's spans and both followers'
    by_id = {span.span_id: span for _, span in mine}
    for _, span in mine:  # connected: every node span's parent is the client's or another's
        parent = span.parent_span_id
        assert parent in by_id or parent == publish.context.span_id.to_bytes(8, "big"), span.name


def _memory_provider():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter
