"""paxq against RabbitMQ quorum queues and NATS JetStream, side by side in one run.

Each system runs as 3 nodes on loopback, one system at a time; the systems take turns over
`--rounds` rounds (the order rotates each round, and every round starts from empty data
folders), so the machine's drift hits all alike. Every phase runs its client in a process
of its own, and the CPU seconds of that process and of each server are counted over the
measured window. Phases, for every system:

- publish 100 B and 1 KiB, batched, each message confirmed after replication, one producer
  with `--window` unconfirmed: paxq `Client.publish_soon` (confirmed by callback, the window
  its `publish_pending_max`); RabbitMQ publisher confirms (pika); NATS `js.publish_async`;
  and paxq `Client.publish` awaited by `--callers` concurrent callers (100 B);
- single publish: one caller waiting for each confirm (p50, p99);
- consume + ack from a backlog of `--backlog` 100 B messages: paxq through
  `client.consume(prefetch)` and through `WorkerPool`; RabbitMQ `basic_qos(prefetch)` and
  `basic_ack` of each; NATS a durable pull consumer, `fetch(prefetch)` and `ack()` of each.

What each syncs: paxq fdatasyncs its journal before any node acknowledges (a majority
has it on disk); a RabbitMQ quorum queue fsyncs its Raft log before confirming; NATS 2.9
does not fsync each message (it syncs every 2 minutes; acknowledged means "in a majority's
page cache"). RabbitMQ's and NATS's acks are sent and not confirmed; paxq's are confirmed.

    make bench-peers            (installs the `bench` extra; needs Debian's rabbitmq-server
                                 and nats-server: `apt-get install rabbitmq-server nats-server`)
    .venv/bin/python benchmarks/peers.py [--rounds 3] [--seconds 5] [--backlog 50000]
        [--systems paxq rabbitmq nats] [--json peers.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from commit import HOST, free_ports
from provenance import git_commit

TICKS_S = os.sysconf("SC_CLK_TCK")
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS_S


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not ready after {timeout_s:g} s")


def stop_pids(pids: list[int], timeout_s: float = 30.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


# ------------------------------------------------------------------------------ clusters


class Cluster:
    """3 nodes of one system, started in `folder`; `servers` names each server's pid."""

    name = ""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.servers: dict[str, int] = {}
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        stop_pids(list(self.servers.values()))
        for proc in self.procs:  # and whatever they started that was never named a server
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def client_info(self) -> dict:
        raise NotImplementedError

    def leader_changes(self) -> int:
        return 0

    def _spawn(self, argv: list[str], log: str, env: dict | None = None) -> subprocess.Popen:
        with open(self.folder / log, "ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=out, env=env, cwd=self.folder, start_new_session=True
            )
        self.procs.append(proc)
        return proc


class PaxqCluster(Cluster):
    name = "paxq"

    def start(self) -> None:
        ports = free_ports(6)
        peers = ",".join(f"{i}={HOST}:{ports[i]}" for i in range(3))
        clients = ",".join(f"{i}={HOST}:{ports[3 + i]}" for i in range(3))
        self.addresses = [f"{HOST}:{ports[3 + i]}" for i in range(3)]
        for node in range(3):
            proc = self._spawn(
                [
                    *(sys.executable, "-m", "paxq.ops.cli", "node", "--cluster", "peers"),
                    *("--id", str(node), "--data", str(self.folder / f"node{node}")),
                    *("--peers", peers, "--clients", clients, "--bootstrap"),
                ],
                f"node{node}.log",
            )
            self.servers[f"node{node}"] = proc.pid
        wait_for(lambda: self._leader() is not None, 60, "paxq leader")

    def _statuses(self) -> list[dict]:
        from commit import _exchange

        from paxq.client.wire import FrameDecoder
        from paxq.client.wire.protocol import HELLO

        out = []
        for address in self.addresses:
            host, port = address.rsplit(":", 1)
            with (
                contextlib.suppress(OSError, ConnectionError),
                socket.create_connection((host, int(port)), timeout=2) as sock,
            ):
                decoder = FrameDecoder()
                _exchange(sock, decoder, HELLO)
                out.append(_exchange(sock, decoder, {"id": 1, "op": "status"})["status"])
        return out

    def _leader(self) -> int | None:
        for status in self._statuses():
            if status["role"] == "leader":
                return status["node"]
        return None

    def leader_changes(self) -> int:
        return sum(s["elections"]["won"] for s in self._statuses())

    def client_info(self) -> dict:
        return {"seeds": self.addresses}


