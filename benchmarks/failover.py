"""How long clients feel a failover, on two builds of paxq side by side.

Two 3-node clusters of real `paxq node` processes on loopback (RocksDB, synced writes): this
checkout and another commit checked out beside it (`--baseline-tree`, made with `git worktree
add /tmp/base <commit>`). Each round, on each build in turn, 4 publishers (this checkout's
client: the protocol is the same) publish one message at a time in a loop while the leader is
faulted, once per kind:

- `pause`: SIGSTOP for `--fault-s` seconds, then SIGCONT (a stalled VM, a long GC);
- `kill`: kill -9, restarted after `--fault-s` seconds.

For each it prints: the time from the fault to the first acknowledged publish (the stall a
client sees), the longest gap between acknowledgements around it, the time until another node
leads (status polled every 50 ms), and how many leader changes follow the old leader's return
(a healed node should depose nobody: 0).

    .venv/bin/python benchmarks/failover.py --baseline-tree /tmp/base [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

import trio
from provenance import git_commit, tree_commit
from single_publish import Cluster, _import_root

from paxq.client import Client, PaxqError
from paxq.ops.admin import gather_status

_PUBLISHERS = 4


async def _leader_of(cluster: Cluster) -> int | None:
    """The one node that says it leads, each asked with a short timeout (a paused node
    answers nothing)."""
    statuses: list[dict] = []

    async def one(address: tuple[str, int]) -> None:
        with trio.move_on_after(0.3):
            [status] = await gather_status([address])
            statuses.append(status)

    async with trio.open_nursery() as nursery:
        for address in cluster.addresses:
            nursery.start_soon(one, address)
    leaders = [s["node"] for s in statuses if s.get("role") == "leader"]
    return leaders[0] if len(leaders) == 1 else None


async def _fault(cluster: Cluster, kind: str, fault_s: float) -> dict[str, float]:
    while (first := await _leader_of(cluster)) is None:
        await trio.sleep(0.05)
    acks: list[float] = []
    stop = trio.Event()

    async def publisher(client: Client) -> None:
        while not stop.is_set():
            try:
                await client.publish("failover", b"f" * 100)
            except PaxqError:
                continue
            acks.append(time.monotonic())

    async with (
        Client([f"{h}:{p}" for h, p in cluster.addresses], request_timeout_s=60) as client,
        trio.open_nursery() as nursery,
    ):
        await client.create_topic("failover", exist_ok=True)
        for _ in range(_PUBLISHERS):
            nursery.start_soon(publisher, client)
        await trio.sleep(1.0)
        proc = cluster.procs[first]
        faulted = time.monotonic()
        proc.send_signal(signal.SIGSTOP if kind == "pause" else signal.SIGKILL)
        new_leader_s = float("nan")
        while time.monotonic() - faulted < fault_s:
            leader = await _leader_of(cluster)
            if leader is not None and leader != first and new_leader_s != new_leader_s:
                new_leader_s = time.monotonic() - faulted
            await trio.sleep(0.05)
        if kind == "pause":
            proc.send_signal(signal.SIGCONT)
        else:
            proc.wait(10)
            cluster.restart(first)
        back = time.monotonic()
        changes, last = 0, await _leader_of(cluster)
        while time.monotonic() - back < 5.0:
            leader = await _leader_of(cluster)
            if leader is not None and leader != last:
                changes += 1
                last = leader
            await trio.sleep(0.05)
        stop.set()
    after = [t for t in acks if t > faulted]
    around = [t for t in acks if faulted - 1.0 <= t]
    gaps = [b - a for a, b in itertools.pairwise(around)]
    return {
        "first ack s": (after[0] - faulted) if after else float("inf"),
        "longest gap s": max(gaps, default=float("inf")),
        "new leader s": new_leader_s,
        "changes after return": float(changes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-tree", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fault-s", type=float, default=4.0)
    args = parser.parse_args()
    base_tree = args.baseline_tree.resolve()
    base_commit = tree_commit(base_tree)
    scratch = Path(tempfile.mkdtemp(prefix="paxq-failover-"))
    kinds = ("pause", "kill")
    try:
        builds = {
            f"baseline {base_commit}": (_import_root(base_tree, scratch), base_tree),
            f"this {git_commit()}": (None, None),
        }
        figures: dict[tuple[str, str], list[dict[str, float]]] = {}
        print(f"failover under {_PUBLISHERS} publishers, 3 nodes, {args.rounds} rounds")
        for round_ in range(args.rounds):
            order = list(builds) if round_ % 2 == 0 else list(reversed(builds))
            for name in order:
                for kind in kinds:
                    data = scratch / f"{name.split()[0]}-{round_}-{kind}"
                    data.mkdir()
                    pythonpath, tree = builds[name]
                    cluster = Cluster(name, data, pythonpath, tree)
                    cluster.start()
                    try:
                        result = trio.run(_fault, cluster, kind, args.fault_s)
                    finally:
                        cluster.stop()
                    figures.setdefault((name, kind), []).append(result)
                    shown = ", ".join(f"{k} {v:.2f}" for k, v in result.items())
                    print(f"  round {round_ + 1} {name} {kind}: {shown}")
        print("medians:")
        for (name, kind), results in figures.items():
            medians = {k: statistics.median(r[k] for r in results) for k in results[0]}
            shown = ", ".join(f"{k} {v:.2f}" for k, v in medians.items())
            print(f"  {name:24} {kind:5}: {shown}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
