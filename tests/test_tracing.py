"""One publish, one connected trace: client spans, and the leader's spans for every stage of
the commit path, in order, with the right parents and links (an in-memory exporter)."""

from __future__ import annotations

import itertools
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind
from test_client_port import serving
from test_node import leader_of

from paxq.client import Client

LIMIT_S = 60


@asynccontextmanager
async def one_node(tmp_path: Path, traces: TracerProvider, **options: object):
    """A traced node and a Client with a tracer, both from `traces`."""
    async with serving(tmp_path, 1, tracer=traces.get_tracer("paxq.node")) as (nodes, clients):
        await leader_of(nodes)
        seeds = [f"{h}:{p}" for h, p in clients.values()]
        async with Client(seeds, tracer=traces.get_tracer("paxq.client"), **options) as client:
            yield client


def provider(sampler=None) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    traces = TracerProvider(**({"sampler": sampler} if sampler is not None else {}))
    traces.add_span_processor(SimpleSpanProcessor(exporter))
    return traces, exporter


async def test_one_publish_is_one_trace_through_every_stage(tmp_path: Path) -> None:
    traces, exporter = provider()
    with trio.fail_after(LIMIT_S):
        async with serving(tmp_path, 3, tracer=traces.get_tracer("paxq.node")) as (nodes, clients):
            leader = await leader_of(nodes)
            seeds = [f"{h}:{p}" for h, p in clients.values()]
            async with Client(seeds, tracer=traces.get_tracer("paxq.client")) as client:
                await client.create_topic("traced")
                exporter.clear()
                offset = await client.publish("traced", b"follow me")
                while True:  # the slot span ends after its apply; followers' when persisted
                    done = exporter.get_finished_spans()
                    slots = [s for s in done if s.name == "paxq.slot"]
                    mine = [
                        s
                        for s in done
                        if s.name == "paxq.replicate"
                        and slots
                        and s.context.trace_id == slots[-1].context.trace_id
                    ]
                    if slots and len({s.attributes["paxq.node"] for s in mine}) == 2:
                        break
                    await trio.sleep(0.01)
    finished = exporter.get_finished_spans()
    spans = {s.name: s for s in finished}
    replicas = [  # an earlier request's follower spans may end after the clear
        s
        for s in finished
        if s.name == "paxq.replicate" and s.context.trace_id == spans["paxq.slot"].context.trace_id
    ]
    request = spans["publish traced"]
    receive, batch, reply = spans["paxq.receive"], spans["paxq.batch"], spans["paxq.reply"]
    slot = spans["paxq.slot"]
    persist, quorum, apply = spans["paxq.persist"], spans["paxq.quorum"], spans["paxq.apply"]
    assert "paxq.commit" not in spans, "the commit point is written without a sync of its own"
    # One trace, parent to child: publish request -> receive -> (batch, slot, reply).
    assert len({s.context.trace_id for s in spans.values()}) == 1
    assert request.kind == SpanKind.PRODUCER and request.attributes["paxq.offset"] == offset
    assert request.parent is None and request.attributes["paxq.callers"] == 1
    assert receive.parent.span_id == request.context.span_id and receive.kind == SpanKind.SERVER
    assert receive.attributes["paxq.node"] == leader.id
    for child in (batch, slot, reply):
        assert child.parent.span_id == receive.context.span_id, child.name
    for child in (persist, quorum, apply):
        assert child.parent.span_id == slot.context.span_id, child.name
    # Both followers' spans join the trace under the slot (a resent accept adds one).
    assert {r.attributes["paxq.node"] for r in replicas} == {n for n in nodes if n != leader.id}
    for replica in replicas:
        assert replica.parent.span_id == slot.context.span_id
        assert replica.context.trace_id == slot.context.trace_id
        assert replica.attributes["paxq.slot"] == slot.attributes["paxq.slot"]
    # The quorum waits for at least one follower's persisted accept.
    assert min(r.end_time for r in replicas) <= quorum.end_time
    # The batch's span links to the client span it carries.
    assert [link.context.span_id for link in slot.links] == [request.context.span_id]
    assert batch.attributes["paxq.slot"] == slot.attributes["paxq.slot"]
    # The leader's own write and the wait for the quorum start together: the accepts leave
    # while the leader writes its own. Then apply, then the reply.
    assert persist.start_time <= quorum.start_time < persist.end_time
    # Two followers are a quorum of three: the slot may be chosen before the leader's own
    # write is done, so persist need not end before the apply.
    order = [batch, quorum, apply, reply]
    for earlier, later in itertools.pairwise(order):
        assert earlier.end_time <= later.start_time, (earlier.name, later.name)
    assert batch.end_time <= persist.start_time
    assert receive.start_time <= batch.start_time and reply.end_time <= receive.end_time
    assert request.start_time <= receive.start_time and receive.end_time <= request.end_time