class RabbitCluster(Cluster):
    name = "rabbitmq"

    def _env(self, node: int) -> dict:
        base = self.folder / f"rabbit{node}"
        return {
            **os.environ,
            "HOME": str(self.folder / "home"),
            "RABBITMQ_NODENAME": f"rabbit{node}@localhost",
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.ports[node]),
            "RABBITMQ_DIST_PORT": str(self.ports[3 + node]),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "pid"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                "-kernel inet_dist_use_interface {127,0,0,1} "
                "+sbwt none +sbwtdcpu none +sbwtdio none"
            ),
            "ERL_EPMD_ADDRESS": HOST,
            "ERL_EPMD_PORT": str(self.epmd_port),
        }

    def _ctl(self, node: int, *args: str, timeout_s: float = 120) -> None:
        subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", f"rabbit{node}@localhost", *args],
            env=self._env(node),
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )

    def start(self) -> None:
        self.ports = free_ports(7)
        self.epmd_port = self.ports[6]
        home = self.folder / "home"
        home.mkdir(parents=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(os.urandom(16).hex())
        cookie.chmod(0o400)
        (self.folder / "enabled_plugins").write_text("[].\n")
        for node in range(3):
            base = self.folder / f"rabbit{node}"
            base.mkdir()
            (base / "rabbitmq.conf").write_text(
                f"listeners.tcp.1 = {HOST}:{self.ports[node]}\nloopback_users = none\n"
            )
            self._spawn([str(RABBIT_BIN / "rabbitmq-server")], f"rabbit{node}.out", self._env(node))
        for node in range(3):
            # waits for the pid file, then for the node to finish booting
            self._ctl(node, "wait", str(self.folder / f"rabbit{node}" / "pid"), "--timeout", "120")
            pid = int((self.folder / f"rabbit{node}" / "pid").read_text())
            self.servers[f"rabbit{node}"] = pid
        for node in (1, 2):
            self._ctl(node, "stop_app")
            self._ctl(node, "reset")
            self._ctl(node, "join_cluster", "rabbit0@localhost")
            self._ctl(node, "start_app")

    def stop(self) -> None:
        for node in range(3):
            with contextlib.suppress(subprocess.SubprocessError):
                self._ctl(node, "stop", timeout_s=60)
        super().stop()
        # Erlang leaves its port mapper running: the one on our port is ours to stop.
        # epmd takes its port from the environment, not its argv.
        epmds = []
        mine = f"ERL_EPMD_PORT={self.epmd_port}".encode()
        found = subprocess.run(["pgrep", "-x", "epmd"], capture_output=True, text=True)
        for pid in found.stdout.split():
            with contextlib.suppress(OSError):
                if mine in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    epmds.append(int(pid))
        stop_pids(epmds, 5)

    def client_info(self) -> dict:
        return {"port": self.ports[0]}  # the queue is declared on node 0: its leader


class NatsCluster(Cluster):
    name = "nats"

    def start(self) -> None:
        ports = free_ports(6)
        routes = ", ".join(f"nats-route://{HOST}:{ports[3 + i]}" for i in range(3))
        self.urls = [f"nats://{HOST}:{ports[i]}" for i in range(3)]
        for node in range(3):
            store = self.folder / f"nats{node}"
            store.mkdir()
            config = self.folder / f"nats{node}.conf"
            config.write_text(
                f"server_name: n{node}\nlisten: {HOST}:{ports[node]}\n"
                f"jetstream {{ store_dir: {json.dumps(str(store))}, max_memory_store: 1G, "
                f"max_file_store: 20G }}\n"
                f"cluster {{ name: peers, listen: {HOST}:{ports[3 + node]}, routes: [{routes}] }}\n"
            )
            proc = self._spawn(["nats-server", "-c", str(config)], f"nats{node}.log")
            self.servers[f"nats{node}"] = proc.pid
        wait_for(self._meta_leader, 60, "NATS JetStream meta leader")

    def _meta_leader(self) -> bool:
        return any(
            "JetStream cluster new metadata leader" in (self.folder / f"nats{n}.log").read_text()
            for n in range(3)
        )

    def client_info(self) -> dict:
        return {"urls": self.urls}


CLUSTERS: dict[str, type[Cluster]] = {
    "paxq": PaxqCluster,
    "rabbitmq": RabbitCluster,
    "nats": NatsCluster,
}

# -------------------------------------------------------------------------------- clients
#
# A client emits ("start",) when its measured window opens, ("end",) when it closes, then
# ("result", {...}); the parent reads every process's CPU at the two marks.


@dataclass
class Shape:
    phase: str  # publish, single, consume, pool
    size: int
    seconds: float
    warmup_s: float
    callers: int
    window: int
    backlog: int
    prefetch: int
    concurrency: int
    queue: str


def paxq_client(info: dict, shape: Shape, out) -> None:
    import trio

    from paxq.client import Client, WorkerPool

    body = b"x" * shape.size

    async def publish(client: Client, callers: int) -> dict:
        await client.create_queue(shape.queue)
        count = failed = 0
        latencies: list[float] = []
        measuring = False
        start = trio.current_time() + shape.warmup_s
        end = start + shape.seconds

        async def caller() -> None:
            nonlocal count
            while True:
                sent = time.perf_counter()
                await client.publish(shape.queue, body)
                if measuring:
                    count += 1
                    if callers == 1:
                        latencies.append(time.perf_counter() - sent)

        def confirmed(_offset, error) -> None:
            nonlocal count, failed
            if error is not None:
                failed += 1
            elif measuring:
                count += 1

        async def producer() -> None:
            # `window` unconfirmed at most (the client's publish_pending_max), as RabbitMQ's
            # and NATS's producers (publish_async_max_pending)
            while True:
                await client.publish_soon(shape.queue, body, on_done=confirmed)

        async with trio.open_nursery() as nursery:
            if callers:
                for _ in range(callers):
                    nursery.start_soon(caller)
            else:
                nursery.start_soon(producer)
            await trio.sleep_until(start)
            measuring = True
            out.put(("start",))
            await trio.sleep_until(end)
            measuring = False
            out.put(("end",))
            nursery.cancel_scope.cancel()
        return {"messages": count, "latencies": latencies, "failed": failed}

    async def consume(client: Client) -> dict:
        await client.create_queue(shape.queue)
        for start in range(0, shape.backlog, 5000):
            await client.publish_many(shape.queue, [body] * min(5000, shape.backlog - start))
        out.put(("start",))
        done = 0
        if shape.phase == "consume":
            answered = trio.Event()
            failed = 0

            def acked(_delivery, error) -> None:
                nonlocal done, failed
                done += 1
                failed += error is not None
                if done == shape.backlog:
                    answered.set()

            async with client.consume(shape.queue, prefetch=shape.prefetch) as deliveries:
                taken = 0
                async for delivery in deliveries:
                    delivery.ack_nowait(acked)  # as RabbitMQ's basic_ack: sent, not awaited
                    taken += 1
                    if taken == shape.backlog:
                        deliveries.stop_fetching()
                        break
                await answered.wait()  # every ack answered (committed), unlike the others'
            done -= failed
        else:

            async def handler(delivery) -> None:
                return None

            pool = WorkerPool(
                client,
                shape.queue,
                handler,
                concurrency=shape.concurrency,
                prefetch=shape.prefetch,
            )
            finished = trio.Event()

            def acked(_delivery) -> None:
                if pool.done >= shape.backlog:  # counted before this is called
                    finished.set()

            pool.on_acked = acked
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.run)
                await finished.wait()
                pool.stop()
            done = pool.done
        out.put(("end",))
        return {"messages": done, "latencies": []}

    async def run() -> None:
        # The producer's window is the client's bound on what is unanswered.
        pending = {"publish_pending_max": shape.window} if shape.phase == "publish" else {}
        async with Client(info["seeds"], **pending) as client:
            if shape.phase == "publish":
                result = await publish(client, 0)
            elif shape.phase == "callers":
                result = await publish(client, shape.callers)
            elif shape.phase == "single":
                result = await publish(client, 1)
            else:
                result = await consume(client)
            result["retries"] = client.retries
        out.put(("result", result))

    trio.run(run)


