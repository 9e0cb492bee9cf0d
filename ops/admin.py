"""`paxq status`: every node's view, asked of each node directly."""

from __future__ import annotations

import contextlib
import json
import signal

import trio

from paxq.client.connection import ConnectionLost, call, connect
from paxq.client.errors import PaxqError

from .options import EXIT_INTERRUPTED, EXIT_OK, EXIT_UNAVAILABLE

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


#: topics `paxq top` shows at most (in the order `list` gives them)
TOP_TOPICS_MAX = 100
#: the widest a table printed into a pipe may be
TABLE_CHARS_MAX = 400


async def top(
    addresses: list[Address], client_seeds: list[str], every_s: float = 1.0, once: bool = False
) -> int:
    """`paxq top`: the status table and every topic with its subscriptions, redrawn every
    `every_s` until SIGINT or SIGTERM (or printed once). Into a terminal it redraws in place;
    into a pipe it prints plain tables, no escape codes. The signal cancels the redraw: a
    KeyboardInterrupt raised wherever the loop happens to be could leave the client's
    connections half closed."""
    outcome = [EXIT_OK]
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            nursery.start_soon(_redraw, addresses, client_seeds, every_s, once, nursery, outcome)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return EXIT_INTERRUPTED
    return outcome[0]


async def _redraw(
    addresses: list[Address],
    client_seeds: list[str],
    every_s: float,
    once: bool,
    nursery: trio.Nursery,
    outcome: list[int],
) -> None:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text

    from paxq.client import Client

    console = Console()
    if not console.is_terminal:  # a pipe: whole lines, for grep and awk
        console = Console(width=TABLE_CHARS_MAX)
    rates = Rates()
    shown = False
    live = Live(console=console, auto_refresh=False) if console.is_terminal and not once else None
    async with Client(client_seeds, request_timeout_s=every_s * 3) as client:
        with live or contextlib.nullcontext():
            while True:
                statuses = await gather_status(addresses)
                try:
                    topics = await _topics(client)
                    error = None
                except PaxqError as failure:
                    topics, error = [], failure
                view = Group(
                    Text(status_table(addresses, statuses)),
                    Text(""),
                    topics_table(topics, rates.update(topics, trio.current_time())),
                    Text(f"(topics unavailable: {error})" if error else ""),
                )
                if live is not None:
                    live.update(view, refresh=True)
                elif not once or shown:  # once: the second snapshot, which has rates
                    console.print(view)
                if once and shown:
                    if all("error" in status for status in statuses):
                        outcome[0] = EXIT_UNAVAILABLE
                    nursery.cancel_scope.cancel()
                    return
                shown = True
                await trio.sleep(every_s)


async def _topics(client) -> list[dict]:
    found = []
    for entry in (await client.topics())[:TOP_TOPICS_MAX]:
        found.append(await client.describe(entry["topic"]))
    return found


class Rates:
    """Messages per second published to each topic and acked by each subscription, from two
    snapshots in turn (none on the first)."""

    def __init__(self) -> None:
        self._last: tuple[float, dict] | None = None

    def update(self, topics: list[dict], now: float) -> dict:
        counts = {}
        for t in topics:
            counts[t["topic"], None] = t["next"]
            for name, sub in t["subscriptions"].items():
                counts[t["topic"], name] = sub["acked"]
        last, self._last = self._last, (now, counts)
        if last is None or now <= last[0]:
            return {}
        elapsed = now - last[0]
        return {k: max(0, v - last[1][k]) / elapsed for k, v in counts.items() if k in last[1]}


def topics_table(topics: list[dict], rates: dict):
    """One row per topic (its publish rate) and one per subscription (depth, rates, age)."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for name, justify in (
        ("topic", "left"),
        ("subscription", "left"),
        ("kind", "left"),
        ("messages", "right"),
        ("in/s", "right"),
        ("depth", "right"),
        ("in flight", "right"),
        ("delayed", "right"),
        ("acked/s", "right"),
        ("dead", "right"),
        ("oldest", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)

    def rate(key: tuple) -> str:
        return f"{rates[key]:.0f}" if key in rates else "-"

    for t in topics:
        name = t["topic"]
        table.add_row(name, "", t["kind"], f"{t['messages']:,}", rate((name, None)))
        for sub_name, sub in t["subscriptions"].items():
            table.add_row(
                "",
                sub_name or "(queue)",
                "",
                "",
                "",
                f"{sub['depth']:,}",
                f"{sub['in_flight']:,}",
                f"{sub['delayed']:,}",
                rate((name, sub_name)),
                f"{sub['dead_lettered']:,}",
                f"{sub['oldest_unacked_age_ms'] / 1000:.1f}s",
            )
    return table


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
