"""One publish, one connected trace across real processes: a client with a console span file
and three `paxq node --tracing console` processes, whose logs `paxq traces` reads."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import trio
from processes import Cluster

from paxq.client import Client
from paxq.ops.span_files import SpanRecord, read, traces
from paxq.ops.tracing import tracer_provider

LIMIT_S = 90


def _walk(spans: list[SpanRecord]) -> list[SpanRecord]:
    out = []
    for span in spans:
        out.append(span)
        out.extend(_walk(span.children))
    return out


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
        # The nodes write each span as it ends; the followers' and the slot's end around
        # the answer: wait until the whole trace is in their logs.
        while True:
            found = traces(read([client_spans, *logs]))
            [(trace_id, roots)] = [
                (t, r) for t, r in found.items() if r[0].name == "publish traced"
            ] or [(None, [])]
            spans = _walk(roots)
            names = [s.name for s in spans]
            if names.count("paxq.replicate") == 2 and "paxq.slot" in names:
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
    for name in ("paxq.persist", "paxq.quorum", "paxq.commit", "paxq.apply"):
        [span] = by_name[name]
        assert span.parent_id == slot.span_id
        stage[name] = span
    replicas = by_name["paxq.replicate"]
    assert sorted(r.service for r in replicas) == sorted(
        f"paxq node {n}" for n in range(3) if n != leader
    )
    for replica in replicas:
        assert replica.parent_id == slot.span_id
        assert replica.attributes["paxq.slot"] == slot.attributes["paxq.slot"]
    # In order (to the microsecond the console exporter keeps, across three processes).
    names = ("paxq.batch", "paxq.persist", "paxq.quorum", "paxq.commit", "paxq.apply")
    order = [stage[n] for n in names]
    for earlier, later in itertools.pairwise(order):
        assert earlier.end_us <= later.start_us, (earlier.name, later.name)
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
    assert sum("paxq.replicate" in line for line in lines) == 2
