"""Known protocol bugs, planted from the tests by subclassing the real replica.

Production code has no switch for any of these: each subclass overrides one decision.
"""

from __future__ import annotations

from paxq.broker.paxos import ZERO, Replica


class QuorumTooSmall(Replica):
    """Counts one vote fewer than a majority as enough, for promises and for accepts."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.quorum = max(1, self.config.quorum - 1)


class ForgetsPromise(Replica):
    """An acceptor whose promise is not restored after a restart (as if never synced)."""

    def __init__(self, node_id, config, rng, durable=None) -> None:
        super().__init__(node_id, config, rng, durable)
        self.promised = ZERO


class IgnoresPhaseOneValues(Replica):
    """A new leader that drops the accepted values reported in its promises."""

    def _maybe_win(self) -> None:
        self._promises = {
            src: promise._replace(entries=()) for src, promise in self._promises.items()
        }
        super()._maybe_win()
