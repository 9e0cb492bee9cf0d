"""Single publishes, one at a time, on two builds of paxq side by side: latency and syncs.

Two 3-node clusters of real `paxq node` processes on loopback (RocksDB, synced writes): one
from this checkout, one from another commit checked out beside it (`--baseline-tree`, e.g.
made with `git worktree add /tmp/base <commit>`). They take turns for `--rounds` rounds so the
machine's drift hits both alike; in each round one client (this checkout's: the protocol is
the same) publishes `--count` 100-byte messages, each after the last one's answer. It prints
p50 and p99 per build, their ratio, and the synced writes per publish on the leader and on
each follower (from the nodes' status counters).

    .venv/bin/python benchmarks/single_publish.py --baseline-tree /tmp/base [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from provenance import git_commit, tree_commit

from paxq.client import Client
from paxq.ops.admin import gather_status


def _ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _import_root(tree: Path, scratch: Path) -> Path:
    """A directory that makes `paxq` import from `tree` (the package dirs, linked)."""
    root = scratch / "import"
    (root / "paxq").mkdir(parents=True)
    for part in ("broker", "client", "storage", "ops"):
        (root / "paxq" / part).symlink_to(tree / part)
    return root


class Cluster:
    def __init__(
        self, name: str, data: Path, pythonpath: Path | None, tree: Path | None = None
    ) -> None:
        self.name = name
        # Trees from before the explicit bootstrap start a new cluster without the flag.
        cli = (tree or Path(__file__).resolve().parents[1]) / "ops" / "cli.py"
        self.bootstrap = ("--bootstrap",) if "--bootstrap" in cli.read_text() else ()
        self.data = data
        ports = _ports(6)
        self.peers = ",".join(f"{i}=127.0.0.1:{ports[i]}" for i in range(3))
        self.clients = ",".join(f"{i}=127.0.0.1:{ports[3 + i]}" for i in range(3))
        self.addresses = [("127.0.0.1", ports[3 + i]) for i in range(3)]
        self.env = dict(os.environ)
        if pythonpath is not None:
            self.env["PYTHONPATH"] = str(pythonpath)
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        self.procs = [self._spawn(node) for node in range(3)]

    def restart(self, node: int) -> None:
        """Start `node` again on its data (after it was killed)."""
        self.procs[node] = self._spawn(node)

    def _spawn(self, node: int) -> subprocess.Popen:
        log = open(self.data / f"node{node}.log", "ab")  # noqa: SIM115 (the child writes it)
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "paxq.ops.cli", "node", "--cluster", "bench"),
                *("--id", str(node), "--data", str(self.data / f"node{node}")),
                *("--peers", self.peers, "--clients", self.clients),
                *self.bootstrap,  # the first start of the cluster (moot on a restart)
            ],
            stdout=log,
            stderr=log,
            env=self.env,
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


async def _leader(cluster: Cluster) -> dict[int, dict]:
    with trio.fail_after(30):
        while True:
            statuses = {s["node"]: s for s in await gather_status(cluster.addresses) if "role" in s}
            if sum(s["role"] == "leader" for s in statuses.values()) == 1 and len(statuses) == 3:
                return statuses
            await trio.sleep(0.1)


async def _round(cluster: Cluster, count: int) -> tuple[list[float], dict[str, float]]:
    await _leader(cluster)
    async with Client([f"{h}:{p}" for h, p in cluster.addresses]) as client:
        await client.create_topic("single", exist_ok=True)
        for _ in range(50):  # warm-up
            await client.publish("single", b"w" * 100)
        before = await _leader(cluster)
        latencies = []
        for _ in range(count):
            started = time.perf_counter()
            await client.publish("single", b"x" * 100)
            latencies.append((time.perf_counter() - started) * 1000)
        after = await _leader(cluster)
    leader = next(n for n, s in after.items() if s["role"] == "leader")
    syncs = {
        ("leader" if n == leader else f"follower {n}"): (after[n]["syncs"] - before[n]["syncs"])
        / count
        for n in after
    }
    return latencies, syncs


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-tree", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=400, help="publishes per round")
    args = parser.parse_args()
    base_tree = args.baseline_tree.resolve()
    base_commit = tree_commit(base_tree)
    scratch = Path(tempfile.mkdtemp(prefix="paxq-single-"))
    try:
        builds = {
            f"baseline {base_commit}": _import_root(base_tree, scratch),
            f"this {git_commit()}": None,
        }
        trees = {f"baseline {base_commit}": base_tree}
        figures: dict[str, list[float]] = {name: [] for name in builds}
        syncs: dict[str, dict[str, list[float]]] = {name: {} for name in builds}
        print(f"single publish, 100 B, 3 nodes, {args.rounds} rounds x {args.count} each")
        for round_ in range(args.rounds):
            order = list(builds) if round_ % 2 == 0 else list(reversed(builds))
            for name in order:
                data = scratch / f"{name.split()[0]}-{round_}"
                data.mkdir()
                cluster = Cluster(name, data, builds[name], trees.get(name))
                cluster.start()
                try:
                    latencies, per = trio.run(_round, cluster, args.count)
                finally:
                    cluster.stop()
                figures[name] += latencies
                for who, value in per.items():
                    syncs[name].setdefault(who.split()[0], []).append(value)
                print(
                    f"  round {round_} {name}: p50 {_pct(latencies, 0.5):.2f} ms, "
                    f"p99 {_pct(latencies, 0.99):.2f} ms; syncs per publish "
                    + ", ".join(f"{who} {value:.2f}" for who, value in sorted(per.items()))
                )
        print()
        (old, new) = builds
        for name in builds:
            values = figures[name]
            print(
                f"{name:24} p50 {_pct(values, 0.5):6.2f} ms  p99 {_pct(values, 0.99):6.2f} ms  "
                f"mean {statistics.fmean(values):6.2f} ms; syncs per publish: "
                + ", ".join(
                    f"{who} {statistics.median(v):.2f}" for who, v in sorted(syncs[name].items())
                )
            )
        print(
            f"ratio this / baseline: p50 {_pct(figures[new], 0.5) / _pct(figures[old], 0.5):.2f}, "
            f"p99 {_pct(figures[new], 0.99) / _pct(figures[old], 0.99):.2f}"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