def rabbit_client(info: dict, shape: Shape, out) -> None:
    import pika

    params = pika.ConnectionParameters(HOST, info["port"], heartbeat=0)
    body = b"x" * shape.size
    props = pika.BasicProperties(delivery_mode=2)
    blocking = pika.BlockingConnection(params)
    channel = blocking.channel()
    channel.queue_declare(shape.queue, durable=True, arguments={"x-queue-type": "quorum"})

    if shape.phase == "single":
        channel.confirm_delivery()
        latencies: list[float] = []
        clock = time.perf_counter
        start = clock() + shape.warmup_s
        end = start + shape.seconds
        marked = False
        while True:
            sent = clock()
            if sent >= start and not marked:
                out.put(("start",))
                marked = True
            if sent >= end:
                break
            channel.basic_publish("", shape.queue, body, props, mandatory=False)
            if marked:
                latencies.append(clock() - sent)
        out.put(("end",))
        blocking.close()
        out.put(("result", {"messages": len(latencies), "latencies": latencies}))
        return
    blocking.close()

    def pipelined(total: int | None, seconds: float, marks: bool) -> int:
        """Publishes with up to `window` unconfirmed, for `total` messages or `seconds`."""
        state = {"sent": 0, "confirmed": 0, "counted": 0, "measuring": False, "over": False}

        def on_open(connection) -> None:
            connection.channel(on_open_callback=on_channel)

        def on_channel(ch) -> None:
            state["channel"] = ch
            ch.confirm_delivery(on_confirm, callback=lambda _frame: fill())
            if marks:
                connection.ioloop.call_later(shape.warmup_s, begin)

        def begin() -> None:
            state["measuring"] = True
            out.put(("start",))
            connection.ioloop.call_later(seconds, finish)

        def finish() -> None:
            state["measuring"] = False
            state["over"] = True
            out.put(("end",))
            connection.close()

        def fill() -> None:
            ch = state["channel"]
            while not state["over"] and state["sent"] - state["confirmed"] < shape.window:
                if total is not None and state["sent"] >= total:
                    break
                ch.basic_publish("", shape.queue, body, props)
                state["sent"] += 1

        def on_confirm(frame) -> None:
            method = frame.method
            if isinstance(method, pika.spec.Basic.Nack):
                raise RuntimeError("RabbitMQ refused a publish")
            tag = method.delivery_tag
            newly = (tag - state["confirmed"]) if method.multiple else 1
            state["confirmed"] = (
                max(state["confirmed"], tag) if method.multiple else state["confirmed"] + 1
            )
            if state["measuring"]:
                state["counted"] += newly
            if total is not None and state["confirmed"] >= total:
                state["over"] = True
                connection.close()
                return
            fill()

        connection = pika.SelectConnection(
            params, on_open_callback=on_open, on_close_callback=lambda *_: connection.ioloop.stop()
        )
        connection.ioloop.start()
        return state["counted"]

    if shape.phase == "publish":
        count = pipelined(None, shape.seconds, True)
        out.put(("result", {"messages": count, "latencies": []}))
        return

    pipelined(shape.backlog, 0, False)
    state = {"done": 0}

    def on_open(connection) -> None:
        connection.channel(on_open_callback=on_channel)

    def on_channel(ch) -> None:
        ch.basic_qos(prefetch_count=shape.prefetch, callback=lambda _frame: consume(ch))

    def consume(ch) -> None:
        out.put(("start",))
        ch.basic_consume(shape.queue, on_message)

    def on_message(ch, method, _props, _body) -> None:
        ch.basic_ack(method.delivery_tag)
        state["done"] += 1
        if state["done"] == shape.backlog:
            # a round trip behind the acks: the channel answers in order
            ch.queue_declare(shape.queue, passive=True, callback=lambda _frame: finish())

    def finish() -> None:
        out.put(("end",))
        connection.close()

    connection = pika.SelectConnection(
        params, on_open_callback=on_open, on_close_callback=lambda *_: connection.ioloop.stop()
    )
    connection.ioloop.start()
    out.put(("result", {"messages": state["done"], "latencies": []}))