async def test_unsampled_and_untraced_publishes_leave_no_spans(tmp_path: Path) -> None:
    traces, exporter = provider(ParentBased(ALWAYS_OFF))
    with trio.fail_after(LIMIT_S):
        async with serving(tmp_path, 1, tracer=traces.get_tracer("paxq.node")) as (nodes, clients):
            await leader_of(nodes)
            seeds = [f"{h}:{p}" for h, p in clients.values()]
            async with Client(seeds, tracer=traces.get_tracer("paxq.client")) as client:
                await client.create_topic("quiet")
                await client.publish("quiet", b"not sampled")
            async with Client(seeds) as client:  # no tracer: no trace context at all
                await client.publish("quiet", b"not traced")
            assert not nodes[0].tracing.traced and not nodes[0].tracing.slots
    assert exporter.get_finished_spans() == ()


def test_the_sampled_flag_is_read_from_the_traceparent() -> None:
    from paxq.broker.node.tracing import _sampled

    base = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-"
    assert _sampled(base + "01") and _sampled(base + "03")  # 03: sampled and random
    assert not _sampled(base + "00") and not _sampled(base + "02") and not _sampled("junk")


def test_a_traced_accept_crosses_the_peer_codec() -> None:
    from paxq.broker.node.codec import Decoder, TracedAccept, encode
    from paxq.broker.paxos import Accept, Ballot, Config
    from paxq.client.wire import MalformedMessage

    accept = Accept(1, Ballot(3, 1), 42, (b"cmd",), 40)
    traced = TracedAccept(accept, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    decoder = Decoder(Config(nodes=(0, 1, 2)))
    assert decoder.decode(encode(traced)) == traced
    assert decoder.decode(encode(accept)) == accept  # untraced accepts are unchanged
    with pytest.raises(MalformedMessage):
        decoder.decode([*encode(traced)[:-1], "x" * 500])


def test_a_follower_span_ends_when_its_slot_is_applied_unpersisted() -> None:
    from paxq.broker.node.tracing import CommitTracing

    traces, exporter = provider()
    tracing = CommitTracing(traces.get_tracer("paxq.node"), 2)
    tracing.replicating(7, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    tracing.applying(7)
    tracing.applied(7)  # the traced accept never reached this follower's disk
    [span] = exporter.get_finished_spans()
    assert span.name == "paxq.replicate" and span.attributes["paxq.persisted"] is False
    assert not tracing.replicas


async def test_a_shared_request_joins_every_callers_trace(tmp_path: Path) -> None:
    """Callers inside sampled spans: the request they share is a child of the first and
    linked to the others, and it is traced even when the client samples nothing itself."""
    traces, exporter = provider()
    app = traces.get_tracer("app")
    with trio.fail_after(LIMIT_S):
        async with one_node(tmp_path, traces, trace_sample=0.0) as client:
            await client.create_topic("shared")
            await client.publish("shared", b"no caller span, not sampled")
            assert exporter.get_finished_spans() == ()

            async def handler(name: str) -> None:
                with app.start_as_current_span(name):
                    await client.publish("shared", name.encode())

            async with trio.open_nursery() as nursery:
                for name in ("first", "second", "third"):
                    nursery.start_soon(handler, name)
    finished = exporter.get_finished_spans()
    handlers = {s.name: s for s in finished if s.name in ("first", "second", "third")}
    requests = [s for s in finished if s.name == "publish shared"]
    assert len(handlers) == 3 and requests
    carried = 0
    for request in requests:  # one request normally; the batcher may split them
        parent = next(h for h in handlers.values() if h.context.span_id == request.parent.span_id)
        linked = {link.context.span_id for link in request.links}
        assert parent.context.span_id not in linked
        assert request.context.trace_id == parent.context.trace_id
        carried += 1 + len(linked)
        assert request.attributes["paxq.callers"] == 1 + len(linked)
        # The node continues the request's trace.
        [receive] = [
            s
            for s in finished
            if s.name == "paxq.receive" and s.parent.span_id == request.context.span_id
        ]
        assert receive.context.trace_id == request.context.trace_id
    assert carried == 3


async def test_tracing_off_runs_no_tracing_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No tracer on the client, no tracing on the node: not one tracing call per message."""
    import paxq.client.client as client_module
    from paxq.broker.node.tracing import CommitTracing

    def called(*args: object, **kwargs: object) -> None:
        raise AssertionError("tracing code ran with tracing off")

    monkeypatch.setattr(client_module, "caller", called)
    monkeypatch.setattr(client_module, "traceparent", called)
    monkeypatch.setattr(client_module, "RequestTracing", called)
    monkeypatch.setattr(CommitTracing, "__init__", called)  # a node makes none
    with trio.fail_after(LIMIT_S):
        async with serving(tmp_path, 3) as (nodes, clients):
            await leader_of(nodes)
            # Every tracing call on a node is behind `node.tracing is not None`.
            assert all(node.tracing is None for node in nodes.values())
            seeds = [f"{h}:{p}" for h, p in clients.values()]
            async with Client(seeds) as client:
                await client.create_topic("plain")
                offsets = await client.publish_many("plain", [b"a", b"b"])
                assert offsets == [0, 1]
                assert await client.publish("plain", b"c") == 2
                await client.create_queue("work")
                await client.publish("work", b"job")
                [delivery] = await client.claim("work")
                await delivery.ack()


async def test_background_requests_do_not_inherit_the_first_callers_span(tmp_path: Path) -> None:
    """The batchers' tasks start in the context of the first caller: a later request that
    no caller traces must not be traced as that caller's child."""
    traces, exporter = provider()
    app = traces.get_tracer("app")
    with trio.fail_after(LIMIT_S):
        async with one_node(tmp_path, traces, trace_sample=0.0) as client:
            await client.create_queue("jobs")
            with app.start_as_current_span("first"):
                await client.publish("jobs", b"1")
                [delivery] = await client.claim("jobs")
                await delivery.ack()
            exporter.clear()
            await client.publish("jobs", b"2")  # outside any span, nothing sampled
            [delivery] = await client.claim("jobs")
            await delivery.ack()
    assert exporter.get_finished_spans() == ()


def test_a_slot_accepted_twice_in_one_write_has_one_follower_span() -> None:
    from paxq.broker.node.tracing import CommitTracing
    from paxq.broker.paxos import AcceptRecord, Ballot

    traces, exporter = provider()
    tracing = CommitTracing(traces.get_tracer("paxq.node"), 2)
    tracing.replicating(7, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    records = [AcceptRecord(7, Ballot(1, 0), (b"a",)), AcceptRecord(7, Ballot(2, 1), (b"b",))]
    started = tracing.writing(records)
    assert started == [7]
    tracing.persisted(started)
    tracing.applied(7)
    assert [s.name for s in exporter.get_finished_spans()] == ["paxq.replicate"]


def test_a_slot_chosen_by_its_own_write_has_persist_and_quorum_stages_ending_together() -> None:
    """One node: its accept is a majority, so the quorum is reached when it is persisted."""
    from paxq.broker.node.tracing import CommitTracing
    from paxq.broker.paxos import AcceptRecord, Ballot, CommitRecord

    traces, exporter = provider()
    tracing = CommitTracing(traces.get_tracer("paxq.node"), 0, root_sample=1.0)
    assert tracing.received(b"cmd", None, "publish")
    records: list = [AcceptRecord(0, Ballot(1, 0), (b"cmd",))]
    tracing.persisted(tracing.writing([*records, CommitRecord(0)]))
    tracing.applying(0)
    tracing.applied(0)
    tracing.replying(b"cmd", "ok").end()
    names = [s.name for s in exporter.get_finished_spans()]
    stages = ["paxq.batch", "paxq.persist", "paxq.quorum", "paxq.apply", "paxq.slot"]
    assert sorted(names) == sorted([*stages, "paxq.reply", "paxq.receive"])
    assert not tracing.slots and not tracing.traced


@pytest.mark.parametrize(("tracing", "sample"), [("jaeger", "0.1"), ("otlp", "1.5")])
def test_a_node_refuses_an_unknown_exporter_or_sample(
    tmp_path: Path, tracing: str, sample: str
) -> None:
    from paxq.ops.config import ConfigError, load

    flags = {"id": 0, "data": str(tmp_path), "peers": "0=127.0.0.1:1", "clients": "0=127.0.0.1:2"}
    assert load(flags, environ={}).tracing == "none"
    with pytest.raises(ConfigError):
        load({**flags, "tracing": tracing, "trace_sample": float(sample)}, environ={})
