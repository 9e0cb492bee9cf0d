"""The first hour, as a new user lives it: each mistake the issue of that name lists, typed at
the `paxq` command against a real `paxq dev` cluster, gives a clear message that names the
flag, the value or the address, and the documented exit status (docs/cli.md), never a
traceback."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys

import pytest
from test_docs import dev_cluster, free_base  # noqa: F401 (the fixture, shared)

pytestmark = pytest.mark.slow
COMMAND_S = 60


def paxq(env: dict, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "paxq.ops.cli", *args],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=COMMAND_S,
    )
    assert b"Traceback" not in done.stderr, done.stderr.decode()
    return done


def lines(done: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


def err(done: subprocess.CompletedProcess) -> str:
    return done.stderr.decode()


def test_usage_mistakes_exit_2_naming_the_flag(dev_cluster: dict) -> None:  # noqa: F811
    env = dev_cluster
    cases = [
        (("--nodes", "localhost", "list"), "Invalid value for '--nodes': 'localhost' is not host"),
        (("list", "--nodes", "127.0.0.1:99999"), "a port from 1 to 65535"),
        (("publish", "t", "x", "--header", "nohdr"), "'nohdr': expected NAME=VALUE"),
        (("create", "q1", "--max-deliveries", "3"), "--max-deliveries: for a queue (add --queue)"),
        (("claim", "q1", "--lease-s", "-1"), "Invalid value for '--lease-s': -1.0 is not in"),
        (("publish", "t", "--delay-s", "soon"), "Invalid value for '--delay-s': 'soon'"),
        (("tail", "t", "--from", "bogus"), "'bogus': earliest, latest or an offset"),
        (("publish", "t", "!!", "--base64"), "Invalid value for --base64: not base64"),
        (("worker", "no_such_module"), "cannot import 'no_such_module'"),
        (("frobnicate",), "No such command 'frobnicate'"),
        (("dev", "restart", "7"), "7 is not in the range 0<=x<=2"),
        (("publish", "t", "--message-id", "m"), "--message-id names one message"),
        (("consume", "q", "--idle-s", "0"), "Invalid value for '--idle-s': 0.0 is not in"),
        (("worker", ":tasks"), "cannot import ''"),
    ]
    for args, message in cases:
        done = paxq(env, *args)
        assert (done.returncode, message in err(done)) == (2, True), (args, err(done))
    bad_line = paxq(env, "publish", "t", "--base64", stdin=b"aGk=\n!!!\n")
    assert bad_line.returncode == 2 and "not base64" in err(bad_line)
    # A PAXQ_NODES that is wrong is the command's problem only where it is used.
    wrong = {**env, "PAXQ_NODES": "nonsense"}
    assert paxq(wrong, "list", "--nodes", env["PAXQ_NODES"]).returncode == 0
    assert paxq(wrong, "--nodes", env["PAXQ_NODES"], "list").returncode == 0
    assert paxq(wrong, "sim", "--help").returncode == 0
    unset = paxq(wrong, "list")
    assert unset.returncode == 2 and "PAXQ_NODES: 'nonsense' is not host:port" in err(unset)
    version = paxq(env, "--version")
    assert version.returncode == 0 and version.stdout.startswith(b"paxq, version ")
    helped = paxq(env, "consume", "--help")
    assert helped.returncode == 0 and b"[default: 16" in helped.stdout  # --prefetch
    assert b"Example: paxq consume orders" in helped.stdout


def test_what_the_cluster_refuses_exits_1_and_an_absent_cluster_3(dev_cluster: dict) -> None:  # noqa: F811
    env = dev_cluster
    # A 2 MiB body: refused by the client before anything is sent, both sizes named.
    big = paxq(env, "publish", "t", "--file", "-", stdin=b"x" * (2 << 20))
    assert big.returncode == 1
    assert "TooLarge: message of 2,097,152 bytes; the largest is 1,048,576" in err(big)
    # A topic read as a queue: which subscriptions there are.
    assert paxq(env, "create", "events").returncode == 0
    assert paxq(env, "subscribe", "events", "audit").returncode == 0
    wrong = paxq(env, "consume", "events", "--count", "1")
    assert wrong.returncode == 1
    assert "'events' is a topic: name one of its subscriptions (audit)" in err(wrong)
    # Nothing listening, or not a paxq client port: each address and what happened there,
    # after the first-contact bound (4 s), not the request deadline (30 s).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down = paxq(env, "list", "--nodes", f"127.0.0.1:{closed}")
    assert down.returncode == 3 and f"127.0.0.1:{closed}: connection refused" in err(down)
    scrape = int(env["SCRAPE_BASE"])
    http = paxq(env, "--nodes", f"127.0.0.1:{scrape}", "list")
    assert http.returncode == 3 and "answered HTTP: not a paxq client port" in err(http)
    # A reader through an outage says so and exits once --outage-s is over.
    top = paxq(env, "top", "--once", "--every-s", "0.1", "--nodes", f"127.0.0.1:{closed}")
    assert top.returncode == 3 and "unreachable" in top.stdout.decode()
    for reader in (("consume", "q"), ("tail", "t")):
        gone = paxq(env, *reader, "--nodes", f"127.0.0.1:{closed}", "--outage-s", "1")
        assert gone.returncode == 3 and "Unreachable" in err(gone), reader


def test_binary_bodies_in_and_out_and_nodes_anywhere(dev_cluster: dict) -> None:  # noqa: F811
    env = {k: v for k, v in dev_cluster.items() if k != "PAXQ_NODES"}
    nodes = dev_cluster["PAXQ_NODES"]
    assert paxq(env, "--nodes", nodes, "create", "bin", "--queue").returncode == 0
    # Lines that are not UTF-8 are stored as they are, each offset printed.
    sent = paxq(env, "publish", "bin", "--nodes", nodes, stdin=b"caf\xe9\n\xff\xfe\nplain\n")
    assert sent.returncode == 0, err(sent)
    assert sorted(o["line"] for o in lines(sent)) == [1, 2, 3]
    raw = bytes(range(256))
    assert paxq(env, "publish", "bin", "--base64", base64.b64encode(raw).decode(),
                "--nodes", nodes).returncode == 0  # fmt: skip
    got = paxq(env, "--nodes", nodes, "consume", "bin", "--count", "4")
    assert got.returncode == 0, err(got)
    bodies = [
        base64.b64decode(d["body_base64"]) if "body_base64" in d else d["body"].encode()
        for d in lines(got)
    ]
    assert sorted(bodies) == sorted([b"caf\xe9", b"\xff\xfe", b"plain", raw])
    # A message id: the second publish is answered, marked, not stored again.
    first = paxq(env, "publish", "bin", "again", "--message-id", "m-1", "--nodes", nodes)
    second = paxq(env, "publish", "bin", "again", "--message-id", "m-1", "--nodes", nodes)
    assert lines(second) == [{**lines(first)[0], "duplicate": True}]


def test_top_shows_every_topic_with_rates_and_plain_text_into_a_pipe(dev_cluster: dict) -> None:  # noqa: F811
    env = dev_cluster
    assert paxq(env, "create", "lonely").returncode == 0  # a topic nobody subscribes to
    assert paxq(env, "create", "work", "--queue", "--exist-ok").returncode == 0
    assert paxq(env, "publish", "work", "a", "b").returncode == 0
    shown = paxq(env, "top", "--once")
    assert shown.returncode == 0, err(shown)
    out = shown.stdout.decode()
    assert "\x1b" not in out  # no escape codes into a pipe
    assert "leader" in out and "in/s" in out and "acked/s" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["lonely"][:2] == ["lonely", "topic"]
    assert rows["work"][:3] == ["work", "queue", "2"]
