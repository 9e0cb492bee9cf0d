"""A node holding a million queued messages: resident memory, snapshot and restart.

A 3-node cluster (synced RocksDB, `--snapshot-every` slots between snapshots) gets a queue and
`--messages` messages of `--size` bytes, published `--per-command` to a command with
`--depth` commands in flight. Nothing consumes them. Then it reports, per node, resident memory
(VmRSS) and the data folder's size, the last snapshot's duration and size, and kills one node
with SIGKILL, starts it again and times how long until it serves again with everything
applied (its snapshot restored and the log above it replayed). RSS after the restart too.
With `--probe N`, it times N messages into the empty queue at the start and N more into the
full one, then `--turns` turns of N into the deep queue and N into a new, empty queue of the
same cluster, one after the other (the ratio of a queue's depth alone, the drift of the
machine and the store's compactions falling on both).

    .venv/bin/python benchmarks/queue_memory.py [--messages 1000000 --size 1024]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import time

from commit import _exchange, find_leader, paxq_cluster
from long_run import folder_mib, rss_mib
from provenance import git_commit

from paxq.client.wire import ErrorCode, FrameDecoder, encode_frame
from paxq.client.wire.protocol import HELLO

QUEUE = "work"


def connect(address: tuple[str, int]) -> tuple[socket.socket, FrameDecoder]:
    sock = socket.create_connection(address, timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    decoder = FrameDecoder(64 << 20)
    _exchange(sock, decoder, HELLO)
    return sock, decoder


def status(address: tuple[str, int]) -> dict:
    sock, decoder = connect(address)
    with sock:
        return _exchange(sock, decoder, {"id": 1, "op": "status"})["status"]


class LeaderLost(Exception):
    pass


def load(
    addresses: list[tuple[str, int]],
    seqs: range,
    size: int,
    per: int,
    depth: int,
    queue: str = QUEUE,
) -> tuple[float, int]:
    """Publish the commands numbered `seqs` (`per` messages each) as an idempotent producer,
    following the leader if it moves (a command whose outcome was lost is sent again under
    the same sequence number: the machine answers it with the original offsets instead of
    appending twice). Returns (seconds, leader changes seen)."""
    body = os.urandom(size)
    done: set[int] = set()
    started = time.perf_counter()
    changes = 0
    while len(done) < len(seqs):
        try:
            _load_from(addresses[find_leader(addresses)], queue, body, per, seqs, depth, done)
        except (OSError, LeaderLost):
            changes += 1
    return time.perf_counter() - started, changes


def _load_from(
    address, queue: str, body: bytes, per: int, seqs: range, depth: int, done: set[int]
) -> None:
    sock, decoder = connect(address)
    messages = [{"body": body}] * per
    todo = (seq for seq in seqs if seq not in done)

    def send() -> bool:
        seq = next(todo, None)
        if seq is None:
            return False
        sock.sendall(
            encode_frame(
                {
                    "id": seq,
                    "op": "publish",
                    "topic": queue,
                    "messages": messages,
                    "producer": "loader",
                    "seq": seq,
                }
            )
        )
        return True

    with sock:
        in_flight = sum(send() for _ in range(depth))
        while in_flight:
            data = sock.recv(1 << 20)
            if not data:
                raise LeaderLost("the leader closed the connection")
            for reply in decoder.feed(data):
                in_flight -= 1
                if not reply.get("ok"):
                    if reply.get("error") in (ErrorCode.NOT_LEADER, ErrorCode.UNKNOWN_OUTCOME):
                        raise LeaderLost(reply["message"])
                    raise RuntimeError(f"publish failed: {reply}")
                done.add(reply["id"])
                in_flight += send()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--per-command", type=int, default=100)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--snapshot-every", type=int, default=256)
    parser.add_argument(
        "--probe",
        type=int,
        default=0,
        help="also time this many messages into the empty queue (the first of the load) and "
        "as many more once it holds --messages, and compare the two rates",
    )
    parser.add_argument(
        "--turns",
        type=int,
        default=3,
        help="with --probe: then as many turns of the deep queue and a new empty one",
    )
    args = parser.parse_args()
    print(
        f"commit {git_commit()}; {args.messages:,} messages of {args.size} B into one queue, "
        f"{args.per_command} per publish, {args.depth} publishes in flight, "
        f"--snapshot-every {args.snapshot_every}, probe {args.probe:,}"
    )
    per = args.per_command
    if args.probe and args.probe < per:
        parser.error(f"--probe {args.probe} is less than one publish (--per-command {per})")
    commands, probe = args.messages // per, args.probe // per
    extra = ("--snapshot-every", str(args.snapshot_every), "--snapshot-keep", "64")
    with paxq_cluster(extra=extra) as (procs, data, addresses, leader):
        sock, decoder = connect(addresses[leader])
        with sock:
            created = _exchange(
                sock, decoder, {"id": 1, "op": "create", "topic": QUEUE, "kind": "queue"}
            )
            assert created["ok"], created
        shape = (args.size, per, args.depth)
        empty_s, changes = load(addresses, range(probe), *shape) if probe else (0.0, 0)
        rest_s, more = load(addresses, range(probe, commands), *shape)
        seconds, changes = empty_s + rest_s, changes + more
        print(
            f"loaded in {seconds:.1f} s: {args.messages / seconds:,.0f} messages/s "
            f"({changes} leader changes followed)"
        )
        if probe:
            full_s, more = load(addresses, range(commands, commands + probe), *shape)
            empty_rate, full_rate = probe * per / empty_s, probe * per / full_s
            print(
                f"{probe * per:,} messages into the empty queue: {empty_rate:,.0f}/s; into the "
                f"queue holding {commands * per:,}: {full_rate:,.0f}/s "
                f"(ratio {full_rate / empty_rate:.2f}; {more} leader changes followed)"
            )
            # The rate at the start met an empty store on an idle machine; this compares a
            # queue's depth alone: the deep queue and a new, empty one of the same cluster,
            # taking turns so that the machine's drift and the store's compactions hit both.
            ratios = []
            for turn in range(args.turns):
                empty = f"{QUEUE}-empty-{turn}"
                request = {"id": 1, "op": "create", "topic": empty, "kind": "queue"}
                sock, decoder = connect(addresses[find_leader(addresses)])
                with sock:
                    assert _exchange(sock, decoder, request)["ok"]
                seqs = range(commands + probe * (turn + 1), commands + probe * (turn + 2))
                deep_s, more = load(addresses, seqs, *shape)
                fresh_s, more_fresh = load(addresses, range(probe), *shape, queue=empty)
                ratios.append(fresh_s / deep_s)
                print(
                    f"turn {turn + 1}: into the deep queue {probe * per / deep_s:,.0f}/s, into "
                    f"an empty one {probe * per / fresh_s:,.0f}/s (ratio {ratios[-1]:.2f}; "
                    f"{more + more_fresh} leader changes followed)"
                )
            median = statistics.median(ratios)
            print(f"deep / empty queue, median of {args.turns} turns: {median:.2f}")
        leader = find_leader(addresses)
        commit = status(addresses[leader])["commit"]
        while min(status(a)["applied"] for a in addresses) < commit:
            time.sleep(0.2)
        sock, decoder = connect(addresses[leader])
        with sock:
            described = _exchange(sock, decoder, {"id": 2, "op": "describe", "topic": QUEUE})
        depth = described["result"]["subscriptions"][""]["depth"]
        print(f"queue depth {depth:,}, {described['result']['bytes'] / 2**20:,.0f} MiB of payload")
        for node, proc in enumerate(procs):
            s = status(addresses[node])
            print(
                f"node {node} ({s['role']}): RSS {rss_mib(proc.pid):.0f} MiB, "
                f"data {folder_mib(data / f'node{node}'):,.0f} MiB, last snapshot "
                f"{s['snapshots']['last']}; elections won {s['elections']['won']}, longest "
                f"turn {s['turn_ms_max']} ms, tick late {s['tick_late_ms_max']} ms at most"
            )
        # Restart a follower holding everything: kill -9, start it again, wait until it
        # serves with every slot applied.
        victim = next(n for n in range(3) if n != leader)
        applied = status(addresses[victim])["applied"]
        procs[victim].kill()
        procs[victim].wait(10)
        started = time.perf_counter()
        log = open(data / f"node{victim}.restart.log", "wb")  # noqa: SIM115
        procs[victim] = subprocess.Popen(procs[victim].args, stdout=log, stderr=log)
        while True:
            try:
                s = status(addresses[victim])
                if s["applied"] >= applied:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        restart_s = time.perf_counter() - started
        print(
            f"node {victim} restarted (kill -9) and serving with all {applied} slots applied in "
            f"{restart_s:.1f} s; RSS {rss_mib(procs[victim].pid):.0f} MiB"
        )
        assert find_leader(addresses) is not None
        for node in range(3):
            lines = (data / f"node{node}.log").read_text(errors="replace").splitlines()
            late = [line for line in lines if "ms late" in line or "write took" in line]
            shown = late[:12]
            print(f"node {node}: {len(late)} late ticks and slow writes logged", *shown, sep="\n  ")


if __name__ == "__main__":
    main()
