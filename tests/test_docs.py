"""Every example in the README and the docs runs as written against a real `paxq dev`
cluster (three node processes on free loopback ports, found through PAXQ_NODES).

Fenced `sh` blocks run line by line (`make` lines excepted: the cluster is already up, and
the tests are what runs this); `python` blocks run as scripts. Blocks fenced `py` or `text`
are shown, not run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from paxq.client import Client
from paxq.ops.admin import gather_status

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    "README.md",
    "docs/quickstart.md",
    "docs/cli.md",
    "docs/client.md",
    "docs/observability.md",
]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
BLOCK_S = 120
pytestmark = pytest.mark.slow


def blocks() -> list[tuple[str, int, str, str]]:
    out = []
    for name in DOCS:
        for i, match in enumerate(BLOCK.finditer((ROOT / name).read_text())):
            if match.group(1) in ("sh", "python"):
                out.append((name, i, match.group(1), match.group(2)))
    return out


def free_base(count: int) -> int:
    """A port p with p .. p+count-1 all free on 127.0.0.1 (paxq dev numbers its nodes so)."""
    for base in range(23_000, 60_000, 97):
        try:
            sockets = []
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free ports")


@pytest.fixture(scope="module")
def dev_cluster(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("dev")
    peer = free_base(9)  # three peer ports, three client ports, three scrape ports
    client = peer + 3
    nodes = ",".join(f"127.0.0.1:{client + i}" for i in range(3))
    log = open(data / "dev.log", "ab")  # noqa: SIM115 (the child writes it)
    dev = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "paxq.ops.cli",
            "dev",
            "--data",
            str(data / "cluster"),
            "--peer-port",
            str(peer),
            "--client-port",
            str(client),
            "--metrics-port",
            str(peer + 6),
            *("--tracing", "console", "--trace-sample", "0"),  # traced clients only
        ],
        stdout=log,
        stderr=log,
        start_new_session=True,  # its nodes share its process group: stopped together
    )
    try:
        addresses = [("127.0.0.1", client + i) for i in range(3)]

        async def leader() -> None:
            with trio.fail_after(60):
                while not any(s.get("role") == "leader" for s in await gather_status(addresses)):
                    await trio.sleep(0.1)

        trio.run(leader)
        # The examples run in one folder, as a reader's would: the dev cluster's data at
        # ./.paxq-dev, the quick start's ./.venv where there is one.
        work = tmp_path_factory.mktemp("reader")
        (work / ".paxq-dev").symlink_to(data / "cluster")
        if (ROOT / ".venv").exists():
            (work / ".venv").symlink_to(ROOT / ".venv")
        yield {**os.environ, "PAXQ_NODES": nodes, "SCRAPE_BASE": str(peer + 6), "WORK": str(work)}
    finally:
        dev.send_signal(signal.SIGTERM)  # paxq dev stops its nodes cleanly
        try:
            dev.wait(30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(dev.pid, signal.SIGKILL)  # anything left of the group, by pid
            log.close()


def _paxq_line(line: str) -> str:
    """A README line as written; `.venv/bin/` points at this interpreter's scripts when the
    suite runs outside the quick start's venv."""
    if not (ROOT / ".venv/bin/paxq").exists():
        line = line.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    return line


@pytest.mark.parametrize(
    ("name", "index", "kind", "code"),
    blocks(),
    ids=[f"{name}#{index}" for name, index, _, _ in blocks()],
)
def test_the_example_runs_as_written(
    dev_cluster: dict, tmp_path: Path, name: str, index: int, kind: str, code: str
) -> None:
    work = Path(dev_cluster["WORK"])
    if kind == "sh":
        lines = [
            line
            for line in code.splitlines()
            if line.strip() and not line.lstrip().startswith(("#", "make "))
        ]
        for line in lines:
            _succeeds(["bash", "-c", _paxq_line(line)], work, dev_cluster, f"{name}: {line}")
        return
    script = tmp_path / "example.py"
    script.write_text(code)
    _succeeds([sys.executable, str(script)], work, dev_cluster, f"{name} block {index}")


def _succeeds(command: list[str], cwd: Path, env: dict, what: str) -> None:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_S
    )
    assert done.returncode == 0, f"{what}\n{done.stdout}\n{done.stderr}"


def test_the_docs_have_examples_to_run() -> None:
    kinds = {(name, kind) for name, _, kind, _ in blocks()}
    assert {("README.md", "sh"), ("README.md", "python"), ("docs/client.md", "python")} <= kinds


