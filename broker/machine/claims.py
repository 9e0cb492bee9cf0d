"""A claim's result, read: it comes in columns, one list per field (see `QueueMachine._claim`
and docs/protocol.md); the simulator and the tests read it one message at a time."""

from __future__ import annotations

from paxq.client.wire import Encoded


def claimed(result: dict) -> list[dict]:
    """A claim's result, in columns, as one map per message (`body`, `key` and `headers`
    only where the result carries payloads, as an answered claim does)."""
    columns = zip(
        result["offsets"],
        result["tokens"],
        result["deliveries"],
        result["published_ms"],
        strict=True,
    )
    out = [
        {
            "offset": offset,
            "token": token,
            "deliveries": deliveries,
            "deadline_ms": result["deadline_ms"],
            "published_ms": published_ms,
        }
        for offset, token, deliveries, published_ms in columns
    ]
    payloads = result.get("payloads")
    if payloads is not None:
        payloads = payloads.decode() if isinstance(payloads, Encoded) else payloads
        for message, (body, key, headers) in zip(out, payloads, strict=True):
            message["body"], message["key"], message["headers"] = body, key, headers
    return out
