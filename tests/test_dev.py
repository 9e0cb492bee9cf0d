"""`paxq dev` as a user runs it: real processes on 127.0.0.1, each stopped by pid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import trio
from test_docs import free_base

from paxq.ops.admin import gather_status

LIMIT_S = 60


def paxq(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "paxq.ops.cli", *args],
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
    )


def dev_flags(data: Path, peer: int) -> list[str]:
    ports = ["--peer-port", str(peer), "--client-port", str(peer + 3), "--metrics-port", "0"]
    return ["--data", str(data), *ports]


def wait_for_leader(addresses: list[tuple[str, int]]) -> None:
    async def leader() -> None:
        with trio.fail_after(LIMIT_S):
            while not any(s.get("role") == "leader" for s in await gather_status(addresses)):
                await trio.sleep(0.1)

    trio.run(leader)


def test_dev_refuses_what_is_in_use_restarts_a_node_and_ends_when_all_die(
    tmp_path: Path,
) -> None:
    data, peer = tmp_path / "cluster", free_base(6)
    addresses = [("127.0.0.1", peer + 3 + i) for i in range(3)]
    log = open(tmp_path / "dev.log", "w+")  # noqa: SIM115 (the child writes it)
    dev = subprocess.Popen(
        [sys.executable, "-m", "paxq.ops.cli", "dev", *dev_flags(data, peer)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its nodes share its process group: stopped together
    )
    try:
        wait_for_leader(addresses)
        log.seek(0)
        banner = log.read()
        assert f"dev restart 1 --data {data}" in banner and "status --nodes" in banner

        # A second one on the same data, or on the same ports, says who is in the way.
        again = paxq("dev", *dev_flags(data, peer))
        assert again.returncode == 1
        assert f"another paxq dev runs on {data} (pid {dev.pid})" in again.stderr
        other = paxq("dev", *dev_flags(tmp_path / "other", peer))
        assert other.returncode == 1
        assert f"port {peer}, node 0's peer port (--peer-port), is in use by pid" in other.stderr
        assert "paxq.ops.cli node" in other.stderr  # the node that holds it

        # One node restarted; the cluster serves through it.
        before = json.loads((data / "dev.json").read_text())["nodes"]["1"]
        restarted = paxq("dev", "restart", "1", "--data", str(data))
        assert restarted.returncode == 0, restarted.stderr
        after = json.loads((data / "dev.json").read_text())["nodes"]["1"]
        assert restarted.stdout.strip() == f"node 1 running as pid {after} (was {before})"
        assert after != before
        wait_for_leader(addresses[1:2] + addresses)
        wrong = paxq("dev", "restart", "7", "--data", str(data))
        assert wrong.returncode == 2 and "7 is not in the range 0<=x<=2" in wrong.stderr
        absent = paxq("dev", "stop", "0", "--data", str(tmp_path / "none"))
        assert absent.returncode == 1 and "no paxq dev runs on" in absent.stderr

        # Every node killed: the supervisor says so and exits 1 instead of watching nothing.
        for pid in json.loads((data / "dev.json").read_text())["nodes"].values():
            os.kill(pid, signal.SIGKILL)
        assert dev.wait(LIMIT_S) == 1
        log.seek(0)
        assert "every node has exited" in log.read()
        assert not (data / "dev.json").exists()
    finally:
        if dev.poll() is None:
            dev.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                dev.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(dev.pid, signal.SIGKILL)  # anything left of the group, by pid
        log.close()
