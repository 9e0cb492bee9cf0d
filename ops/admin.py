"""`paxq status`: every node's view, asked of each node directly."""

from __future__ import annotations

import json
import signal

import trio

from paxq.client.connection import ConnectionLost, call, connect
from paxq.client.errors import PaxqError

Address = tuple[str, int]
TIMEOUT_S = 3.0


async def _status_of(address: Address) -> dict:
    try:
        with trio.fail_after(TIMEOUT_S):
            async with connect(address, timeout_s=TIMEOUT_S) as connection:
                return await call(connection, "status")  # type: ignore[return-value]
    except (OSError, TimeoutError, trio.TooSlowError, ConnectionLost) as error:
        return {"error": f"unreachable: {error.__class__.__name__}"}
    except PaxqError as error:  # (after ConnectionLost, which is one)
        return {"error": str(error)}


async def gather_status(addresses: list[Address]) -> list[dict]:
    results: list[dict] = [{} for _ in addresses]

    async def one(i: int, address: Address) -> None:
        results[i] = await _status_of(address)

    async with trio.open_nursery() as nursery:
        for i, address in enumerate(addresses):
            nursery.start_soon(one, i, address)
    return results


def print_status(addresses: list[Address], as_json: bool = False) -> int:
    statuses = trio.run(gather_status, addresses)
    if as_json:
        for address, status in zip(addresses, statuses, strict=True):
            print(json.dumps({"address": f"{address[0]}:{address[1]}", **status}))
    else:
        print(status_table(addresses, statuses))
    return 0 if any("error" not in s for s in statuses) else 1


def status_table(addresses: list[Address], statuses: list[dict]) -> str:
    """One line per node: role, ballot, commit, lag, pipeline, elections, latencies, size.
    Latencies (commit: arrival to answer; fsync: one synced write) are bucket estimates of
    p50/p99 in ms, shown where the node runs with metrics (`--metrics`)."""
    top = max((s.get("commit", 0) for s in statuses if "error" not in s), default=0)
    lines = [
        f"{'address':21} {'node':>4} {'role':9} {'ballot':>7} {'leader':>6} {'commit':>8} "
        f"{'lag':>5} {'pipe':>4} {'elect':>5} {'commit p50/p99':>14} {'fsync p50/p99':>13} "
        f"{'storage':>10}"
    ]
    for (host, port), s in zip(addresses, statuses, strict=True):
        where = f"{host}:{port}"
        if "error" in s:
            lines.append(f"{where:21} {s['error']}")
            continue
        ballot = ".".join(map(str, s["ballot"])) if s.get("ballot") else "-"
        leader = "-" if s.get("leader") is None else s["leader"]
        elections = s.get("elections", {})
        lines.append(
            f"{where:21} {s['node']:>4} {s['role']:9} {ballot:>7} {leader:>6} "
            f"{s['commit']:>8} {top - s['applied']:>5} {s.get('pipeline', 0):>4} "
            f"{elections.get('won', 0):>5} {_latency(s.get('commit_ms')):>14} "
            f"{_latency(s.get('fsync_ms')):>13} {_size(s.get('storage_bytes') or 0):>10}"
        )
    return "\n".join(lines)


def _latency(summary: dict | None) -> str:
    if not summary or not summary.get("count"):
        return "-"

    def one(value: float | None) -> str:
        return ">10s" if value is None else f"{value:g}"

    return f"{one(summary['p50'])}/{one(summary['p99'])}"


async def top(addresses: list[Address], client_seeds: list[str], every_s: float = 1.0) -> None:
    """`paxq top`: the status table and every topic's subscriptions, redrawn every second,
    until SIGINT or SIGTERM. The signal cancels the redraw: a KeyboardInterrupt raised
    wherever the loop happens to be could leave the client's connections half closed."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            nursery.start_soon(_redraw, addresses, client_seeds, every_s)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


async def _redraw(addresses: list[Address], client_seeds: list[str], every_s: float) -> None:
    from paxq.client import Client

    async with Client(client_seeds, request_timeout_s=every_s * 3) as client:
        while True:
            statuses = await gather_status(addresses)
            lines = [status_table(addresses, statuses), ""]
            lines.append(
                f"{'topic':30} {'subscription':20} {'depth':>9} {'in flight':>9} "
                f"{'delayed':>8} {'dead':>7} {'oldest':>9}"
            )
            try:
                for entry in (await client.topics())[:50]:
                    described = await client.describe(entry["topic"])
                    for name, sub in described["subscriptions"].items():
                        oldest_s = sub["oldest_unacked_age_ms"] / 1000
                        lines.append(
                            f"{entry['topic'][:30]:30} {(name or '(queue)')[:20]:20} "
                            f"{sub['depth']:>9} {sub['in_flight']:>9} {sub['delayed']:>8} "
                            f"{sub['dead_lettered']:>7} {oldest_s:>8.1f}s"
                        )
            except PaxqError as error:
                lines.append(f"(topics unavailable: {error})")
            print("\x1b[H\x1b[2J" + "\n".join(lines), flush=True)
            await trio.sleep(every_s)


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
