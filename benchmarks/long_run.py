"""Memory and disk over a long run: a 3-node cluster (default settings: a snapshot every 2048
slots, 256 slots of log kept behind it) takes closed-loop 100-byte appends until `--commands`
are acknowledged; every few seconds it prints each node's resident memory (VmRSS) and the size
of its data folder. Bounded means both level off while the log keeps growing.

    .venv/bin/python benchmarks/long_run.py [--commands 1000000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

from commit import find_leader, paxq_client, paxq_cluster
from provenance import git_commit


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / (1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--depth", type=int, default=512)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    args = parser.parse_args()
    print(f"commit {git_commit()}; until {args.commands:,} appends of 100 B are acknowledged")
    with paxq_cluster() as (procs, data, addresses, _):
        ctx = mp.get_context("fork")
        out = ctx.Queue()
        started = time.perf_counter()
        acked = 0
        print(f"{'s':>6} {'acked':>10}  " + "  ".join(f"rss{n} MiB  disk{n} MiB" for n in range(3)))
        while acked < args.commands:
            leader = find_leader(addresses)  # leadership may move (see the issue notes)
            workers = [
                ctx.Process(
                    target=paxq_client,
                    args=(addresses[leader], 100, args.depth, 0.0, args.every, out),
                )
                for _ in range(args.clients)
            ]
            for worker in workers:
                worker.start()
            acked += sum(out.get(timeout=args.every + 60)[0] for _ in workers)
            for worker in workers:
                worker.join(10)
            cells = [
                f"{rss_mib(proc.pid):9.1f}  {folder_mib(data / f'node{n}'):10.1f}"
                for n, proc in enumerate(procs)
            ]
            print(f"{time.perf_counter() - started:6.0f} {acked:>10,}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
