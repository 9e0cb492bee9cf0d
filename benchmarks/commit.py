"""The commit path of a real cluster: 3 `paxq node` processes on loopback, every journal write
synced (RocksDB, fdatasync), against PySyncObj doing the same work in the same run.

Closed-loop load: client processes, each with one connection to the leader and `--depth`
append requests outstanding at all times (a reply is answered at once with a new request).
Every command is replicated, applied and acknowledged on its own; the figure is commands
acknowledged per second, with latency from send to acknowledgement, over a measured window
that starts after a warm-up.

PySyncObj (a Python Raft library) runs the same shape: 3 processes, a replicated `append`
of the same payload, `--depth` calls outstanding, driven inside its leader process (no client
protocol at all, which flatters it). PySyncObj keeps its log in memory and does not sync it.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/commit.py [--seconds 5] [--sizes 100 1024]
        [--settings 1:1 64:8 1024:32] [--clients 2] [--depth 512]

Each setting is batch:window: commands per slot at most, slots in flight at most.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from provenance import git_commit

from paxq.client.wire import FrameDecoder, encode_frame
from paxq.client.wire.protocol import HELLO

HOST = "127.0.0.1"


@dataclass
class Figure:
    commands_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int

    def line(self) -> str:
        return (
            f"{self.commands_per_s:>10,.0f} commands/s   p50 {self.p50_ms:7.2f} ms   "
            f"p99 {self.p99_ms:7.2f} ms   errors {self.errors}"
        )


TOPIC = "bench"  # every paxq figure publishes one message per command to this topic


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def summarize(results: list[tuple[int, list[float], int]], seconds: float) -> Figure:
    count = sum(r[0] for r in results)
    latencies = sorted(x for r in results for x in r[1])
    errors = sum(r[2] for r in results)
    if not latencies:
        return Figure(0.0, float("nan"), float("nan"), errors)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return Figure(count / seconds, statistics.median(latencies) * 1e3, p99 * 1e3, errors)


# ------------------------------------------------------------------------------------ paxq


def _exchange(sock: socket.socket, decoder: FrameDecoder, body: object) -> object:
    sock.sendall(encode_frame(body))
    while True:
        data = sock.recv(1 << 16)
        if not data:
            raise ConnectionError("closed")
        for reply in decoder.feed(data):
            return reply


def find_leader(clients: list[tuple[str, int]], timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for index, address in enumerate(clients):
            with (
                contextlib.suppress(OSError, ConnectionError),
                socket.create_connection(address, timeout=1) as sock,
            ):
                decoder = FrameDecoder()
                _exchange(sock, decoder, HELLO)
                status = _exchange(sock, decoder, {"id": 1, "op": "status"})
                if status.get("status", {}).get("role") == "leader":
                    return index
        time.sleep(0.1)
    raise TimeoutError("no leader")


def paxq_client(
    address: tuple[str, int], size: int, depth: int, warmup: float, seconds: float, out
) -> None:
    """One closed-loop client: `depth` appends outstanding until the window ends."""
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    decoder = FrameDecoder()
    _exchange(sock, decoder, HELLO)
    payload = os.urandom(size)
    sent_at: dict[int, float] = {}
    next_id = 0
    clock = time.perf_counter

    def request() -> bytes:
        nonlocal next_id
        next_id += 1
        sent_at[next_id] = clock()
        return encode_frame(
            {"id": next_id, "op": "publish", "topic": TOPIC, "messages": [{"body": payload}]}
        )

    sock.sendall(b"".join(request() for _ in range(depth)))
    measure_from = clock() + warmup
    end = measure_from + seconds
    count = errors = 0
    latencies: list[float] = []
    while True:
        data = sock.recv(1 << 20)
        if not data:
            break
        now = clock()
        more = []
        for reply in decoder.feed(data):
            started = sent_at.pop(reply["id"])
            if not reply.get("ok"):
                errors += 1
            elif measure_from <= now <= end:
                count += 1
                latencies.append(now - started)
            if now < end:
                more.append(request())
        if now >= end:
            break
        if more:
            sock.sendall(b"".join(more))
    sock.close()
    out.put((count, latencies, errors))


@contextlib.contextmanager
def paxq_cluster(batch: int = 1024, window: int = 32, extra: tuple[str, ...] = ()):
    """3 `paxq node` processes on fresh ports and a temporary data folder; yields
    (processes, data folder, client addresses, index of the leader). Killed by pid after."""
    data = Path(tempfile.mkdtemp(prefix="paxq-bench-"))
    ports = free_ports(6)
    peers = ",".join(f"{i}={HOST}:{ports[i]}" for i in range(3))
    clients = ",".join(f"{i}={HOST}:{ports[3 + i]}" for i in range(3))
    procs = []
    try:
        for node in range(3):
            log = open(data / f"node{node}.log", "wb")  # noqa: SIM115 (the child writes it)
            procs.append(
                subprocess.Popen(
                    [
                        *(sys.executable, "-m", "paxq.ops.cli", "node", "--cluster", "bench"),
                        *("--id", str(node), "--data", str(data / f"node{node}")),
                        *("--peers", peers, "--clients", clients, "--bootstrap"),
                        *("--batch-max", str(batch), "--window", str(window), *extra),
                    ],
                    stdout=log,
                    stderr=log,
                )
            )
        addresses = [(HOST, ports[3 + i]) for i in range(3)]
        leader = find_leader(addresses)
        with socket.create_connection(addresses[leader], timeout=10) as sock:
            decoder = FrameDecoder()
            _exchange(sock, decoder, HELLO)
            _exchange(sock, decoder, {"id": 1, "op": "create", "topic": TOPIC})
        yield procs, data, addresses, leader
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        shutil.rmtree(data, ignore_errors=True)


def run_paxq(size: int, batch: int, window: int, args: argparse.Namespace) -> Figure:
    with paxq_cluster(batch, window) as (_, _, addresses, leader):
        load = (addresses[leader], size, args.depth, args.warmup, args.seconds)
        return _drive(paxq_client, load, args.clients, args)


def _drive(target, target_args: tuple, count: int, args: argparse.Namespace) -> Figure:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    workers = [ctx.Process(target=target, args=(*target_args, out)) for _ in range(count)]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=args.warmup + args.seconds + 60) for _ in workers]
    for worker in workers:
        worker.join(10)
    return summarize(results, args.seconds)


# ------------------------------------------------------------------------------- pysyncobj


def pysyncobj_node(
    me: int, ports: list[int], size: int, depth: int, warmup: float, seconds: float, out
) -> None:
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class Log(SyncObj):
        def __init__(self) -> None:
            partners = [f"{HOST}:{p}" for i, p in enumerate(ports) if i != me]
            conf = SyncObjConf(dynamicMembershipChange=False, commandsQueueSize=1 << 20)
            super().__init__(f"{HOST}:{ports[me]}", partners, conf)
            self.entries: list[bytes] = []

        @replicated
        def append(self, data: bytes) -> int:
            self.entries.append(data)
            return len(self.entries) - 1

    log = Log()
    deadline = time.monotonic() + 30
    while log._getLeader() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if log._isLeader():
        payload = os.urandom(size)
        permits = threading.Semaphore(depth)
        clock = time.perf_counter
        lock = threading.Lock()
        stats = {"count": 0, "errors": 0}
        latencies: list[float] = []
        measure_from = clock() + warmup
        end = measure_from + seconds

        def call() -> None:
            started = clock()

            def done(result, error) -> None:
                now = clock()
                with lock:
                    if error != 0:  # FAIL_REASON.SUCCESS
                        stats["errors"] += 1
                    elif measure_from <= now <= end:
                        stats["count"] += 1
                        latencies.append(now - started)
                permits.release()

            log.append(payload, callback=done)

        while clock() < end:
            permits.acquire()
            call()
        out.put((stats["count"], latencies, stats["errors"]))
    else:
        time.sleep(warmup + seconds + 2)
    log.destroy()


def run_pysyncobj(size: int, args: argparse.Namespace) -> Figure:
    ports = free_ports(3)
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=pysyncobj_node,
            args=(me, ports, size, args.depth, args.warmup, args.seconds, out),
        )
        for me in range(3)
    ]
    for proc in procs:
        proc.start()
    try:
        results = [out.get(timeout=args.warmup + args.seconds + 60)]
    finally:
        for proc in procs:
            proc.join(args.warmup + args.seconds + 10)
            if proc.is_alive():
                proc.kill()
    return summarize(results, args.seconds)


# ------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1024])
    parser.add_argument("--settings", nargs="+", default=["1:1", "64:8", "1024:32"])
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--depth", type=int, default=512, help="requests outstanding each")
    parser.add_argument("--skip-pysyncobj", action="store_true")
    args = parser.parse_args()
    print(
        f"commit {git_commit()}; 3 nodes on loopback, os.cpu_count()={os.cpu_count()}; "
        f"{args.clients} client processes x {args.depth} outstanding; "
        f"{args.seconds:g} s measured after {args.warmup:g} s warm-up"
    )
    for size in args.sizes:
        best = 0.0
        for setting in args.settings:
            batch, window = (int(part) for part in setting.split(":"))
            figure = run_paxq(size, batch, window, args)
            best = max(best, figure.commands_per_s)
            print(f"paxq      {size:>5} B  batch {batch:>5} window {window:>3}  {figure.line()}")
        if args.skip_pysyncobj:
            continue
        other = run_pysyncobj(size, args)
        print(f"pysyncobj {size:>5} B  (log in memory, never synced)   {other.line()}")
        if other.commands_per_s:
            ratio = best / other.commands_per_s
            print(f"ratio     {size:>5} B  paxq best / pysyncobj = {ratio:.2f}x")


if __name__ == "__main__":
    main()
