"""Idempotent producers: the last few results per producer, so a retried publish is answered
with its original offsets instead of being appended again."""

from __future__ import annotations

from collections import OrderedDict

from paxq.client.wire import ErrorCode

from .errors import MachineError

#: a producer's sequence is per topic, as in Kafka: (topic id, producer id)
ProducerKey = tuple[int, str]


class Producers:
    """Per producer id and topic, the results of its last `window` sequence numbers. At most
    `producers_max` of them are remembered; the one unheard of longest is forgotten first."""

    def __init__(self, window: int, producers_max: int) -> None:
        self.window = window
        self.producers_max = producers_max
        self.known: OrderedDict[ProducerKey, dict[int, object]] = OrderedDict()

    def lookup(self, topic_id: int, producer: str, seq: int) -> object | None:
        """The stored result of (producer, seq) on the topic if it was applied; raises
        SEQUENCE_TOO_OLD for a sequence so far behind that its result may be forgotten."""
        results = self.known.get((topic_id, producer))
        if results is None:
            return None
        found = results.get(seq)
        if found is not None:
            return found
        if len(results) >= self.window and seq < min(results):
            raise MachineError(
                ErrorCode.SEQUENCE_TOO_OLD,
                f"producer {producer!r} sequence {seq} is older than its last {self.window}",
            )
        return None

    def record(self, topic_id: int, producer: str, seq: int, result: object) -> None:
        results = self.known.get((topic_id, producer))
        if results is None:
            results = self.known[topic_id, producer] = {}
            if len(self.known) > self.producers_max:
                self.known.popitem(last=False)
        else:
            self.known.move_to_end((topic_id, producer))
        results[seq] = result
        if len(results) > self.window:
            del results[min(results)]
