"""`paxq dev`: a local 3-node cluster as child processes, data under one folder.

Ctrl-C stops every node cleanly; running it again resumes from the same data. While it
runs, `paxq dev stop|start|restart N` stops, starts or restarts one of its nodes (to try a
failover): the running supervisor does it, asked through a file in its data folder.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

DEV_CLUSTER = "paxq-dev"
DEV_NODES = 3
DEV_PEER_PORT = 7401
DEV_CLIENT_PORT = 7411
#: what the supervisor writes about itself and its nodes, in the data folder
STATE_FILE = "dev.json"
#: where `paxq dev stop|start|restart N` leaves its request, in the data folder
CONTROL_DIR = "control"
ACTIONS = ("stop", "start", "restart")
#: how long `paxq dev restart N` waits for the supervisor to carry it out
CONTROL_TIMEOUT_S = 20.0
_TICK_S = 0.2


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


class DevError(Exception):
    """Why `paxq dev` cannot do what it was asked; the message says what to do instead."""


def run(
    data: Path,
    peer_port: int,
    client_port: int,
    metrics_port: int = 0,
    node_flags: tuple[str, ...] = (),
) -> int:
    """`node_flags`: more flags for every node (tracing). 0 when stopped by Ctrl-C or
    SIGTERM, 1 when it could not start or every node has exited."""
    data.mkdir(parents=True, exist_ok=True)
    ports = _ports(peer_port, client_port, metrics_port)
    try:
        _check_free(data, ports)
    except DevError as error:
        print(f"paxq dev: {error}", file=sys.stderr)
        return 1
    peers, clients = dev_members("127.0.0.1", peer_port, client_port)
    # The first run creates the cluster; on later ones a node whose data is gone learns.
    fresh = not any((data / f"node{node}").exists() for node in range(DEV_NODES))
    first = ("--bootstrap",) if fresh else ()

    def spawn(node: int, flags: tuple[str, ...] = ()) -> subprocess.Popen:
        metrics = f"127.0.0.1:{metrics_port + node}" if metrics_port else None
        return _spawn(node, data, peers, clients, metrics, (*flags, *node_flags))

    children: dict[int, subprocess.Popen] = {}
    print(f"paxq dev: cluster {DEV_CLUSTER!r}, {DEV_NODES} nodes, data in {data.resolve()}")
    # SIGTERM stops the cluster as Ctrl-C does, and both are held off while stopping, so no
    # node is ever left orphaned.
    signal.signal(signal.SIGTERM, _interrupt)
    status = 0
    try:
        for node in range(DEV_NODES):
            children[node] = spawn(node, first)
            print(
                f"  node {node}: clients 127.0.0.1:{client_port + node}, "
                f"peers 127.0.0.1:{peer_port + node}, pid {children[node].pid}, "
                f"log {data / f'node{node}.log'}"
            )
        _write_state(data, children)
        print(_banner(data, client_port), flush=True)
        status = _supervise(children, data, spawn)
    except KeyboardInterrupt:
        print("\nstopping...")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop(list(children.values()))
        (data / STATE_FILE).unlink(missing_ok=True)
        shutil.rmtree(data / CONTROL_DIR, ignore_errors=True)
    return status


def _ports(peer_port: int, client_port: int, metrics_port: int) -> dict[int, str]:
    ports = {}
    for node in range(DEV_NODES):
        ports[peer_port + node] = f"node {node}'s peer port (--peer-port)"
        ports[client_port + node] = f"node {node}'s client port (--client-port)"
        if metrics_port:
            ports[metrics_port + node] = f"node {node}'s metrics port (--metrics-port)"
    return ports


def _check_free(data: Path, ports: dict[int, str]) -> None:
    """Refuse, naming the process, when another supervisor runs on `data` or a port is
    taken (a node would fail on it, and its log would say only 'address in use')."""
    running = running_supervisor(data)
    if running is not None:
        raise DevError(
            f"another paxq dev runs on {data} (pid {running}); stop it first (Ctrl-C in its "
            f"terminal, or kill {running})"
        )
    for port, role in ports.items():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a node binds
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as error:
                raise DevError(
                    f"port {port}, {role}, is in use by {_listener(port)} ({error.strerror}); "
                    "stop it, or choose other ports"
                ) from error


def _listener(port: int) -> str:
    """Who listens on a local TCP port, as far as this user may see."""
    try:
        for connection in psutil.net_connections("tcp"):
            if (
                connection.status == psutil.CONN_LISTEN
                and connection.laddr
                and connection.laddr.port == port
                and connection.pid is not None
            ):
                process = psutil.Process(connection.pid)
                command = shlex.join(process.cmdline())[:120]
                return f"pid {connection.pid} ({command})"
    except (psutil.Error, OSError):
        pass
    return "another process (not one this user may inspect)"


def running_supervisor(data: Path) -> int | None:
    """The pid of the `paxq dev` running on `data`, if one is."""
    try:
        state = json.loads((data / STATE_FILE).read_text())
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid == os.getpid():
        return None
    try:
        process = psutil.Process(pid)
        # (a pid the system gave to another program since is not a supervisor)
        alive = process.status() != psutil.STATUS_ZOMBIE and "dev" in process.cmdline()
    except psutil.Error:
        return None
    return pid if alive else None


def _write_state(data: Path, children: dict[int, subprocess.Popen]) -> None:
    nodes = {
        str(node): (child.pid if child.poll() is None else None) for node, child in children.items()
    }
    temporary = data / f"{STATE_FILE}.tmp"
    temporary.write_text(json.dumps({"pid": os.getpid(), "nodes": nodes}))
    temporary.replace(data / STATE_FILE)


def _banner(data: Path, client_port: int) -> str:
    paxq = _paxq_command()
    nodes = ",".join(dev_client_addresses("127.0.0.1", client_port))
    target = "" if client_port == DEV_CLIENT_PORT else f" --nodes {nodes}"
    folder = "" if data == Path(".paxq-dev") else f" --data {shlex.quote(str(data))}"
    return "\n".join(
        [
            "try, in another terminal:",
            f"  {paxq} status{target}",
            f"  {paxq} create jobs --queue{target}",
            f"  {paxq} publish jobs hello{target}",
            f"  {paxq} consume jobs{target}",
            f"  {paxq} dev restart 1{folder}      (stop, start: one node, to try a failover)",
            "Ctrl-C here stops the cluster.",
        ]
    )


def _paxq_command() -> str:
    """How this shell reaches the `paxq` being run: its name if PATH finds this very one,
    else its path."""
    me = Path(sys.argv[0])
    if me.name == "paxq":
        found = shutil.which("paxq")
        if found is not None and Path(found).resolve() == me.resolve():
            return "paxq"
        try:
            return str(me.resolve().relative_to(Path.cwd()))
        except ValueError:
            return str(me.resolve())
    return f"{shlex.quote(sys.executable)} -m paxq.ops.cli"


def _supervise(children: dict[int, subprocess.Popen], data: Path, spawn) -> int:
    """Report nodes that exit, carry out stop/start/restart requests; 1 once every node is
    down and not all by request (it waits for `start` while only requests stopped them)."""
    stopped: set[int] = set()  # by request: not an exit to report
    reported: set[int] = set()
    control = data / CONTROL_DIR
    while True:
        for node, child in children.items():
            if node not in reported and node not in stopped and child.poll() is not None:
                reported.add(node)
                print(
                    f"node {node} exited with status {child.returncode}; "
                    f"see {data / f'node{node}.log'}",
                    flush=True,
                )
                _write_state(data, children)
        if reported and all(child.poll() is not None for child in children.values()):
            print("paxq dev: every node has exited; see their logs", file=sys.stderr)
            return 1
        for request in sorted(control.glob("*")) if control.is_dir() else ():
            action, _, number = request.name.partition("-")
            node = int(number) if number.isdigit() else -1
            if action in ACTIONS and node in children:
                if action in ("stop", "restart"):
                    stop([children[node]])
                    stopped.add(node)
                if action in ("start", "restart") and children[node].poll() is not None:
                    children[node] = spawn(node)
                    stopped.discard(node)
                    reported.discard(node)
                what = "stopped" if action == "stop" else f"pid {children[node].pid}"
                print(f"node {node}: {action} ({what})", flush=True)
                _write_state(data, children)
            request.unlink(missing_ok=True)
        time.sleep(_TICK_S)


def control(data: Path, action: str, node: int, timeout_s: float = CONTROL_TIMEOUT_S) -> str:
    """Ask the `paxq dev` running on `data` to stop, start or restart one node; wait until
    it has. Returns what was done."""
    if action not in ACTIONS:
        raise DevError(f"{action!r} is not one of {', '.join(ACTIONS)}")
    if not 0 <= node < DEV_NODES:
        raise DevError(f"node {node}: the dev cluster has nodes 0 to {DEV_NODES - 1}")
    supervisor = running_supervisor(data)
    if supervisor is None:
        raise DevError(f"no paxq dev runs on {data} (start one with: paxq dev --data {data})")
    before = _node_pids(data).get(node)
    folder = data / CONTROL_DIR
    folder.mkdir(exist_ok=True)
    request = folder / f"{action}-{node}"
    request.write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout_s
    while request.exists():
        if time.monotonic() > deadline or running_supervisor(data) is None:
            request.unlink(missing_ok=True)
            raise DevError(f"paxq dev (pid {supervisor}) did not {action} node {node} in time")
        time.sleep(_TICK_S / 2)
    after = _node_pids(data).get(node)
    if action == "stop":
        return f"node {node} stopped" + (f" (was pid {before})" if before else "")
    return f"node {node} running as pid {after}" + (f" (was {before})" if before else "")


def _node_pids(data: Path) -> dict[int, int | None]:
    try:
        nodes = json.loads((data / STATE_FILE).read_text())["nodes"]
        return {int(node): pid for node, pid in nodes.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _spawn(
    node: int, data: Path, peers: str, clients: str, metrics: str | None, flags: tuple[str, ...]
) -> subprocess.Popen:
    with open(data / f"node{node}.log", "ab") as log:  # the child keeps its own descriptor
        extra = (*(("--metrics", metrics) if metrics else ()), *flags)
        command = node_argv(DEV_CLUSTER, node, data, peers, clients, extra)
        return subprocess.Popen(command, stdout=log, stderr=log)


def node_argv(
    cluster: str, node: int, data: Path, peers: str, clients: str, extra: Sequence[str] = ()
) -> list[str]:
    """The command that runs node `node` of a local cluster, its data in `data/node{N}`."""
    return [
        sys.executable,
        "-m",
        "paxq.ops.cli",
        "node",
        "--cluster",
        cluster,
        "--id",
        str(node),
        "--data",
        str(data / f"node{node}"),
        "--peers",
        peers,
        "--clients",
        clients,
        *extra,
    ]


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
