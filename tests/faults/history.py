"""The checker of the fault suite: what a run of producers, workers and subscribers recorded
against a real cluster, and every anomaly in it.

The runner records what each client saw (wall-clock seconds, `time.time()`: lease deadlines
are the cluster's stamped wall-clock time) and, at the end, reads every topic's whole log from
a healthy node. A queue keeps a message only until it is acked, so its log is what consumers
were delivered, offset by offset (`History.queues`). `check(history)` returns the anomalies
found, as `Anomaly(kind, detail)`; a clean run returns none. The kinds:

- lost: a publish acknowledged with an offset is not at that offset in the final log;
- unexpected: the log holds a body no producer ever sent;
- duplicated: one body stands at two offsets;
- misplaced: a producer was told an offset that holds another body;
- inconsistent: one offset of a queue delivered with two bodies;
- double acked: one message acknowledged (ack answered ok) twice;
- unconsumed: an offset of a queue or subscription that must be consumed by the end
  (`History.consume_to`) was never acked;
- lease overlap: two holders of one message trusted their leases at once (each from when
  it had it until its last lease deadline less the trust margin, or until it acked, nacked
  or gave it up);
- subscriber: a subscriber's deliveries skip an offset, repeat one, or carry a body other
  than the log's there;
- diverged: a node's own log is not a prefix of the longest;
- stall: the longest stretch without an acknowledged publish while a majority was connected
  is longer than the bound (reported with its length, so the note can state it).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Publish:
    topic: str
    body: bytes
    sent_s: float
    offset: int | None = None  # None: not acknowledged (unknown outcome, or never sent)
    acked_s: float | None = None


@dataclass(frozen=True)
class Claim:
    worker: str
    topic: str  # the queue, or "topic/subscription"
    offset: int
    token: int
    claimed_s: float  # when its holder had it: it trusts the lease from then
    deadline_s: float  # the last lease deadline its holder was told (claim or extension)
    ended_s: float | None = None  # acked, nacked or given up by its holder; None: never
    body: bytes | None = None


@dataclass(frozen=True)
class Ack:
    worker: str
    topic: str
    offset: int
    token: int
    ok: bool
    at_s: float


@dataclass
class History:
    publishes: list[Publish] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    #: subscriber -> topic and the (offset, body) it received, in order
    subscribers: dict[str, tuple[str, list[tuple[int, bytes]]]] = field(default_factory=dict)
    #: topic -> its whole log as read at the end
    logs: dict[str, list[bytes]] = field(default_factory=dict)
    #: topic -> node -> that node's own log of it at the end (each a prefix of `logs`)
    replica_logs: dict[str, dict[int, list[bytes]]] = field(default_factory=dict)
    #: queues: their logs are built from the bodies their claims carried
    queues: set[str] = field(default_factory=set)
    #: queue or "topic/subscription" -> every offset below this one must be acked by the end
    consume_to: dict[str, int] = field(default_factory=dict)
    #: (from, to) seconds during which a majority of nodes could reach each other
    majority_s: list[tuple[float, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Anomaly:
    kind: str
    detail: str


def check(history: History, *, trust_margin_s: float = 1.0, stall_s: float = 3.0) -> list[Anomaly]:
    """Every anomaly of `history`; `trust_margin_s`: how much of a lease its holder does not
    count on (twice the clock bound); `stall_s`: the longest stretch allowed without an
    acknowledged publish while a majority was connected."""
    found: list[Anomaly] = []
    sent = {(p.topic, p.body) for p in history.publishes}
    logs: dict[str, list[bytes | None]] = dict(history.logs)
    for queue in history.queues:
        log, found_here = _delivered_log(queue, history.claims)
        logs[queue] = log
        found += found_here
    for topic, log in logs.items():
        where: dict[bytes, int] = {}
        for offset, body in enumerate(log):
            if body is None:
                continue
            if (topic, body) not in sent:
                found.append(Anomaly("unexpected", f"{topic}@{offset} holds {body!r}"))
            if body in where:
                found.append(
                    Anomaly("duplicated", f"{body!r} at {topic}@{where[body]} and @{offset}")
                )
            where.setdefault(body, offset)
    for p in history.publishes:
        if p.offset is None:
            continue
        log = logs.get(p.topic, [])
        if p.offset >= len(log):
            found.append(Anomaly("lost", f"{p.body!r} acknowledged at {p.topic}@{p.offset}"))
        elif log[p.offset] != p.body:
            if p.body in log:
                found.append(
                    Anomaly(
                        "misplaced", f"{p.body!r} told {p.offset}, stands at {log.index(p.body)}"
                    )
                )
            else:
                found.append(Anomaly("lost", f"{p.body!r} acknowledged at {p.topic}@{p.offset}"))
    acked: dict[tuple[str, int], Ack] = {}
    for a in history.acks:
        if a.ok:
            first = acked.setdefault((a.topic, a.offset), a)
            if first is not a:
                found.append(
                    Anomaly(
                        "double acked",
                        f"{a.topic}@{a.offset} by {first.worker} (token {first.token}) and by "
                        f"{a.worker} (token {a.token})",
                    )
                )
    for key, end in history.consume_to.items():
        done = {a.offset for a in history.acks if a.ok and a.topic == key}
        missing = [offset for offset in range(end) if offset not in done]
        if missing:
            found.append(
                Anomaly("unconsumed", f"{key}: {len(missing)} offsets never acked: {missing[:10]}")
            )
    found += _lease_overlaps(history.claims, trust_margin_s)
    for name, (topic, received) in history.subscribers.items():
        found += _subscriber(name, received, logs.get(topic, []))
    for topic, replicas in history.replica_logs.items():
        longest = logs.get(topic, [])
        for node, log in sorted(replicas.items()):
            if log != longest[: len(log)]:
                first = next(
                    i for i, (a, b) in enumerate(zip(log, longest, strict=False)) if a != b
                )
                found.append(Anomaly("diverged", f"node {node}'s {topic}@{first} differs"))
    stall = longest_stall(history)
    if stall > stall_s:
        found.append(Anomaly("stall", f"{stall:.2f} s without an acknowledged publish"))
    return found


def _lease_overlaps(claims: list[Claim], margin_s: float) -> list[Anomaly]:
    found = []
    by_message: dict[tuple[str, int], list[tuple[float, float, Claim]]] = {}
    for c in claims:
        trusted_until = c.deadline_s - margin_s
        if c.ended_s is not None:
            trusted_until = min(trusted_until, c.ended_s)
        if trusted_until > c.claimed_s:  # a lease gone before its holder had it: no trust
            by_message.setdefault((c.topic, c.offset), []).append((c.claimed_s, trusted_until, c))
    for (topic, offset), held in by_message.items():
        held.sort(key=lambda h: h[0])
        for (_, earlier_until, earlier), (later_from, _, later) in itertools.pairwise(held):
            if later_from < earlier_until:
                found.append(
                    Anomaly(
                        "lease overlap",
                        f"{topic}@{offset}: {later.worker} had it at {later_from:.2f} s while "
                        f"{earlier.worker} trusted its lease until {earlier_until:.2f} s",
                    )
                )
    return found


def _delivered_log(queue: str, claims: list[Claim]) -> tuple[list[bytes | None], list[Anomaly]]:
    bodies: dict[int, bytes] = {}
    found = []
    for c in claims:
        if c.topic != queue or c.body is None:
            continue
        known = bodies.setdefault(c.offset, c.body)
        if known != c.body:
            found.append(
                Anomaly("inconsistent", f"{queue}@{c.offset} delivered as {known!r} and {c.body!r}")
            )
    log: list[bytes | None] = [None] * (max(bodies, default=-1) + 1)
    for offset, body in bodies.items():
        log[offset] = body
    return log, found


def _subscriber(
    name: str, received: list[tuple[int, bytes]], log: list[bytes | None]
) -> list[Anomaly]:
    found = []
    for (before, _), (offset, _) in itertools.pairwise(received):
        if offset != before + 1:
            what = "repeated" if offset <= before else "skipped to"
            found.append(Anomaly("subscriber", f"{name} {what} {offset} after {before}"))
    for offset, body in received:
        if offset >= len(log) or log[offset] != body:
            found.append(Anomaly("subscriber", f"{name} got {body!r} at {offset}, not the log's"))
    return found


def longest_stall(history: History) -> float:
    """The longest stretch, within the times a majority was connected, without an
    acknowledged publish."""
    start, end = stall_window(history)
    return end - start


def stall_window(history: History) -> tuple[float, float]:
    """Where the longest stall begins and ends."""
    acks = sorted(p.acked_s for p in history.publishes if p.acked_s is not None)
    longest = (0.0, 0.0)
    for start, end in history.majority_s:
        marks = [start, *[t for t in acks if start < t < end], end]
        for a, b in itertools.pairwise(marks):
            if b - a > longest[1] - longest[0]:
                longest = (a, b)
    return longest