def nats_client(info: dict, shape: Shape, out) -> None:
    import asyncio

    import nats

    body = b"x" * shape.size
    subject = f"{shape.queue}.in"

    async def run() -> dict:
        nc = await nats.connect(info["urls"])
        js = nc.jetstream(publish_async_max_pending=shape.window)
        await js.add_stream(name=shape.queue, subjects=[subject], num_replicas=3, storage="file")
        # As with the others, the client talks to the stream's leader (servers are n0..n2).
        leader = (await js.stream_info(shape.queue)).cluster.leader
        await nc.close()
        nc = await nats.connect(info["urls"][int(leader[1:])], dont_randomize=True)
        js = nc.jetstream(publish_async_max_pending=shape.window)
        loop = asyncio.get_running_loop()
        if shape.phase == "single":
            latencies: list[float] = []
            start = loop.time() + shape.warmup_s
            end = start + shape.seconds
            marked = False
            while True:
                sent = loop.time()
                if sent >= start and not marked:
                    out.put(("start",))
                    marked = True
                if sent >= end:
                    break
                await js.publish(subject, body)
                if marked:
                    latencies.append(loop.time() - sent)
            out.put(("end",))
            await nc.close()
            return {"messages": len(latencies), "latencies": latencies}

        async def pipelined(total: int | None, seconds: float, marks: bool) -> int:
            counted = 0
            measuring = False
            start = loop.time() + (shape.warmup_s if marks else 0)
            end = start + seconds
            sent = 0

            def confirmed(future) -> None:
                nonlocal counted
                future.result()
                if measuring:
                    counted += 1

            while True:
                now = loop.time()
                if marks and not measuring and now >= start and counted == 0:
                    measuring = True
                    out.put(("start",))
                if total is not None and sent >= total:
                    break
                if total is None and now >= end:
                    break
                future = await js.publish_async(subject, body)
                future.add_done_callback(confirmed)
                sent += 1
            if marks:
                measuring = False
                out.put(("end",))
            await js.publish_async_completed()
            return counted

        if shape.phase == "publish":
            count = await pipelined(None, shape.seconds, True)
            await nc.close()
            return {"messages": count, "latencies": []}

        await pipelined(shape.backlog, 0, False)
        sub = await js.pull_subscribe(subject, durable="workers")
        out.put(("start",))
        done = 0
        while done < shape.backlog:
            with contextlib.suppress(nats.errors.TimeoutError):
                for msg in await sub.fetch(shape.prefetch, timeout=5):
                    await msg.ack()
                    done += 1
        await nc.flush()
        out.put(("end",))
        await nc.close()
        return {"messages": done, "latencies": []}

    result = asyncio.run(run())
    out.put(("result", result))


