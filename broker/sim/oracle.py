"""The queue checker: follows the chosen log and each command's result (as the first replica
to apply it computed them; every other replica must compute the same) and holds the machine to
its promises.

- **total order**: a topic's offsets are handed out once each, without gaps, and every
  delivery or read of an offset carries the body published there;
- **lease exclusivity**: at any stamped time a message has at most one unexpired lease;
- **fencing**: ack, nack and extend succeed only with the current, unexpired token, and are
  refused (LEASE_LOST) only when the token really is stale;
- **no redelivery after an ack** or a reject, deliveries counted one by one, never above
  `max_deliveries`; a rejected message dead-lettered at once, with the deliveries it had;
- **deduplication**: a message whose id the topic stored within the window is not stored
  again and is answered with the first one's offset; any other is stored;
- **idempotent producers**: a retried (producer, seq) gets the original result (publishes,
  and the acks, nacks and extends that carry one), never a second effect nor a refusal;
- at the end (`check_drained`): every message published to a queue or subscription was
  acknowledged or dead-lettered, and each dead letter after exactly `max_deliveries`.
"""

from __future__ import annotations

from collections import OrderedDict

import cbor2

from paxq.client.wire import ErrorCode

from ..machine import Limits, MachineError, claimed
from ..machine.machine import HEADER_BYTES
from .checkers import Violation

Key = tuple[str, str, int]  # (topic, subscription, offset)


def encode_results(results: list[object]) -> bytes:
    """Results in a form two replicas' can be compared by: without what only the proposing
    leader's carry."""
    plain = [
        ["error", int(r.code), r.message, r.detail]
        if isinstance(r, MachineError)
        else _without_payloads(r)
        for r in results
    ]
    return cbor2.dumps(plain)


def _without_payloads(result: object) -> object:
    """Only an answered claim carries payloads: a follower's results leave them out."""
    if type(result) is not dict or "payloads" not in result:
        return result
    return {k: v for k, v in result.items() if k != "payloads"}


