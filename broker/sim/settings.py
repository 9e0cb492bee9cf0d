"""Every setting of a simulation run, derived from one seed (printed first, so a run replays)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from random import Random

from ..paxos import Config


@dataclass(frozen=True)
class Faults:
    """Network, process and clock faults of the safety phase."""

    #: chance that one message is lost, and that it is delivered twice
    loss: float
    duplicate: float
    #: one-way delay is uniform in [min, max]; `long_delay` of the messages take 20x longer,
    #: so stale messages from old ballots arrive late (reordering comes from the spread)
    delay_ms_min: float
    delay_ms_max: float
    long_delay: float
    #: mean time between changes of the partition (a new split, or a heal)
    partition_interval_ms: float
    #: mean time between crashes of a random replica; a crashed replica restarts after a
    #: uniform delay up to `restart_ms_max`, keeping only what it persisted
    crash_interval_ms: float
    restart_ms_max: float
    #: chance that a replica crashes right after a turn that synced records (once its messages
    #: are out): crashes land next to disk writes, where recovery bugs live. Promise records
    #: are rare next to accepts, so turns that synced a promise have a chance of their own.
    crash_after_sync: float
    crash_after_promise: float
    #: each replica's tick runs at a rate in [1 - skew, 1 + skew] of the nominal one; its
    #: wall clock is off by up to 200 ms x skew and drifts by up to 0.1% x skew
    clock_skew: float
    #: a write (journal batch or snapshot) completes after up to this long, in order; the
    #: node goes on taking inputs meanwhile, and a crash loses what was not yet synced
    write_ms_max: float
    #: chance that a write fails (the node stops, as production does, and restarts later),
    #: and that a restart finds a stored entry damaged (it must refuse to start)
    write_fail: float
    corrupt_read: float
    #: chance, per write, that the node crashes while that write is still in flight: where
    #: a vote sent or counted before its write is durable is lost
    crash_in_flight: float
    #: chance that a crash also wipes the replica's disk (one replica at a time): it restarts
    #: with no data, as a node whose disk was replaced, and must learn before it votes
    wipe: float = 0.0
    #: chance that a restarted replica's wall clock is off by 0.6 to 6 s (beyond the bound
    #: on clock offsets: it must not lead until its clock is right again)
    clock_off: float = 0.0

    @classmethod
    def none(cls) -> Faults:
        return cls(0.0, 0.0, 1.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class SimSettings:
    seed: int
    nodes: int
    steps: int
    faults: Faults
    clients: int
    #: commands a client has outstanding at most, and the think time between issues
    client_outstanding_max: int
    client_think_ms: float
    #: a request unanswered this long is abandoned (its outcome stays unknown)
    client_timeout_ms: float
    #: chance that a client sends to a random replica instead of the one it believes leads
    #: (a reconnect through the seed list)
    client_wander: float
    tick_ms: float
    window_slots_max: int
    batch_count_max: int
    #: the byte bounds of a slot, a command and the pipeline window (paxos.Config)
    batch_bytes_max: int
    command_bytes_max: int
    window_bytes_max: int
    pending_count_max: int
    catchup_slots_max: int
    #: a replica snapshots its applied state every this many slots (0: never) and keeps this
    #: many slots of log behind the snapshot for peers that lag a little
    snapshot_every: int
    snapshot_keep: int
    #: committed slots a replica applies per turn at most (the rest in later turns)
    apply_commands_max: int
    #: after the safety phase faults stop and a random minority stays down: commands issued
    #: from heal + settle to heal + budget must all be acknowledged by the majority; then the
    #: minority returns and every replica must converge within another settle time
    liveness_settle_ms: float
    liveness_budget_ms: float
    #: the last events kept to print with a violation
    trace_events: int = 80

    @classmethod
    def from_seed(
        cls,
        seed: int,
        nodes: int = 5,
        steps: int = 20_000,
        *,
        faults: bool = True,
        byte_bounds: bool = True,
    ) -> SimSettings:
        """A seed's settings. `byte_bounds=False` keeps the log's byte bounds at their
        defaults: the settings (and so the history) a seed had before tight bounds were
        drawn, for replaying the seeds that once found a bug."""
        rng = Random(seed)
        fault_settings = (
            Faults(
                loss=rng.choice((0.001, 0.01, 0.03, 0.1, 0.2)),
                duplicate=rng.choice((0.001, 0.01, 0.05, 0.1)),
                delay_ms_min=rng.uniform(0.1, 2.0),
                delay_ms_max=rng.uniform(3.0, 30.0),
                long_delay=rng.choice((0.001, 0.01, 0.05)),
                partition_interval_ms=rng.uniform(50.0, 1_000.0),
                crash_interval_ms=rng.uniform(50.0, 1_500.0),
                restart_ms_max=rng.choice((50.0, 200.0, 1_000.0)),
                crash_after_sync=rng.choice((0.0002, 0.001, 0.003, 0.01, 0.03)),
                crash_after_promise=rng.choice((0.01, 0.05, 0.2, 0.5)),
                clock_skew=rng.uniform(0.0, 0.5),
                write_ms_max=rng.choice((0.2, 1.0, 3.0, 10.0, 30.0)),
                write_fail=rng.choice((0.0002, 0.001, 0.003)),
                corrupt_read=rng.choice((0.05, 0.2, 0.5)),
                crash_in_flight=rng.choice((0.001, 0.005, 0.02)),
                wipe=rng.choice((0.02, 0.05, 0.2)),
                clock_off=rng.choice((0.05, 0.2, 0.5)),
            )
            if faults
            else Faults.none()
        )
        clients, outstanding = rng.randint(1, 8), rng.randint(1, 8)
        window, batch = rng.randint(1, 16), rng.randint(1, 64)
        # One pipeline's worth of slots carries every command the clients may have out (and
        # a time entry per batch): else the cluster is overloaded by construction and no
        # bound on the answer time could hold in the liveness phase.
        batch = max(batch, -(-(clients * outstanding) // window) + 1)
        drawn = cls(
            seed=seed,
            nodes=nodes,
            steps=steps,
            faults=fault_settings,
            clients=clients,
            client_outstanding_max=outstanding,
            client_think_ms=rng.uniform(0.5, 20.0),
            client_timeout_ms=rng.uniform(200.0, 2_000.0),
            client_wander=rng.choice((0.0, 0.05, 0.2)),
            tick_ms=10.0,
            window_slots_max=window,
            batch_count_max=batch,
            batch_bytes_max=0,  # drawn below
            command_bytes_max=0,
            window_bytes_max=0,
            pending_count_max=rng.choice((16, 256, 4096)),
            catchup_slots_max=rng.choice((32, 64, 256)),
            snapshot_every=rng.choice((0, 8, 32, 128)),
            snapshot_keep=rng.choice((0, 4, 32)),
            apply_commands_max=rng.choice((1, 64, 1024)),
            liveness_settle_ms=5_000.0,
            liveness_budget_ms=10_000.0,
        )
        # Drawn last, so every earlier draw of a seed stays as it was. The tight choices make
        # the byte bounds bind: an ack of many leases (up to about 1 KiB) goes alone in its
        # slot or, rarely, is refused; a window of one slot's bytes (a dozen typical commands
        # of about 75 bytes) holds the rest in the leader's queue until it drains, which
        # costs latency, not progress (the liveness phase still holds: 200 seeds of 20,000
        # steps at 5 nodes, all clean).
        tight, default = byte_bounds and rng.random() < 0.5, Config(nodes=(0,))
        command_bytes = rng.choice((1024, 8192)) if tight else default.command_bytes_max
        per_slot = -(-(clients * outstanding) // window) + 1
        batch_bytes = (
            max(256, 100 * per_slot) if tight and rng.random() < 0.7 else default.batch_bytes_max
        )
        window_bytes = max(batch_bytes, command_bytes) if tight else default.window_bytes_max
        return replace(
            drawn,
            batch_bytes_max=batch_bytes,
            command_bytes_max=command_bytes,
            window_bytes_max=window_bytes,
        )

    def with_faults(self, faults: Faults) -> SimSettings:
        return replace(self, faults=faults)

    def paxos_config(self) -> Config:
        return Config(
            nodes=tuple(range(self.nodes)),
            window_slots_max=self.window_slots_max,
            batch_count_max=self.batch_count_max,
            batch_bytes_max=self.batch_bytes_max,
            command_bytes_max=self.command_bytes_max,
            window_bytes_max=self.window_bytes_max,
            pending_count_max=self.pending_count_max,
            catchup_slots_max=self.catchup_slots_max,
        )

    def describe(self) -> str:
        """One line a person can read and a shell can replay."""
        fields = asdict(self)
        faults = fields.pop("faults")
        parts = [f"{k}={_fmt(v)}" for k, v in fields.items()]
        parts += [f"{k}={_fmt(v)}" for k, v in faults.items()]
        return " ".join(parts)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)
