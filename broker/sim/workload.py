"""What the simulated clients ask of the machine: a producer, consumer and admin mix on one
queue ("q"), one topic ("t") with two subscriptions, and their dead-letter queues.

Consumers ack, nack (with and without a delay), extend, sit on a lease past its deadline and
then ack anyway (a slow worker: the machine must refuse it), or forget what they hold (a
worker that dies). Producers are idempotent: a publish whose outcome is unknown is sent again
as a new command with the same producer sequence; so is an ack, nack or extend that carries
one (half of them do, as the client library's do).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from random import Random

import cbor2

QUEUE, TOPIC = "q", "t"
SUBSCRIPTIONS = ("s1", "s2")
KEYS = (None,) * 8 + tuple(b"k%d" % i for i in range(16))


@dataclass(frozen=True)
class Workload:
    max_deliveries: int
    key_ordered: bool
    lease_ms: tuple[int, int]

    @classmethod
    def from_rng(cls, rng: Random) -> Workload:
        return cls(
            max_deliveries=rng.choice((1, 2, 3, 5)),
            key_ordered=rng.random() < 0.5,
            lease_ms=rng.choice(((20, 100), (50, 300), (200, 1000))),
        )

    def limits(self) -> dict[tuple[str, str], int]:
        """Each reader's max_deliveries, for the oracle (dead-letter queues: unlimited)."""
        out = {(QUEUE, ""): self.max_deliveries}
        for sub in SUBSCRIPTIONS:
            out[TOPIC, sub] = self.max_deliveries
        return out

    def readers(self) -> dict[str, list[str]]:
        return {QUEUE: [""], TOPIC: list(SUBSCRIPTIONS)}

    def dead_letter_topics(self) -> list[str]:
        return [f"{QUEUE}.dlq"] + [f"{TOPIC}.{sub}.dlq" for sub in SUBSCRIPTIONS]

    def setup(self) -> list[tuple[str, dict]]:
        options = {
            "max_deliveries": self.max_deliveries,
            "key_ordered": self.key_ordered,
            "backoff_base_ms": 5,
            "backoff_max_ms": 80,
        }
        out = [
            ("create", {"topic": QUEUE, "kind": "queue", **options}),
            ("create", {"topic": TOPIC}),
        ]
        for sub in SUBSCRIPTIONS:
            out.append(
                ("subscribe", {"topic": TOPIC, "subscription": sub, "start": "earliest", **options})
            )
        return out