WORKER_APP = """
import os
from pathlib import Path

from paxq.client import Tasks

tasks = Tasks(default_queue="cli-tasks")


@tasks.task
def record(n: int) -> None:
    with open(Path(os.environ["DONE_FILE"]), "a") as out:
        out.write(f"{n}\\n")
"""


def test_paxq_worker_runs_tasks_until_sigterm(dev_cluster: dict, tmp_path: Path) -> None:
    (tmp_path / "cliapp.py").write_text(WORKER_APP)
    done = tmp_path / "done.txt"
    env = {**dev_cluster, "DONE_FILE": str(done), "PYTHONPATH": str(tmp_path)}
    paxq = [sys.executable, "-m", "paxq.ops.cli"]
    worker = subprocess.Popen(
        [*paxq, "worker", "cliapp:tasks", "--concurrency", "4", "--prefetch", "4",
         "--grace-s", "5", "--log-level", "warning"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        lines = "\n".join(
            json.dumps({"task": "cliapp.record", "args": [n], "kwargs": {}}) for n in range(20)
        )
        lines += "\nnot a task"  # dead-lettered at once, said in one line
        subprocess.run([*paxq, "create", "cli-tasks", "--queue", "--exist-ok"], env=env, check=True)
        subprocess.run([*paxq, "publish", "cli-tasks"], input=lines, text=True, env=env, check=True)

        async def all_done() -> None:
            with trio.fail_after(60):
                while not done.exists() or len(done.read_text().split()) < 20:
                    await trio.sleep(0.05)
                async with Client(env["PAXQ_NODES"]) as client:  # and the bad one rejected
                    while (await client.describe("cli-tasks"))["subscriptions"][""][
                        "dead_lettered"
                    ] < 1:
                        await trio.sleep(0.05)

        trio.run(all_done)
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    assert worker.returncode == 0
    assert sorted(map(int, done.read_text().split())) == list(range(20))
    assert json.loads(out) == {"cli-tasks": {"done": 20, "failed": 1, "rejected": 1}}
    assert "paxq worker: cliapp.record on cli-tasks, 4 at a time per queue" in err
    assert "up to 5 s" in err and err.count("rejected (dead-lettered)") == 1, err
    assert "Traceback" not in err


def test_each_dev_node_serves_prometheus_metrics(dev_cluster: dict) -> None:
    base = int(dev_cluster["SCRAPE_BASE"])
    leaders = 0
    for node in range(3):
        with socket.create_connection(("127.0.0.1", base + node), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: paxq\r\n\r\n")
            data = b""
            while chunk := s.recv(1 << 16):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        text = body.decode()
        assert "# TYPE paxq_fsync_latency_milliseconds histogram" in text
        assert f'paxq_replica_lag{{node="{node}"}}' in text
        leaders += f'paxq_leader{{node="{node}"}} 1' in text
    assert leaders == 1


def test_status_and_top_show_the_commit_path_of_the_whole_cluster(dev_cluster: dict) -> None:
    paxq = [sys.executable, "-m", "paxq.ops.cli"]
    subprocess.run(
        [*paxq, "create", "watched", "--queue", "--exist-ok"], env=dev_cluster, check=True
    )
    subprocess.run([*paxq, "publish", "watched", "one", "two"], env=dev_cluster, check=True)
    done = subprocess.run(
        [*paxq, "status", "--json"], env=dev_cluster, capture_output=True, text=True, timeout=60
    )
    nodes = [json.loads(line) for line in done.stdout.splitlines()]
    [leader] = [n for n in nodes if n["role"] == "leader"]
    assert leader["commit_ms"]["count"] >= 3 and leader["commit_ms"]["p99"] is not None
    assert all(n["fsync_ms"]["count"] > 0 for n in nodes)
    assert all({"pipeline", "replica_lag", "elections"} <= set(n) for n in nodes)
    table = subprocess.run(
        [*paxq, "status"], env=dev_cluster, capture_output=True, text=True, timeout=60
    ).stdout
    assert "commit p50/p99" in table and "leader" in table
    top = subprocess.Popen(
        [*paxq, "top", "--every-s", "0.2"], env=dev_cluster, stdout=subprocess.PIPE, text=True
    )
    try:
        screen = ""
        deadline = time.monotonic() + 30
        while "watched" not in screen and time.monotonic() < deadline:
            screen += top.stdout.readline()
    finally:
        top.send_signal(signal.SIGINT)
        top.communicate(timeout=10)  # read on: a full pipe would hold its last frame up
    assert "commit p50/p99" in screen and "watched" in screen
