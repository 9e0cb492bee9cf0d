"""`paxq dev`: a local 3-node cluster as child processes, data under one folder.

Ctrl-C stops every node cleanly; running it again resumes from the same data.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

DEV_CLUSTER = "paxq-dev"
DEV_NODES = 3
DEV_PEER_PORT = 7401
DEV_CLIENT_PORT = 7411


def dev_members(
    host: str = "127.0.0.1",
    peer_port: int = DEV_PEER_PORT,
    client_port: int = DEV_CLIENT_PORT,
    size: int = DEV_NODES,
) -> tuple[str, str]:
    peers = ",".join(f"{i}={host}:{peer_port + i}" for i in range(size))
    clients = ",".join(f"{i}={host}:{client_port + i}" for i in range(size))
    return peers, clients


def dev_client_addresses(
    host: str = "127.0.0.1", client_port: int = DEV_CLIENT_PORT, size: int = DEV_NODES
) -> list[str]:
    return [f"{host}:{client_port + i}" for i in range(size)]


def run(
    data: Path,
    peer_port: int,
    client_port: int,
    metrics_port: int = 0,
    node_flags: tuple[str, ...] = (),
) -> int:
    """`node_flags`: more flags for every node (tracing)."""
    peers, clients = dev_members("127.0.0.1", peer_port, client_port)
    data.mkdir(parents=True, exist_ok=True)
    children: list[subprocess.Popen] = []
    print(f"paxq dev: cluster {DEV_CLUSTER!r}, {DEV_NODES} nodes, data in {data.resolve()}")
    # SIGTERM stops the cluster as Ctrl-C does, and both are held off while stopping, so no
    # node is ever left orphaned.
    signal.signal(signal.SIGTERM, _interrupt)
    # The first run creates the cluster; on later ones a node whose data is gone learns.
    fresh = not any((data / f"node{node}").exists() for node in range(DEV_NODES))
    first = ("--bootstrap",) if fresh else ()
    try:
        for node in range(DEV_NODES):
            metrics = f"127.0.0.1:{metrics_port + node}" if metrics_port else None
            children.append(_spawn(node, data, peers, clients, metrics, (*first, *node_flags)))
            print(
                f"  node {node}: clients 127.0.0.1:{client_port + node}, "
                f"peers 127.0.0.1:{peer_port + node}, pid {children[-1].pid}, "
                f"log {data / f'node{node}.log'}"
            )
        print(
            "try: paxq status  |  paxq create jobs --queue  |  paxq publish jobs hello  |  "
            "paxq consume jobs    (Ctrl-C stops the cluster)"
        )
        _watch(children, data)
    except KeyboardInterrupt:
        print("\nstopping...")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop(children)
    return 0


def _spawn(
    node: int, data: Path, peers: str, clients: str, metrics: str | None, flags: tuple[str, ...]
) -> subprocess.Popen:
    with open(data / f"node{node}.log", "ab") as log:  # the child keeps its own descriptor
        command = [
            sys.executable,
            "-m",
            "paxq.ops.cli",
            "node",
            "--cluster",
            DEV_CLUSTER,
            "--id",
            str(node),
            "--data",
            str(data / f"node{node}"),
            "--peers",
            peers,
            "--clients",
            clients,
            *(("--metrics", metrics) if metrics else ()),
            *flags,
        ]
        return subprocess.Popen(command, stdout=log, stderr=log)


def _watch(children: list[subprocess.Popen], data: Path) -> None:
    reported: set[int] = set()
    while True:
        for node, child in enumerate(children):
            if node not in reported and child.poll() is not None:
                reported.add(node)
                print(
                    f"node {node} exited with status {child.returncode}; "
                    f"see {data / f'node{node}.log'}"
                )
        time.sleep(0.5)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop(children: list, timeout_s: float = 10.0) -> None:
    """SIGTERM every child, wait, then SIGKILL whatever is left."""
    live = [c for c in children if c.poll() is None]
    for child in live:
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for child in live:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