class QueueOracle:
    def __init__(
        self, max_deliveries: dict[tuple[str, str], int], limits: Limits | None = None
    ) -> None:
        #: the machines' message-id window and bound
        self.limits = limits or Limits()
        #: (topic, subscription) -> its max_deliveries (0: unlimited); "" is a queue's own
        self.max_deliveries = max_deliveries
        self.now = 0
        self.content: dict[str, dict[int, bytes]] = {}
        self.next_offset: dict[str, int] = {}
        self.leases: dict[Key, tuple[int, int]] = {}  # -> (token, deadline)
        self.counts: dict[Key, int] = {}
        self.acked: set[Key] = set()
        self.dead: dict[Key, int] = {}  # -> deliveries when dead-lettered (from the DLQ)
        #: -> deliveries when rejected: dead at once, its copy to be seen in the dead letters
        self.rejected: dict[Key, int] = {}
        self.producers: dict[tuple[str, int], dict] = {}
        #: per topic, the message ids stored and not yet forgotten, oldest first:
        #: id -> (offset, stamp)
        self.message_ids: dict[str, OrderedDict[str, tuple[int, int]]] = {}
        self.commands = 0
        self.deliveries = 0
        #: (topic, subscription) -> the offset it started at, once created
        self.starts: dict[tuple[str, str], int] = {}

    def _create(self, slot: int, args: dict, result: dict) -> None:
        if result["kind"] == "queue":
            self.starts[args["topic"], ""] = 0

    def _subscribe(self, slot: int, args: dict, result: dict) -> None:
        self.starts[args["topic"], args["subscription"]] = result["offset"]

    def _expected(self, readers: dict[str, list[str]]):
        """(topic, subscription, offset) of every message a reader that exists must settle."""
        for topic, subs in readers.items():
            for sub in subs:
                start = self.starts.get((topic, sub))
                if start is None:
                    continue
                for offset in self.content.get(topic, {}):
                    if offset >= start:
                        yield topic, sub, offset

    # ------------------------------------------------------------------------ the log

    def on_command(self, slot: int, command: bytes, result: object) -> None:
        self.commands += 1
        op, args = cbor2.loads(command[HEADER_BYTES:])
        if op == "time":
            self.now = max(self.now, args["ms"])
            return
        if isinstance(result, MachineError):
            producer = args.get("producer")
            key = (args.get("topic"), producer, args.get("seq"))
            resent = producer is not None and key in self.producers
            # SEQUENCE_TOO_OLD is the window's answer to a resend that came too late.
            if resent and result.code != ErrorCode.SEQUENCE_TOO_OLD:
                raise Violation(
                    "idempotence",
                    f"slot {slot}: a resend of {op} {(args['topic'], producer, args['seq'])}, "
                    f"applied before, was refused ({result!r}) instead of answered",
                )
            if result.code == ErrorCode.LEASE_LOST:
                self._check_refusal(slot, args, result)
            return
        handler = getattr(self, "_" + op, None)
        if handler is not None:
            handler(slot, args, result)

    def on_answer(self, slot: int, command: bytes, result: object) -> None:
        """A leader answers a command it proposed: a claim's deliveries carry the bodies
        published at their offsets (the results `on_command` saw may be a follower's, which
        carry none)."""
        op, args = cbor2.loads(command[HEADER_BYTES:])
        if op != "claim" or isinstance(result, MachineError):
            return
        topic = args["topic"]
        for m in claimed(result):
            where = f"slot {slot}: {topic}@{m['offset']}"
            if "body" not in m:
                raise Violation("total order", f"{where} answered without its body")
            known = self.content.get(topic, {}).get(m["offset"])
            if known is not None and known != m["body"]:
                raise Violation("total order", f"{where} answered {m['body']!r}, not {known!r}")

    def _sub(self, args: dict) -> str:
        return args.get("subscription") or ""

    def _once(self, slot: int, args: dict, result: dict) -> bool:
        """Checks a sequenced command's result: True for a resend answered with the first
        one's result (it changed nothing)."""
        producer = args.get("producer")
        if producer is None:
            return False
        key = (args["topic"], producer, args["seq"])
        plain = {k: v for k, v in result.items() if k != "duplicate"}
        earlier = self.producers.get(key)
        if result.get("duplicate"):
            if earlier != plain:
                raise Violation(
                    "idempotence",
                    f"slot {slot}: retry of {key} answered {plain}, the original was {earlier}",
                )
            return True
        if earlier is not None:
            raise Violation(
                "idempotence", f"slot {slot}: {key} applied twice ({earlier}, then {plain})"
            )
        self.producers[key] = plain
        return False

    def _publish(self, slot: int, args: dict, result: dict) -> None:
        if self._once(slot, args, result):
            return
        topic = args["topic"]
        first, count = result["offset"], result["count"]
        messages = args["messages"]
        duplicates = dict(result.get("duplicates", ()))
        expected = self.next_offset.get(topic, 0)
        if first != expected or count != len(messages) - len(duplicates):
            raise Violation(
                "total order",
                f"slot {slot}: {topic} gave offsets {first}+{count} and {len(duplicates)} "
                f"duplicates, expected {expected}+{len(messages)} in all",
            )
        content = self.content.setdefault(topic, {})
        known = self.message_ids.setdefault(topic, OrderedDict())
        window = self.limits.dedup_window_ms
        offset = first
        taken = False
        for i, message in enumerate(messages):
            message_id = message.get("id")
            earlier = known.get(message_id) if message_id is not None else None
            live = earlier is not None and self.now - earlier[1] < window
            where = f"slot {slot}: {topic} message {i} (id {message_id!r})"
            if i in duplicates:
                if not live or duplicates[i] != earlier[0]:
                    raise Violation(
                        "deduplication",
                        f"{where} answered as a duplicate of offset {duplicates[i]}; "
                        f"the id was stored as {earlier} and it is {self.now}",
                    )
                continue
            if live:
                raise Violation(
                    "deduplication", f"{where} stored again at {offset}; it is at {earlier}"
                )
            content[offset] = message["body"]
            if message_id is not None:
                known.pop(message_id, None)
                known[message_id] = (offset, self.now)
                taken = True
            offset += 1
        if offset != first + count:
            raise Violation(
                "total order", f"slot {slot}: {topic} stored {offset - first}, said {count}"
            )
        # Forgotten as the machine must: by number, and by age from the oldest.
        while (
            taken
            and known
            and (
                len(known) > self.limits.dedup_ids_max
                or next(iter(known.values()))[1] <= self.now - window
            )
        ):
            known.popitem(last=False)
        self.next_offset[topic] = first + count

    def _claim(self, slot: int, args: dict, result: dict) -> None:
        topic, sub = args["topic"], self._sub(args)
        now = self.now
        limit = self.max_deliveries.get((topic, sub), 0)
        lease_ms = args.get("lease_ms", 30_000)
        for m in claimed(result):
            self.deliveries += 1
            offset = m["offset"]
            key = (topic, sub, offset)
            where = f"slot {slot}: {topic}/{sub or '(queue)'}@{offset}"
            known = self.content.get(topic, {}).get(offset)
            if known is None and not topic.endswith(".dlq"):
                raise Violation("total order", f"{where} delivered, but never published")
            if key in self.acked:
                raise Violation("redelivery", f"{where} delivered again after its ack")
            if key in self.dead or key in self.rejected:
                raise Violation("redelivery", f"{where} delivered again after dead-lettering")
            held = self.leases.get(key)
            if held is not None and held[1] > now:
                raise Violation(
                    "lease exclusivity",
                    f"{where} leased with token {m['token']} at {now} while token {held[0]} "
                    f"holds it until {held[1]}",
                )
            count = self.counts.get(key, 0) + 1
            if m["deliveries"] != count:
                raise Violation(
                    "deliveries", f"{where} says delivery {m['deliveries']}, not {count}"
                )
            if limit and count > limit:
                raise Violation("dead letter", f"{where} delivered {count} times, limit {limit}")
            if m["deadline_ms"] != now + lease_ms:
                raise Violation(
                    "time", f"{where} leased until {m['deadline_ms']}, not {now + lease_ms}"
                )
            self.counts[key] = count
            self.leases[key] = (m["token"], m["deadline_ms"])
            death = (m.get("headers") or {}).get("x-death-deliveries")
            if death is not None:
                self.on_dead_letter(m["headers"], where)

    def on_dead_letter(self, headers: dict, where: str) -> None:
        origin = (
            headers["x-death-topic"],
            headers["x-death-subscription"],
            headers["x-death-offset"],
        )
        deliveries = headers["x-death-deliveries"]
        rejected = self.rejected.get(origin)
        if (headers["x-death-reason"] == "rejected") != (rejected is not None):
            raise Violation(
                "dead letter",
                f"{where}: {origin} dead-lettered as {headers['x-death-reason']!r}; "
                f"{'it was' if rejected is not None else 'it was not'} rejected",
            )
        limit = self.max_deliveries.get(origin[:2], 0) if rejected is None else rejected
        if deliveries != limit or (rejected is None and self.counts.get(origin) != limit):
            raise Violation(
                "dead letter",
                f"{where}: {origin} dead-lettered after {deliveries} deliveries "
                f"({self.counts.get(origin)} seen), the limit is {limit}",
            )
        if origin in self.acked:
            raise Violation("dead letter", f"{where}: {origin} was acknowledged")
        self.dead[origin] = deliveries

    def _held(self, slot: int, op: str, args: dict) -> list[Key]:
        topic, sub = args["topic"], self._sub(args)
        keys = []
        for offset, token in args["leases"]:
            key = (topic, sub, offset)
            held = self.leases.get(key)
            if held is None or held[0] != token or held[1] <= self.now:
                raise Violation(
                    "fencing",
                    f"slot {slot}: {op} of {topic}/{sub or '(queue)'}@{offset} with token "
                    f"{token} accepted at {self.now}; the lease is {held}",
                )
            keys.append(key)
        return keys

    def _ack(self, slot: int, args: dict, result: dict) -> None:
        if self._once(slot, args, result):
            return
        for key in self._held(slot, "ack", args):
            del self.leases[key]
            self.acked.add(key)

    def _nack(self, slot: int, args: dict, result: dict) -> None:
        if self._once(slot, args, result):
            return
        for key in self._held(slot, "nack", args):
            del self.leases[key]

    def _release(self, slot: int, args: dict, result: dict) -> None:
        if self._once(slot, args, result):
            return
        for key in self._held(slot, "release", args):
            del self.leases[key]
            self.counts[key] -= 1  # that delivery does not count: the next has its number

    def _reject(self, slot: int, args: dict, result: dict) -> None:
        if self._once(slot, args, result):
            return
        for key in self._held(slot, "reject", args):
            del self.leases[key]
            self.rejected[key] = self.counts[key]
            if key[0].endswith(".dlq"):  # a dead-letter queue's own: no copy goes anywhere
                self.dead[key] = self.counts[key]

    def _extend(self, slot: int, args: dict, result: dict) -> None:
        if self._once(slot, args, result):
            return
        for key in self._held(slot, "extend", args):
            self.leases[key] = (self.leases[key][0], result["deadline_ms"])

    def _check_refusal(self, slot: int, args: dict, error: MachineError) -> None:
        topic, sub = args["topic"], self._sub(args)
        tokens = dict((offset, token) for offset, token in args["leases"])
        for offset in error.detail:
            held = self.leases.get((topic, sub, offset))
            if held is not None and held[0] == tokens[offset] and held[1] > self.now:
                raise Violation(
                    "fencing", f"slot {slot}: a valid lease on {topic}@{offset} refused as lost"
                )

    # ---------------------------------------------------------------------------- end

    def unsettled(self, readers: dict[str, list[str]]) -> int:
        """Messages of the readers neither acknowledged nor known dead-lettered yet."""
        return sum(
            1 for key in self._expected(readers) if key not in self.acked and key not in self.dead
        )

    def check_drained(self, readers: dict[str, list[str]]) -> None:
        """After the drain: every message of each reader (topic -> subscriptions) was
        acknowledged or dead-lettered (dead letters learned from the final state too)."""
        for key in self._expected(readers):
            if key not in self.acked and key not in self.dead:
                topic, sub, offset = key
                raise Violation(
                    "at-least-once",
                    f"{topic}/{sub or '(queue)'}@{offset} was neither acknowledged nor "
                    f"dead-lettered (delivered {self.counts.get(key, 0)} times)",
                )
