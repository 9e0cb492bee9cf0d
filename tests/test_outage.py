"""How `consume` and `tail` wait through an outage: one rule, `Client(outage_s=)`, counted from
the first unanswered request and said in the log, on trio's MockClock."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from paxq.client import Client, Unavailable, Unreachable

REQUEST_S = 30.0  # what one failed call takes: the client's request_timeout_s


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class Down:
    """A cluster that answers nothing until `up_at` (MockClock seconds)."""

    def __init__(self, up_at: float = float("inf")) -> None:
        self.up_at = up_at
        self.calls = 0

    async def request(self, op: str, fields: dict, **options: object) -> object:
        self.calls += 1
        if trio.current_time() < self.up_at:
            await trio.sleep(REQUEST_S)
            raise Unavailable(f"{op}: no answer from the cluster within 30.0s (last: refused)")
        await trio.sleep(1.0)  # a long poll that found nothing
        if op == "claim":
            empty: dict = {"offsets": [], "tokens": [], "deliveries": [], "published_ms": []}
            return empty | {"payloads": [], "deadline_ms": 0, "now_ms": 0}
        return {"from": fields["from"], "next": fields["from"], "end": 0, "messages": []}


async def test_a_tail_gives_up_after_outage_s_and_says_so_as_it_waits(clock, caplog) -> None:
    caplog.set_level(logging.WARNING, "paxq.client")
    async with Client(["127.0.0.1:1"], outage_s=120) as client:
        client.request = Down().request  # type: ignore[method-assign]
        began = trio.current_time()
        with pytest.raises(Unavailable) as caught:
            await anext(client.tail("prices", start=0))
        waited = trio.current_time() - began
    assert 120 <= waited < 120 + REQUEST_S + 2
    assert "tailing prices: no answer from the cluster for 1" in str(caught.value)
    assert "outage_s=120" in str(caught.value) and "refused" in str(caught.value)
    said = [r.getMessage() for r in caplog.records if "trying until 120s" in r.getMessage()]
    assert 3 <= len(said) <= 5, said  # at each failed request: every 30 s, not more


async def test_a_consumer_waits_out_a_shorter_outage_then_goes_on(clock, caplog) -> None:
    caplog.set_level(logging.WARNING, "paxq.client")
    async with Client(["127.0.0.1:1"], outage_s=120) as client:
        down = Down(up_at=50)
        client.request = down.request  # type: ignore[method-assign]
        async with client.consume("jobs", wait_s=0) as deliveries:
            with trio.move_on_after(400):
                await anext(deliveries)  # nothing ever comes: claims answered empty
        assert down.calls > 5
    words = [r.getMessage() for r in caplog.records]
    assert "consuming jobs: the cluster answers again after 63s" in words, words


async def test_no_limit_waits_for_ever_and_a_cluster_never_reached_ends_at_once(clock) -> None:
    async with Client(["127.0.0.1:1"], outage_s=None) as client:
        down = Down()
        client.request = down.request  # type: ignore[method-assign]
        with trio.move_on_after(3600) as scope:
            await anext(client.tail("prices", start=0))
        assert scope.cancelled_caught and down.calls > 100

        async def unreachable(op: str, fields: dict, **options: object) -> object:
            raise Unreachable("no paxq node answered within 5.0s: 127.0.0.1:1: refused")

        client.request = unreachable  # type: ignore[method-assign]
        began = trio.current_time()
        with pytest.raises(Unreachable):
            await anext(client.tail("prices", start=0))
        assert trio.current_time() == began
    with pytest.raises(ValueError, match="outage_s"):
        Client(["127.0.0.1:1"], outage_s=-1)
