"""Metrics through OpenTelemetry and the Prometheus scrape endpoint of a real node."""

from __future__ import annotations

import re
from pathlib import Path

import trio
from test_client_port import serving
from test_node import free_addresses, leader_of

from paxq.broker.node.metrics import NodeMetrics, watch_node
from paxq.broker.node.scrape import ScrapeEndpoint
from paxq.client import Client

LIMIT_S = 60
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


async def get(address: tuple[str, int], request: bytes) -> tuple[int, str]:
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some(1 << 16):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def samples(text: str) -> dict[str, float]:
    """'name{labels}' -> value, checking every line is a comment or a valid sample."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


def test_the_text_format_of_counters_gauges_and_histograms() -> None:
    metrics = NodeMetrics("c", 3)
    metrics.commit_latency.record(3.0)
    metrics.commit_latency.record(700.0)
    metrics.observe("paxq.things", "{thing}", "things", lambda: [({"topic": 'a"b'}, 2)])
    metrics.count("paxq.done", "{thing}", "done", lambda: 5)
    text = metrics.prometheus_text()
    found = samples(text)
    assert "# TYPE paxq_commit_latency_milliseconds histogram" in text
    assert found['paxq_commit_latency_milliseconds_bucket{le="5",node="3"}'] == 1
    assert found['paxq_commit_latency_milliseconds_bucket{le="+Inf",node="3"}'] == 2
    assert found['paxq_commit_latency_milliseconds_count{node="3"}'] == 2
    assert found['paxq_commit_latency_milliseconds_sum{node="3"}'] == 703
    assert found['paxq_things{node="3",topic="a\\"b"}'] == 2
    assert "# TYPE paxq_done counter" in text and found['paxq_done_total{node="3"}'] == 5


async def test_a_node_serves_its_commit_path_and_queue_metrics(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT_S):
        async with serving(tmp_path, 3, metrics=True) as (nodes, clients), trio.open_nursery() as n:
            leader = await leader_of(nodes)
            watch_node(leader.metrics, leader)
            [address] = (await free_addresses(1)).values()
            endpoint = ScrapeEndpoint(address, leader.metrics.prometheus_text)
            await n.start(endpoint.serve)
            async with Client([f"{h}:{p}" for h, p in clients.values()]) as client:
                await client.create_queue("jobs", max_deliveries=1)
                await client.publish_many("jobs", [b"a", b"b", b"c"])
                held = await client.claim("jobs", max=2, lease_s=0.2)
                assert len(held) == 2
                while (await client.describe("jobs"))["subscriptions"][""]["dead_lettered"] < 2:
                    await trio.sleep(0.05)  # both leases run out: max_deliveries 1 -> DLQ
            status, text = await get(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status == 200
            found = samples(text)
            node = f'node="{leader.id}"'
            # create, publish, claim: three commands answered through the log
            assert found[f"paxq_commit_latency_milliseconds_count{{{node}}}"] == 3
            assert found[f"paxq_fsync_latency_milliseconds_count{{{node}}}"] >= 3
            assert found[f'paxq_batch_size_bucket{{le="+Inf",{node}}}'] >= 3
            assert found[f"paxq_elections_won_total{{{node}}}"] >= 1
            assert found[f"paxq_leader{{{node}}}"] == 1
            assert f"paxq_pipeline_depth{{{node}}}" in found
            assert f"paxq_replica_lag{{{node}}}" in found
            assert found[f"paxq_lease_expiries_total{{{node}}}"] == 2
            sub = f'{node},subscription="",topic="jobs"'
            assert found[f"paxq_subscription_depth{{{sub}}}"] == 1
            assert found[f"paxq_subscription_in_flight{{{sub}}}"] == 0
            assert found[f"paxq_subscription_dead_lettered{{{sub}}}"] == 2
            assert found[f'paxq_topic_messages{{{node},topic="jobs.dlq"}}'] == 2
            # Anything else is refused, and the endpoint goes on serving.
            assert (await get(address, b"GET /other HTTP/1.1\r\n\r\n"))[0] == 404
            assert (await get(address, b"nonsense\r\n\r\n"))[0] == 400
            assert (await get(address, b"GET /metrics HTTP/1.1\r\n\r\n"))[0] == 200
            n.cancel_scope.cancel()
