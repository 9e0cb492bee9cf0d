"""A worker process for the tests: a WorkerPool on a queue of numbered tasks. It writes
"start N" when a handler begins task N and "acked N" once the cluster confirmed its ack, one
line each, unbuffered (a SIGKILL loses nothing written). SIGTERM stops it gracefully.

    python worker_process.py SEEDS QUEUE OUT_FILE CONCURRENCY
"""

from __future__ import annotations

import json
import signal
import sys

import trio

from paxq.client import Client, Delivery, WorkerPool


async def main(seeds: str, queue: str, path: str, concurrency: int) -> None:
    with open(path, "a", buffering=1) as out:

        def task_of(delivery: Delivery) -> int:
            return json.loads(delivery.body)["args"][0]

        async def handler(delivery: Delivery) -> None:
            out.write(f"start {task_of(delivery)}\n")
            await trio.sleep(0.002)  # the work

        def acked(delivery: Delivery) -> None:
            out.write(f"acked {task_of(delivery)}\n")

        async with Client(seeds) as client:
            pool = WorkerPool(
                client, queue, handler, concurrency=concurrency, lease_s=3.0, on_acked=acked
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.run)
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        pool.stop()
                        break


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
