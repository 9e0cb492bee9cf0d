"""Limits and timing of one replica, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass


class ConfigError(ValueError):
    """A configuration that the core refuses to run with."""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the core needs to know about its cluster and its bounds.

    Times are in ticks: the runtime decides how long a tick is, so the core never reads a clock.
    """

    nodes: tuple[int, ...]
    #: commands in one batch (one slot) at most
    batch_count_max: int = 1024
    #: payload bytes in one batch at most; a single larger command goes alone in its slot
    batch_bytes_max: int = 256 << 10
    #: one command's bytes at most (larger ones are refused): the client protocol's
    #: COMMAND_BYTES_MAX, a message of the largest with its request's fields
    command_bytes_max: int = (1 << 20) + (64 << 10)
    #: slots proposed but not yet chosen, at most (the pipeline window)
    window_slots_max: int = 32
    #: payload bytes in those slots at most: a promise carrying the window fits a peer frame
    window_bytes_max: int = 8 << 20
    #: commands queued at the leader waiting for a slot, at most (backpressure past it)
    pending_count_max: int = 65536
    pending_bytes_max: int = 64 << 20
    #: the leader sends a heartbeat (carrying its commit point) this often
    heartbeat_ticks: int = 2
    #: a follower that hears no leader for a random time in [base, 2*base) starts a campaign
    election_ticks_base: int = 10
    #: after each failed campaign the random part doubles, up to 2**backoff_exponent_max
    backoff_exponent_max: int = 5
    #: an unacknowledged accept is sent again after this long
    resend_ticks: int = 4
    #: a catch-up request without answer may be repeated after this long
    catchup_retry_ticks: int = 4
    #: chosen slots in one catch-up reply at most, and their payload bytes at most
    catchup_slots_max: int = 256
    catchup_bytes_max: int = 4 << 20

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ConfigError("a cluster needs at least one node")
        if len(set(self.nodes)) != len(self.nodes):
            raise ConfigError(f"node ids must be unique, got {self.nodes}")
        if any(not isinstance(n, int) or n < 0 for n in self.nodes):
            raise ConfigError(f"node ids must be non-negative integers, got {self.nodes}")
        positive = (
            "batch_count_max",
            "batch_bytes_max",
            "command_bytes_max",
            "window_slots_max",
            "window_bytes_max",
            "pending_count_max",
            "pending_bytes_max",
            "heartbeat_ticks",
            "election_ticks_base",
            "resend_ticks",
            "catchup_retry_ticks",
            "catchup_slots_max",
            "catchup_bytes_max",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.heartbeat_ticks >= self.election_ticks_base:
            raise ConfigError("heartbeat_ticks must be below election_ticks_base")
        if not 0 <= self.backoff_exponent_max <= 16:
            raise ConfigError("backoff_exponent_max must be in 0..16")
        if self.window_bytes_max < self.slot_bytes_max:
            raise ConfigError(
                f"window_bytes_max ({self.window_bytes_max:,}) must hold one slot of the largest "
                f"({self.slot_bytes_max:,}: batch_bytes_max or command_bytes_max)"
            )
        if self.pending_bytes_max < self.slot_bytes_max:
            raise ConfigError(
                f"pending_bytes_max ({self.pending_bytes_max:,}) must hold one slot of the "
                f"largest ({self.slot_bytes_max:,}: batch_bytes_max or command_bytes_max)"
            )

    @property
    def slot_bytes_max(self) -> int:
        """One slot's payload bytes at most: a full batch, or one command alone."""
        return max(self.batch_bytes_max, self.command_bytes_max)

    @property
    def quorum(self) -> int:
        """A majority of the members."""
        return len(self.nodes) // 2 + 1
