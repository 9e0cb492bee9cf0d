"""`paxq status`: every node's view, asked of each node directly."""

from __future__ import annotations

import json

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
    except PaxqError as error:
        return {"error": str(error)}
    except (OSError, TimeoutError, trio.TooSlowError, ConnectionLost) as error:
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
