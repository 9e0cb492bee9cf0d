"""A hand-driven cluster for scenario tests: the test decides which message goes where and when.

Each replica is the real core; the harness plays a faithful runtime (persist, then send, then
apply) and keeps each replica's disk so a crash loses exactly what was not persisted.
"""

from __future__ import annotations

from collections.abc import Callable
from random import Random

from paxq.broker.paxos import Config, DurableState, Message, ProposeResult, Replica, Value

Envelope = tuple[int, int, Message]  # (from, to, message)


class Cluster:
    def __init__(
        self,
        size: int = 3,
        factory: Callable[..., Replica] = Replica,
        seed: int = 1,
        **limits: int,
    ) -> None:
        self.config = Config(nodes=tuple(range(size)), **limits)
        self.factory = factory
        self.rng = Random(seed)
        self.disks = [DurableState() for _ in range(size)]
        self.replicas: list[Replica | None] = [None] * size
        #: what each replica handed to its application, slot by slot
        self.applied: list[list[Value]] = [[] for _ in range(size)]
        self.in_flight: list[Envelope] = []
        self.dropped_commands: list[bytes] = []
        for node in range(size):
            self.start(node)

    # -- replicas ---------------------------------------------------------------------------

    def __getitem__(self, node: int) -> Replica:
        replica = self.replicas[node]
        assert replica is not None, f"node {node} is down"
        return replica

    def start(self, node: int) -> None:
        self.applied[node] = []
        disk = self.disks[node].copy()
        replica = self.factory(node, self.config, Random(self.rng.random()), disk)
        self.replicas[node] = replica
        self._drain(node)

    def crash(self, node: int) -> None:
        """Stop `node`; messages already sent stay in flight, messages to it will be lost."""
        self.replicas[node] = None

    def restart(self, node: int) -> None:
        self.crash(node)
        self.start(node)

    def _drain(self, node: int) -> None:
        replica = self.replicas[node]
        assert replica is not None
        while (ready := replica.ready()) is not None:
            # A synchronous disk: every record is durable before anything leaves.
            for record in ready.persist:
                self.disks[node].apply(record)
            replica.persisted(ready.persist)
            self.in_flight.extend((node, to, message) for to, message in ready.messages)
            self.in_flight.extend((node, to, message) for to, message in ready.after_persist)
            for slot, value in ready.committed:
                assert slot == len(self.applied[node]), "slots must be applied in order"
                self.applied[node].append(value)
            self.dropped_commands.extend(ready.dropped)

    # -- inputs -----------------------------------------------------------------------------

    def tick(self, node: int, times: int = 1) -> None:
        for _ in range(times):
            self[node].tick()
            self._drain(node)

    def campaign(self, node: int) -> None:
        self[node].campaign()
        self._drain(node)

    def inject(self, node: int, message: Message) -> None:
        """Hand `node` a message no replica of this cluster sent."""
        self[node].step(message)
        self._drain(node)

    def propose(self, node: int, *commands: bytes) -> None:
        for command in commands:
            assert self[node].propose(command) is ProposeResult.QUEUED
        self._drain(node)

    # -- the network ------------------------------------------------------------------------

    def deliver(
        self,
        where: Callable[[int, int, Message], bool] = lambda src, dst, m: True,
        *,
        keep: bool = False,
    ) -> int:
        """Deliver the in-flight messages `where` accepts (in order), once; return how many.

        Messages to a crashed node are lost; with `keep`, delivered messages also stay in
        flight (the network duplicates them).
        """
        batch = [env for env in self.in_flight if where(*env)]
        if not keep:
            self.in_flight = [env for env in self.in_flight if not where(*env)]
        for _src, dst, message in batch:
            if self.replicas[dst] is not None:
                self[dst].step(message)
                self._drain(dst)
        return len(batch)

    def drop(self, where: Callable[[int, int, Message], bool]) -> int:
        before = len(self.in_flight)
        self.in_flight = [env for env in self.in_flight if not where(*env)]
        return before - len(self.in_flight)

    def stabilize(
        self, where: Callable[[int, int, Message], bool] = lambda src, dst, m: True
    ) -> None:
        """Deliver until nothing `where` accepts is left in flight."""
        for _ in range(10_000):
            if not self.deliver(where):
                return
        raise AssertionError("the cluster did not stabilize")

    def elect(self, node: int) -> None:
        """Make `node` the leader over a quiet, fully connected network."""
        self.campaign(node)
        self.stabilize()
        assert self[node].role.name == "LEADER", self[node]

    def messages(self, kind: type | None = None) -> list[Envelope]:
        return [env for env in self.in_flight if kind is None or isinstance(env[2], kind)]


def between(*nodes: int) -> Callable[[int, int, Message], bool]:
    """Messages whose sender and receiver are both in `nodes`."""
    group = set(nodes)
    return lambda src, dst, m: src in group and dst in group


def of(kind: type) -> Callable[[int, int, Message], bool]:
    return lambda src, dst, m: isinstance(m, kind)


def to(*nodes: int) -> Callable[[int, int, Message], bool]:
    group = set(nodes)
    return lambda src, dst, m: dst in group