CLIENTS = {"paxq": paxq_client, "rabbitmq": rabbit_client, "nats": nats_client}

# ---------------------------------------------------------------------------------- phases


@dataclass
class Phase:
    key: str  # the figure's name
    shape: Shape
    systems: tuple[str, ...]


@dataclass
class Sample:
    rate: float  # messages per second over the window
    p50_ms: float | None
    p99_ms: float | None
    window_s: float
    messages: int
    cpu_s: dict[str, float]
    leader_changes: int
    retries: int = 0
    extra: dict = field(default_factory=dict)


def phases(args: argparse.Namespace) -> list[Phase]:
    def shape(phase: str, size: int, queue: str) -> Shape:
        return Shape(
            phase,
            size,
            args.seconds,
            args.warmup,
            args.callers,
            args.window,
            args.backlog,
            args.prefetch,
            args.concurrency,
            queue,
        )

    everyone = ("paxq", "rabbitmq", "nats")
    return [
        Phase("publish 100 B", shape("publish", 100, "pub100"), everyone),
        Phase("publish 1 KiB", shape("publish", 1024, "pub1k"), everyone),
        Phase("publish 100 B, callers", shape("callers", 100, "callers"), ("paxq",)),
        Phase("single publish", shape("single", 100, "single"), everyone),
        Phase("consume + ack", shape("consume", 100, "consume"), everyone),
        Phase("consume + ack, WorkerPool", shape("pool", 100, "pool"), ("paxq",)),
    ]