@dataclass
class Consumer:
    """One simulated client's application state."""

    client: int
    setup: list[tuple[str, dict]]
    produced: int = 0
    #: leases it holds: (topic, subscription or None, offset, token, deadline)
    held: list[tuple[str, str | None, int, int, int]] = field(default_factory=list)
    #: sequenced commands whose outcome is unknown, to send again
    retry: list[tuple[str, dict]] = field(default_factory=list)
    settles: int = 0  # the sequence of its sequenced acks, nacks and extends
    #: message ids it has published, some of which it publishes again (a producer restarted)
    message_ids: list[str] = field(default_factory=list)
    #: sequences of settles it sent again after their answer, as if that had been lost
    resent: set[int] = field(default_factory=set)

    def next(self, rng: Random, workload: Workload, draining: bool) -> tuple[str, dict]:
        if self.setup:
            return self.setup.pop(0)
        if draining:
            return self._drain(rng)
        if self.retry:
            return self.retry.pop(0)
        r = rng.random()
        if r < 0.25:
            return "publish", self._message(rng, QUEUE)
        if r < 0.38:
            return "publish", self._message(rng, TOPIC)
        if r < 0.55:
            return "claim", self._claim(rng, workload, QUEUE, None)
        if r < 0.65:
            return "claim", self._claim(rng, workload, TOPIC, rng.choice(SUBSCRIPTIONS))
        if r < 0.68:
            topic = rng.choice(workload.dead_letter_topics())
            return "claim", self._claim(rng, workload, topic, None)
        if r < 0.97 and self.held:
            return self._settle(rng, workload)
        if self.held and rng.random() < 0.3:
            self.held.clear()  # the worker dies: its leases must expire and come back
        return "publish", self._message(rng, QUEUE)

    def _drain(self, rng: Random) -> tuple[str, dict]:
        if self.held:  # everything held of one reader, in one ack
            topic, sub = self.held[-1][:2]
            mine = [h for h in self.held if h[:2] == (topic, sub)]
            self.held = [h for h in self.held if h[:2] != (topic, sub)]
            return "ack", _lease_args(topic, sub, [[h[2], h[3]] for h in mine])
        readers = [(QUEUE, None)] + [(TOPIC, sub) for sub in SUBSCRIPTIONS]
        topic, sub = rng.choice(readers)
        args = {"topic": topic, "max": 50, "lease_ms": 2000}
        if sub is not None:
            args["subscription"] = sub
        return "claim", args

    def _message(self, rng: Random, topic: str) -> dict:
        self.produced += 1
        body = b"c%d.%d" % (self.client, self.produced)
        message: dict = {"body": body}
        key = rng.choice(KEYS)
        if key is not None:
            message["key"] = key
        if rng.random() < 0.1:
            message["delay_ms"] = rng.randrange(1, 100)
        if rng.random() < 0.3:  # with an id; now and then one it used before, as a new run would
            if self.message_ids and rng.random() < 0.3:
                message["id"] = rng.choice(self.message_ids[-20:])
            else:
                message["id"] = f"m{self.client}.{self.produced}"
                self.message_ids.append(message["id"])
        return {
            "topic": topic,
            "messages": [message],
            "producer": f"p{self.client}",
            "seq": self.produced,
        }

    def _claim(self, rng: Random, workload: Workload, topic: str, sub: str | None) -> dict:
        args = {
            "topic": topic,
            "max": rng.randint(1, 3),
            "lease_ms": rng.randint(*workload.lease_ms),
            "consumer": f"c{self.client}",
        }
        if sub is not None:
            args["subscription"] = sub
        return args

    def _settle(self, rng: Random, workload: Workload) -> tuple[str, dict]:
        op, args = self._settle_op(rng, workload)
        if rng.random() < 0.5:
            self.settles += 1
            args["producer"] = f"w{self.client}"
            args["seq"] = self.settles
        return op, args

    def _settle_op(self, rng: Random, workload: Workload) -> tuple[str, dict]:
        index = rng.randrange(len(self.held))
        topic, sub, offset, token, _deadline = self.held[index]
        leases = [[offset, token]]
        r = rng.random()
        if r < 0.6:
            del self.held[index]
            return "ack", _lease_args(topic, sub, leases)
        if r < 0.72:
            del self.held[index]
            args = _lease_args(topic, sub, leases)
            if rng.random() < 0.5:
                args["delay_ms"] = rng.randrange(0, 50)
            return "nack", args
        if r < 0.78:  # handed back unprocessed: uncounted
            del self.held[index]
            return "release", _lease_args(topic, sub, leases)
        if r < 0.8:  # no retry can mend it: dead-lettered at once
            del self.held[index]
            args = _lease_args(topic, sub, leases)
            if rng.random() < 0.5:
                args["error"] = "ValueError: malformed"
            return "reject", args
        args = _lease_args(topic, sub, leases)
        args["lease_ms"] = rng.randint(*workload.lease_ms)
        return "extend", args

    def on_result(self, op: str, args: dict, result: object) -> None:
        """The command was applied; `result` is None when the reply carried none."""
        if op == "claim" and isinstance(result, dict):
            sub = args.get("subscription")
            deadline = result["deadline_ms"]
            for offset, token in zip(result["offsets"], result["tokens"], strict=True):
                self.held.append((args["topic"], sub, offset, token, deadline))
        elif op != "publish" and args.get("seq", 1) % 16 == 0 and args["seq"] not in self.resent:
            # Sent again (once) as if its answer was lost: a sequenced settle must be answered
            # with its first result, never applied twice (lost answers alone make this rare).
            self.resent.add(args["seq"])
            self.retry.append((op, args))

    def on_unknown(self, op: str, args: dict) -> None:
        if "seq" in args:
            self.retry.append((op, args))
        elif op in ("create", "subscribe"):
            self.setup.append((op, args))


def _lease_args(topic: str, sub: str | None, leases: list) -> dict:
    args: dict = {"topic": topic, "leases": leases}
    if sub is not None:
        args["subscription"] = sub
    return args


def encode(client: int, seq: int, op: str, args: dict) -> bytes:
    return struct.pack(">4sIQ", b"cli\0", client, seq) + cbor2.dumps([op, args])


def decode(command: bytes) -> tuple[str, dict]:
    op, args = cbor2.loads(command[16:])
    return op, args
