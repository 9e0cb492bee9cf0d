"""`paxq status`, `paxq append`, `paxq read`: talk to a cluster through its client ports."""

from __future__ import annotations

import json
import sys

import trio

from paxq.client.basic import Connection, parse_address

Address = tuple[str, int]
TIMEOUT_S = 3.0


async def _status_of(address: Address) -> dict:
    try:
        with trio.fail_after(TIMEOUT_S):
            async with await Connection.open(address) as connection:
                reply = await connection.request("status")
        return reply.get("status", {"error": reply.get("message")})
    except (OSError, trio.TooSlowError, ConnectionError) as error:
        return {"error": f"unreachable: {error.__class__.__name__}"}


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
    top = max((s.get("commit", 0) for s in statuses if "error" not in s), default=0)
    if as_json:
        for address, status in zip(addresses, statuses, strict=True):
            print(json.dumps({"address": f"{address[0]}:{address[1]}", **status}))
    else:
        print(
            f"{'address':21} {'node':>4} {'role':9} {'ballot':>8} {'leader':>6} "
            f"{'commit':>8} {'applied':>8} {'lag':>6} {'storage':>10}"
        )
        for (host, port), s in zip(addresses, statuses, strict=True):
            where = f"{host}:{port}"
            if "error" in s:
                print(f"{where:21} {s['error']}")
                continue
            ballot = ".".join(map(str, s["ballot"])) if s.get("ballot") else "-"
            leader = "-" if s.get("leader") is None else s["leader"]
            print(
                f"{where:21} {s['node']:>4} {s['role']:9} {ballot:>8} {leader:>6} "
                f"{s['commit']:>8} {s['applied']:>8} {top - s['commit']:>6} "
                f"{_size(s.get('storage_bytes', 0)):>10}"
            )
    return 0 if any("error" not in s for s in statuses) else 1


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


_LOST = (
    OSError,
    ConnectionError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


QUERIES = frozenset({"status", "list", "describe", "read"})


async def request_leader(addresses: list[Address], op: str, fields: dict[str, object]) -> dict:
    """Ask the nodes in turn, following NOT_LEADER hints, until one answers.

    A node that cannot be reached (or does not answer the hello) is skipped. An append whose
    connection breaks after it was sent is not sent again elsewhere: it may have been applied,
    so its outcome is reported as unknown (idempotent producers, a later issue, lift this).
    """
    tried: list[str] = []
    queue = list(addresses)
    while queue and len(tried) < 2 * len(addresses) + 2:
        address = queue.pop(0)
        tried.append(f"{address[0]}:{address[1]}")
        try:
            with trio.fail_after(TIMEOUT_S):
                connection = await Connection.open(address)
        except _LOST:
            continue
        async with connection:
            try:
                with trio.fail_after(TIMEOUT_S):
                    reply = await connection.request(op, **fields)
            except _LOST:
                if op not in QUERIES:
                    return {
                        "ok": False,
                        "unknown": True,
                        "message": f"lost {tried[-1]} after sending: outcome unknown",
                    }
                continue
        if reply.get("ok"):
            return reply
        if reply.get("leader"):
            queue.insert(0, parse_address(reply["leader"]))
        elif reply.get("error") is not None and not queue:
            return reply
    return {"ok": False, "message": f"no node answered (tried {', '.join(tried)})"}


def command(addresses: list[Address], op: str, fields: dict, verb: str) -> int:
    """Send one command or query to the cluster (the leader for commands); print its result
    as JSON lines (one per message for claim and read)."""
    reply = trio.run(request_leader, addresses, op, fields)
    if not reply.get("ok"):
        print(f"paxq {verb}: {reply.get('message')}", file=sys.stderr)
        return 1
    result = reply["result"]
    if isinstance(result, dict) and "messages" in result and op in ("claim", "read"):
        for message in result["messages"]:
            print(json.dumps(_printable(message)))
    else:
        print(json.dumps(_printable(result)))
    return 0


def _printable(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value