def run_phase(cluster: Cluster, phase: Phase, timeout_s: float) -> Sample:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=CLIENTS[cluster.name], args=(cluster.client_info(), phase.shape, out))
    elected = cluster.leader_changes()
    proc.start()
    pids = {**cluster.servers, "client": proc.pid}

    def next_mark(expected: str):
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                mark = out.get(timeout=1)
                break
            except queue.Empty:
                if not proc.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{cluster.name} {phase.key}: the client died") from None
        if mark[0] != expected:
            raise RuntimeError(f"{cluster.name} {phase.key}: {mark[0]} before {expected}")
        return mark

    try:
        next_mark("start")
        began = time.perf_counter()
        before = {name: cpu_s(pid) for name, pid in pids.items()}
        next_mark("end")
        window_s = time.perf_counter() - began
        after = {name: cpu_s(pid) for name, pid in pids.items()}
        result = next_mark("result")[1]
    finally:
        proc.join(60)
        if proc.is_alive():
            proc.kill()
            proc.join()
    latencies = sorted(result["latencies"])
    p50 = statistics.median(latencies) * 1e3 if latencies else None
    p99 = (
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3 if latencies else None
    )
    return Sample(
        rate=result["messages"] / window_s,
        p50_ms=p50,
        p99_ms=p99,
        window_s=window_s,
        messages=result["messages"],
        cpu_s={name: round(after[name] - before[name], 3) for name in pids},
        leader_changes=cluster.leader_changes() - elected,
        retries=result.get("retries", 0),
    )


@contextlib.contextmanager
def running(system: str) -> Iterator[Cluster]:
    folder = Path(tempfile.mkdtemp(prefix=f"peers-{system}-"))
    cluster = CLUSTERS[system](folder)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------ main


def median_of(samples: list[Sample], attribute: str) -> float | None:
    values = [getattr(s, attribute) for s in samples if getattr(s, attribute) is not None]
    return statistics.median(values) if values else None


