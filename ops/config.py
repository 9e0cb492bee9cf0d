"""Node configuration from a TOML file, the environment and flags (flags win, then env, then
the file, then defaults).

    cluster = "paxq-dev"
    id = 0
    data = "./data/node0"
    listen = "127.0.0.1:7401"          # this node's peer address
    client = "127.0.0.1:7411"          # this node's client address
    peers = { 0 = "127.0.0.1:7401", 1 = "127.0.0.1:7402", 2 = "127.0.0.1:7403" }
    clients = { 0 = "127.0.0.1:7411", 1 = "127.0.0.1:7412", 2 = "127.0.0.1:7413" }
    tick_ms = 20
    snapshot_every = 2048              # applied slots between snapshots (0: never)
    snapshot_keep = 256                # slots of log kept behind a snapshot
    batch_max = 1024                   # commands per slot at most (batching)
    window = 32                        # slots in flight at most (pipelining)

Environment: PAXQ_CLUSTER, PAXQ_ID, PAXQ_DATA, PAXQ_LISTEN, PAXQ_CLIENT, PAXQ_PEERS and
PAXQ_CLIENTS (as "0=host:port,1=host:port"), PAXQ_TICK_MS, PAXQ_SNAPSHOT_EVERY,
PAXQ_SNAPSHOT_KEEP, PAXQ_BATCH_MAX, PAXQ_WINDOW.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from paxq.client.connection import parse_address

Address = tuple[str, int]


class ConfigError(ValueError):
    """A configuration the node refuses to start with; the message says which setting."""


#: span exporters: none (tracing off), console, otlp, drop (made and thrown away)
EXPORTERS = ("none", "console", "otlp", "drop")


@dataclass(frozen=True)
class NodeConfig:
    cluster: str
    id: int
    data: Path
    listen: Address
    client: Address
    peers: dict[int, Address]
    clients: dict[int, Address]
    tick_ms: int = 20
    snapshot_every: int = 2048
    snapshot_keep: int = 256
    batch_max: int = 1024
    window: int = 32
    #: where the Prometheus scrape endpoint listens (GET /metrics); None: no endpoint
    metrics: Address | None = None
    #: span exporter: none (tracing off), console, otlp, drop; and the ratio of new traces
    tracing: str = "none"
    trace_sample: float = 0.01
    #: a node whose clock is further than this from a majority's refuses to lead (0: no bound)
    clock_offset_ms_max: int = 500


KEYS = (
    "cluster",
    "id",
    "data",
    "listen",
    "client",
    "peers",
    "clients",
    "tick_ms",
    "snapshot_every",
    "snapshot_keep",
    "batch_max",
    "window",
    "metrics",
    "tracing",
    "trace_sample",
    "clock_offset_ms_max",
)


def parse_members(text: str) -> dict[int, Address]:
    """ "0=host:port,1=host:port" -> {0: (host, port), ...}"""
    members: dict[int, Address] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, address = part.partition("=")
        if not sep or not key.strip().isdigit():
            raise ConfigError(f"expected id=host:port, got {part!r}")
        members[int(key)] = parse_address(address.strip())
    return members


def load(
    flags: Mapping[str, object],
    environ: Mapping[str, str] = os.environ,
    file: Path | None = None,
) -> NodeConfig:
    raw: dict[str, object] = {}
    if file is not None:
        try:
            raw.update(tomllib.loads(Path(file).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"cannot read the configuration file {file}: {error}") from error
        unknown = set(raw) - set(KEYS)
        if unknown:
            raise ConfigError(f"unknown settings in {file}: {sorted(unknown)}")
    for key in KEYS:
        value = environ.get(f"PAXQ_{key.upper()}")
        if value is not None:
            raw[key] = value
    raw.update({k: v for k, v in flags.items() if k in KEYS and v is not None})
    missing = [k for k in ("id", "data", "peers") if k not in raw]
    if missing:
        raise ConfigError(f"missing settings: {', '.join(missing)} (flag, PAXQ_* or file)")
    try:
        node_id = int(raw["id"])
        peers = _members(raw["peers"])
        clients = _members(raw.get("clients", {})) or {
            n: (host, port + 10) for n, (host, port) in peers.items()
        }
        listen = _address(raw.get("listen")) if raw.get("listen") else peers.get(node_id)
        client = _address(raw.get("client")) if raw.get("client") else clients.get(node_id)
        tick_ms = int(raw.get("tick_ms", 20))
        snapshot_every = int(raw.get("snapshot_every", 2048))
        snapshot_keep = int(raw.get("snapshot_keep", 256))
        batch_max = int(raw.get("batch_max", 1024))
        window = int(raw.get("window", 32))
        metrics = _address(raw["metrics"]) if raw.get("metrics") else None
        tracing = str(raw.get("tracing", "none"))
        trace_sample = float(raw.get("trace_sample", 0.01))
        clock_offset_ms_max = int(raw.get("clock_offset_ms_max", 500))
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from error
    if node_id not in peers:
        raise ConfigError(f"node {node_id} is not among the peers {sorted(peers)}")
    if set(clients) != set(peers):
        raise ConfigError("clients must name the same members as peers")
    if not 1 <= tick_ms <= 1000:
        raise ConfigError("tick_ms must be between 1 and 1000")
    if snapshot_every < 0 or snapshot_keep < 0:
        raise ConfigError("snapshot_every and snapshot_keep must be >= 0")
    if tracing not in EXPORTERS:
        raise ConfigError(f"tracing is one of {', '.join(EXPORTERS)}")
    if not 0.0 <= trace_sample <= 1.0:
        raise ConfigError("trace_sample must be between 0 and 1")
    if not 0 <= clock_offset_ms_max <= 60_000:
        raise ConfigError(
            f"clock_offset_ms_max must be between 0 (no bound) and 60000, got {clock_offset_ms_max}"
        )
    if not (1 <= batch_max <= 65536 and 1 <= window <= 1024):
        raise ConfigError("batch_max must be in [1, 65536] and window in [1, 1024]")
    return NodeConfig(
        cluster=str(raw.get("cluster", "paxq-dev")),
        id=node_id,
        data=Path(str(raw["data"])),
        listen=listen,
        client=client,
        peers=peers,
        clients=clients,
        tick_ms=tick_ms,
        snapshot_every=snapshot_every,
        snapshot_keep=snapshot_keep,
        batch_max=batch_max,
        window=window,
        metrics=metrics,
        tracing=tracing,
        trace_sample=trace_sample,
        clock_offset_ms_max=clock_offset_ms_max,
    )


def _members(value: object) -> dict[int, Address]:
    if isinstance(value, str):
        return parse_members(value)
    if isinstance(value, Mapping):
        return {int(k): _address(v) for k, v in value.items()}
    raise ConfigError(f"expected members as id=host:port pairs, got {value!r}")


def _address(value: object) -> Address:
    if isinstance(value, str):
        return parse_address(value)
    raise ConfigError(f"expected host:port, got {value!r}")
