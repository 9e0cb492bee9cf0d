"""A node's metrics, through OpenTelemetry, and their Prometheus text exposition.

Each node has its own MeterProvider (not the global one: several nodes may share a process in
tests) read by an in-memory reader; `prometheus_text` renders what it collects in the
Prometheus text format (0.0.4) for the scrape endpoint (`broker/node/scrape.py`).

Recorded on the commit path: commit latency (a client command from arrival to answer), fsync
latency (one journal write), batch size (commands per applied slot). Observed when scraped:
pipeline depth, elections, replica lag, and per topic and subscription depth, in flight,
delayed, dead-lettered and lease expiries.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    MetricsData,
    Sum,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

#: milliseconds: a commit is a few ms on a LAN with synced disks, seconds in trouble
LATENCY_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: per-topic series stop at this many topics (a scrape must stay bounded)
TOPICS_MAX = 1000


class NodeMetrics:
    def __init__(self, cluster: str, node: int) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(
            metric_readers=[self.reader],
            resource=Resource.create({"service.name": "paxq", "paxq.cluster": cluster}),
            views=[
                View(
                    instrument_name="paxq.*latency*",
                    aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_MS),
                ),
                View(
                    instrument_name="paxq.batch.size",
                    aggregation=ExplicitBucketHistogramAggregation(BATCH_BUCKETS),
                ),
            ],
        )
        self.node = node
        meter = self.provider.get_meter("paxq.node")
        self.commit_latency = meter.create_histogram(
            "paxq.commit.latency", unit="ms", description="client command: arrival to answer"
        )
        self.fsync_latency = meter.create_histogram(
            "paxq.fsync.latency", unit="ms", description="one synced journal write"
        )
        self.batch_size = meter.create_histogram(
            "paxq.batch.size", unit="{command}", description="commands per applied slot"
        )
        self.turn_duration = meter.create_histogram(
            "paxq.turn.duration",
            unit="ms",
            description="one turn of the node loop: inputs handled, effects carried out",
        )
        self._meter = meter

    def observe(self, name: str, unit: str, description: str, read: Callable[[], object]) -> None:
        """A gauge read when scraped: `read()` gives a number, or (attributes, number) pairs."""
        self._meter.create_observable_gauge(
            name, [_observations(read)], unit=unit, description=description
        )

    def count(self, name: str, unit: str, description: str, read: Callable[[], object]) -> None:
        """A counter read when scraped (a total that only grows), read as `observe` reads."""
        self._meter.create_observable_counter(
            name, [_observations(read)], unit=unit, description=description
        )

    def summary(self) -> dict:
        """Count and estimated p50/p99 (the upper bound of the bucket holding them, in ms) of
        the commit and fsync latency histograms, for `paxq status`."""
        out: dict = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    key = {"paxq.commit.latency": "commit_ms", "paxq.fsync.latency": "fsync_ms"}
                    if metric.name in key and metric.data.data_points:
                        point = metric.data.data_points[0]
                        bounds = (*point.explicit_bounds, math.inf)
                        out[key[metric.name]] = {
                            "count": point.count,
                            "p50": _quantile(bounds, point.bucket_counts, point.count, 0.5),
                            "p99": _quantile(bounds, point.bucket_counts, point.count, 0.99),
                        }
        return out

    def prometheus_text(self) -> str:
        return prometheus_text(self.reader.get_metrics_data(), {"node": str(self.node)})

    def shutdown(self) -> None:
        self.provider.shutdown()


def _observations(read: Callable[[], object]) -> Callable[[CallbackOptions], list]:
    def callback(options: CallbackOptions) -> list[Observation]:
        value = read()
        if isinstance(value, int | float):
            return [Observation(value)]
        return [Observation(v, attributes) for attributes, v in value]  # type: ignore[union-attr]

    return callback


def prometheus_text(data: MetricsData | None, constant: dict[str, str]) -> str:
    """The Prometheus text exposition of collected OpenTelemetry metrics."""
    lines: list[str] = []
    if data is None:
        return ""
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                name = _name(metric.name, metric.unit or "")
                point_data = metric.data
                if isinstance(point_data, Histogram):
                    kind = "histogram"
                elif isinstance(point_data, Sum) and point_data.is_monotonic:
                    kind = "counter"
                elif isinstance(point_data, Gauge | Sum):
                    kind = "gauge"
                else:
                    continue
                if metric.description:
                    lines.append(f"# HELP {name} {_escape_help(metric.description)}")
                lines.append(f"# TYPE {name} {kind}")
                for point in point_data.data_points:
                    labels = {**constant, **{k: str(v) for k, v in point.attributes.items()}}
                    if kind == "histogram":
                        running = 0
                        for bound, count in zip(
                            (*point.explicit_bounds, math.inf), point.bucket_counts, strict=True
                        ):
                            running += count
                            le = "+Inf" if bound == math.inf else _number(bound)
                            lines.append(f"{name}_bucket{_labels({**labels, 'le': le})} {running}")
                        lines.append(f"{name}_sum{_labels(labels)} {_number(point.sum)}")
                        lines.append(f"{name}_count{_labels(labels)} {point.count}")
                    elif kind == "counter":
                        lines.append(f"{name}_total{_labels(labels)} {_number(point.value)}")
                    else:
                        lines.append(f"{name}{_labels(labels)} {_number(point.value)}")
    return "\n".join(lines) + "\n"


def _quantile(bounds: tuple, counts: Iterable[int], total: int, q: float) -> float | None:
    if not total:
        return None
    running = 0
    for bound, count in zip(bounds, counts, strict=True):
        running += count
        if running >= q * total:
            return None if bound == math.inf else bound
    return None


_UNITS = {"ms": "_milliseconds", "By": "_bytes", "s": "_seconds"}


def _name(name: str, unit: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in name)
    suffix = _UNITS.get(unit, "")
    return out if out.endswith(suffix) else out + suffix


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{"".join(c if c.isalnum() else "_" for c in k)}="{_escape(v)}"'
        for k, v in sorted(labels.items())
    )
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def watch_node(metrics: NodeMetrics, node: object) -> None:
    """Register the gauges and counters read from a running node when scraped."""
    replica = node.replica  # type: ignore[attr-defined]

    def machine() -> object:
        return node.machine  # type: ignore[attr-defined]  # replaced when a snapshot lands

    metrics.observe(
        "paxq.pipeline.depth",
        "{slot}",
        "slots proposed by this leader and not yet chosen",
        lambda: replica.in_flight_slots,
    )
    metrics.observe(
        "paxq.replica.lag",
        "{slot}",
        "slots committed in the cluster that this node has not applied yet",
        lambda: max(0, replica.known_commit - core().applied),
    )
    metrics.observe(
        "paxq.leader",
        "1",
        "1 on the leader, 0 elsewhere",
        lambda: int(replica.leader_hint == metrics.node),
    )
    metrics.count(
        "paxq.elections.won",
        "{election}",
        "times this node became leader",
        lambda: node.core.elections_won,  # type: ignore[attr-defined]
    )
    metrics.count(
        "paxq.elections.started",
        "{election}",
        "times this node stood for leader",
        lambda: node.core.campaigns,  # type: ignore[attr-defined]
    )

    def core() -> object:
        return node.core  # type: ignore[attr-defined]

    metrics.observe(
        "paxq.clock.offset",
        "ms",
        "each peer's wall clock less this node's, from probe round trips",
        lambda: [
            ({"peer": str(peer)}, offset)
            for peer, offset in core().clocks.offsets(core().ticks).items()
        ],
    )
    metrics.observe(
        "paxq.clock.from_majority",
        "ms",
        "how far this node's clock is from a majority's; past clock_offset_ms_max it does not lead",
        lambda: core().clocks.from_majority_ms(core().ticks) or 0.0,
    )
    metrics.count(
        "paxq.lease.expiries",
        "{lease}",
        "leases that ran out (messages delivered again)",
        lambda: getattr(machine(), "lease_expiries", 0),
    )

    taken: dict[str, object] = {"at": -1.0, "stats": []}

    def all_stats() -> list[tuple[dict, dict]]:
        # One scrape reads five fields of each subscription: compute its stats once.
        now = time.monotonic()
        if now - taken["at"] > 0.5:  # type: ignore[operator]
            topics = getattr(machine(), "topics", {})
            stamp = getattr(machine(), "now_ms", 0)
            taken["stats"] = [
                ({"topic": topic.name, "subscription": name}, sub.stats(stamp))
                for topic in list(topics.values())[:TOPICS_MAX]
                for name, sub in topic.subs.items()
            ]
            taken["at"] = now
        return taken["stats"]  # type: ignore[return-value]

    def per_subscription(field: str) -> Callable[[], list[tuple[dict, int]]]:
        return lambda: [(labels, stats[field]) for labels, stats in all_stats()]

    for field, description in (
        ("depth", "messages not yet acked or dead-lettered"),
        ("in_flight", "messages leased out"),
        ("delayed", "messages waiting for their time (delay or backoff)"),
        ("dead_lettered", "messages moved to the dead letters"),
        ("oldest_unacked_age_ms", "age of the oldest message not yet done"),
    ):
        unit = "ms" if field.endswith("_ms") else "{message}"
        name = "paxq.subscription." + field.removesuffix("_ms")
        metrics.observe(name, unit, description, per_subscription(field))

    def per_topic() -> list[tuple[dict, int]]:
        topics = getattr(machine(), "topics", {})
        return [({"topic": t.name}, t.next - t.first) for t in list(topics.values())[:TOPICS_MAX]]

    metrics.observe("paxq.topic.messages", "{message}", "messages a topic retains", per_topic)