def report(results: dict, systems: list[str], plan: list[Phase]) -> list[str]:
    lines = []
    others = [s for s in systems if s != "paxq"]
    header = f"{'figure':<27}" + "".join(f"{s:>16}" for s in systems)
    if "paxq" in systems:
        header += "".join(f"{'paxq/' + o:>16}" for o in others)
    lines.append(header)
    for phase in plan:
        got = {s: results[phase.key].get(s, []) for s in systems}
        single = phase.shape.phase == "single"
        attributes = ("p50_ms", "p99_ms") if single else ("rate",)
        for attribute in attributes:
            medians = {s: median_of(got[s], attribute) for s in systems}
            label = phase.key + (f" {attribute[:3]} ms" if single else " msg/s")
            row = f"{label:<27}"
            for s in systems:
                value = medians[s]
                row += (
                    f"{'-':>16}"
                    if value is None
                    else f"{value:>16,.2f}"
                    if single
                    else f"{value:>16,.0f}"
                )
            if "paxq" in systems:
                for o in others:
                    if medians["paxq"] is None or not medians[o]:
                        row += f"{'-':>16}"
                    elif single:  # lower is better: how many times the other's latency
                        row += f"{medians['paxq'] / medians[o]:>15.2f}x"
                    else:
                        row += f"{medians['paxq'] / medians[o]:>15.2f}x"
            lines.append(row)
    lines.append("")
    lines.append("CPU microseconds per message over the window (median of rounds), by process:")
    for phase in plan:
        for s in systems:
            samples = results[phase.key].get(s, [])
            if not samples:
                continue
            names = samples[0].cpu_s.keys()
            parts = []
            for name in names:
                per = [x.cpu_s[name] / x.messages * 1e6 for x in samples if x.messages]
                if per:
                    parts.append(f"{name} {statistics.median(per):.0f}")
            changes = [x.leader_changes for x in samples]
            tail = f"  leader changes {changes}" if s == "paxq" else ""
            lines.append(f"  {phase.key:<27} {s:<9} " + ", ".join(parts) + tail)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", nargs="+", default=list(CLUSTERS), choices=list(CLUSTERS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per phase")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--callers", type=int, default=1000, help="paxq concurrent publishers")
    parser.add_argument("--window", type=int, default=1000, help="unconfirmed publishes")
    parser.add_argument("--backlog", type=int, default=50_000, help="messages to consume")
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100, help="WorkerPool handlers")
    parser.add_argument("--phases", nargs="+", help="only these figures (by name prefix)")
    parser.add_argument("--json", type=Path, help="write every sample here")
    args = parser.parse_args()
    # Stopped from outside, the clusters are still stopped (by the `finally`s).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = phases(args)
    if args.phases:
        plan = [p for p in plan if any(p.key.startswith(name) for name in args.phases)]
    commit = git_commit()
    print(
        f"commit {commit}; 3 nodes each on loopback, os.cpu_count()={os.cpu_count()}; "
        f"{args.rounds} rounds, {args.seconds:g} s windows after {args.warmup:g} s; "
        f"paxq {args.callers} callers, confirm window {args.window}, backlog {args.backlog}, "
        f"prefetch {args.prefetch}, WorkerPool concurrency {args.concurrency}",
        flush=True,
    )
    results: dict[str, dict[str, list[Sample]]] = {p.key: {} for p in plan}
    timeout_s = args.warmup + args.seconds + 600
    for round_ in range(args.rounds):
        order = (
            args.systems[round_ % len(args.systems) :] + args.systems[: round_ % len(args.systems)]
        )
        for system in order:
            with running(system) as cluster:
                for phase in plan:
                    if system not in phase.systems:
                        continue
                    sample = run_phase(cluster, phase, timeout_s)
                    results[phase.key].setdefault(system, []).append(sample)
                    figure = (
                        f"p50 {sample.p50_ms:.2f} ms p99 {sample.p99_ms:.2f} ms"
                        if sample.p50_ms is not None
                        else f"{sample.rate:,.0f} msg/s"
                    )
                    print(
                        f"round {round_ + 1} {system:<9} {phase.key:<27} {figure}"
                        + (f"  leader changes {sample.leader_changes}" if system == "paxq" else ""),
                        flush=True,
                    )
    print()
    print("\n".join(report(results, args.systems, plan)))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "commit": commit,
                    "settings": {k: str(v) for k, v in vars(args).items()},
                    "samples": {
                        key: {s: [vars(x) for x in samples] for s, samples in by.items()}
                        for key, by in results.items()
                    },
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
