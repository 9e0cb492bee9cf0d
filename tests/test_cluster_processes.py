"""A real cluster: three `paxq node` processes on 127.0.0.1 with RocksDB journals.

Each phase is bounded in time; every process started is stopped by pid at the end."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import trio
from processes import Cluster

from paxq.client import ConnectionLost

pytestmark = pytest.mark.slow
PHASE_S = 60


async def write_under_load(
    cluster: Cluster, acked: dict[int, bytes], count: int, tag: str, during=None
) -> None:
    """`count` appends from 4 concurrent writers; `during` runs once a third are acked."""
    started = trio.Event()

    async def writer(w: int) -> None:
        for i in range(count // 4):
            data = f"{tag}-{w}-{i}".encode()
            offset = await cluster.append(data)
            if offset is not None:
                acked[offset] = data
            if len(acked) >= count // 3:
                started.set()

    async with trio.open_nursery() as nursery:
        for w in range(4):
            nursery.start_soon(writer, w)
        if during is not None:
            await started.wait()
            await during()


async def all_hold(cluster: Cluster, acked: dict[int, bytes], nodes=(0, 1, 2)) -> None:
    """Every acknowledged entry stands at its offset on every given node (waits for catch-up)."""
    while True:
        try:
            logs = {n: await cluster.log_of(n) for n in nodes}
        except (OSError, TimeoutError, ConnectionLost):  # a node still starting
            logs = {}
        if logs and all(len(log) > max(acked) for log in logs.values()):
            break
        await trio.sleep(0.1)
    for node, log in logs.items():
        for offset, data in acked.items():
            assert log[offset] == data, f"node {node} lost acknowledged entry {offset}"
    assert logs[nodes[0]][: max(acked) + 1] == logs[nodes[-1]][: max(acked) + 1]


async def test_acknowledged_entries_survive_kills_pauses_and_a_full_restart(cluster) -> None:
    acked: dict[int, bytes] = {}
    for node in range(3):
        cluster.start(node)
    with trio.fail_after(PHASE_S):
        first = await cluster.leader()

    # kill -9 the leader under load: the others elect a new one and go on.
    acked_at_kill = []

    async def kill_leader() -> None:
        acked_at_kill.append(len(acked))
        cluster.kill(first)

    with trio.fail_after(PHASE_S):
        await write_under_load(cluster, acked, 400, "a", during=kill_leader)
        second = await cluster.leader(exclude=(first,))
    assert second != first
    assert len(acked) > acked_at_kill[0], "the cluster kept committing after the kill"

    # The killed node returns and catches up with everything acknowledged.
    cluster.start(first)
    with trio.fail_after(PHASE_S):
        await all_hold(cluster, acked)

    # SIGSTOP the leader (paused, not dead): the rest move on; resumed, it steps down.
    cluster.kill(second, signal.SIGSTOP)
    with trio.fail_after(PHASE_S):
        third = await cluster.leader(exclude=(second,))
        await write_under_load(cluster, acked, 100, "b")
    cluster.kill(second, signal.SIGCONT)
    with trio.fail_after(PHASE_S):
        while True:
            roles = {s["node"]: s["role"] for s in await cluster.statuses() if "role" in s}
            if roles.get(second) == "follower" and list(roles.values()).count("leader") == 1:
                break
            await trio.sleep(0.05)
        await all_hold(cluster, acked)
    assert third != second

    # Kill every node at once, restart all: nothing acknowledged is lost.
    for node in range(3):
        cluster.kill(node)
    for node in range(3):
        cluster.start(node)
    with trio.fail_after(PHASE_S):
        await cluster.leader()
        await all_hold(cluster, acked)
        offset = await cluster.append(b"after everything")
    assert offset is not None and offset > max(acked)
    assert os.path.isdir(cluster.data / "node0")


async def test_a_follower_behind_a_snapshot_catches_up_after_a_restart(cluster) -> None:
    cluster.extra = ["--snapshot-every", "16", "--snapshot-keep", "4"]
    acked: dict[int, bytes] = {}
    for node in range(3):
        cluster.start(node)
    with trio.fail_after(PHASE_S):
        leader = await cluster.leader()
        await write_under_load(cluster, acked, 40, "a")
    follower = (leader + 1) % 3
    with trio.fail_after(PHASE_S):
        await all_hold(cluster, acked)
        behind = {s["node"]: s for s in await cluster.statuses() if "node" in s}[follower]["commit"]
    cluster.kill(follower)
    with trio.fail_after(PHASE_S):
        await write_under_load(cluster, acked, 400, "b")
        leader = await cluster.leader()
        status = {s["node"]: s for s in await cluster.statuses() if "node" in s}[leader]
    assert status["log_start"] > behind, "the slots the follower lacks are compacted away"

    cluster.start(follower)
    with trio.fail_after(PHASE_S):
        await all_hold(cluster, acked)
        status = {s["node"]: s for s in await cluster.statuses() if "node" in s}[follower]
    assert status["snapshots"]["installed"] >= 1
    assert status["snapshot"] > behind


async def test_a_node_whose_data_is_gone_learns_and_votes_only_once_it_may(cluster) -> None:
    acked: dict[int, bytes] = {}
    for node in range(3):
        cluster.start(node)
    with trio.fail_after(PHASE_S):
        leader = await cluster.leader()
        await write_under_load(cluster, acked, 40, "a")
    wiped, other = (leader + 1) % 3, (leader + 2) % 3
    cluster.kill(wiped)
    cluster.kill(other)
    shutil.rmtree(cluster.data / f"node{wiped}")  # its disk replaced by a blank one
    cluster.start(wiped, bootstrap=False)
    with trio.fail_after(PHASE_S):
        while True:
            statuses = {s["node"]: s for s in await cluster.statuses() if "node" in s}
            if wiped in statuses and statuses[wiped]["leader"] == leader:
                break
            await trio.sleep(0.05)
    assert statuses[wiped]["role"] == "learner" and statuses[wiped]["voting"] is False
    # The leader and a node that lost its data are not a majority: nothing is acknowledged.
    with trio.fail_after(PHASE_S):
        assert await cluster.append(b"no quorum") is None
        statuses = {s["node"]: s for s in await cluster.statuses() if "node" in s}
    assert statuses[wiped]["voting"] is False, "it voted before it had learned"
    log = (cluster.data / f"node{wiped}.log").read_text()
    assert "does not vote until it has seen new slots chosen" in log
    # The third node returns: slots are chosen again, the learner catches up and votes.
    cluster.start(other)
    with trio.fail_after(PHASE_S):
        await write_under_load(cluster, acked, 40, "b")
        await all_hold(cluster, acked)
        while not {s["node"]: s for s in await cluster.statuses() if "node" in s}[wiped].get(
            "voting"
        ):
            await trio.sleep(0.05)
    assert "voting from now on" in (cluster.data / f"node{wiped}.log").read_text()
    # It votes durably: killed and started again, it is a voter from the start.
    cluster.kill(wiped)
    cluster.start(wiped)
    with trio.fail_after(PHASE_S):
        while wiped not in (
            found := {s["node"]: s for s in await cluster.statuses() if "node" in s}
        ):
            await trio.sleep(0.05)
    assert found[wiped]["voting"] is True, "its VotingRecord was not written"


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 64 MiB file system of its own (tmpfs), for one node's data; skipped where this
    process may not mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


class Ext4Disk:
    """A 64 MiB ext4 file system on a loop device, mounted `errors=remount-ro`: the kernel
    turns it read-only under its writers when it meets an error, as a failing disk does."""

    def __init__(self, image: Path, mount: Path) -> None:
        self.image, self.mount, self.device = image, mount, ""

    def attach(self) -> str:
        """Mount it; return why it could not be, or an empty string."""
        made = subprocess.run(
            ["losetup", "--find", "--show", str(self.image)], capture_output=True, text=True
        )
        if made.returncode != 0:
            return made.stderr.strip()
        self.device = made.stdout.strip()
        mounted = subprocess.run(
            ["mount", "-t", "ext4", "-o", "errors=remount-ro", self.device, str(self.mount)],
            capture_output=True,
            text=True,
        )
        return mounted.stderr.strip() if mounted.returncode != 0 else ""

    def fail(self) -> None:
        """An ext4 error, raised through sysfs: the journal aborts and the mount goes read-only."""
        trigger = Path("/sys/fs/ext4") / Path(self.device).name / "trigger_fs_error"
        trigger.write_text("paxq test: a failing disk\n")

    def repair(self) -> None:
        """Unmount, check and mount it again, writable."""
        subprocess.run(["umount", str(self.mount)], check=True)
        checked = subprocess.run(["e2fsck", "-fy", self.device], capture_output=True, text=True)
        assert checked.returncode < 4, checked.stdout + checked.stderr  # 1, 2: fixed
        subprocess.run(
            ["mount", "-t", "ext4", "-o", "errors=remount-ro", self.device, str(self.mount)],
            check=True,
        )

    def detach(self) -> None:
        subprocess.run(["umount", "-l", str(self.mount)], capture_output=True)
        if self.device:
            subprocess.run(["losetup", "-d", self.device], capture_output=True)


@pytest.fixture
def ext4_disk(tmp_path: Path):
    """An `Ext4Disk` for one node's data; skipped where this process may not make one."""
    image, mount = tmp_path / "disk.img", tmp_path / "ext4"
    mount.mkdir()
    with image.open("wb") as file:
        file.truncate(64 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make an ext4 file system here: {made.stderr.strip()}")
    disk = Ext4Disk(image, mount)
    try:
        if why := disk.attach():
            pytest.skip(f"cannot mount a loop device here: {why}")
        if not (Path("/sys/fs/ext4") / Path(disk.device).name / "trigger_fs_error").exists():
            pytest.skip("this kernel has no ext4 trigger_fs_error")
        yield disk
    finally:
        disk.detach()


async def _stops(cluster, node: int) -> str:
    """Wait for `node` to exit; its exit status must say it refused, and its log why."""
    proc = cluster.procs[node]
    while proc.poll() is None:
        await trio.sleep(0.05)
    assert proc.returncode == 2, f"node {node} exited with {proc.returncode}"
    return (cluster.data / f"node{node}.log").read_text()


async def _a_failing_disk_stops_node_2(cluster, disk: Path, fail, repair) -> str:
    """Node 2 keeps its data on `disk`. Under load `fail()` breaks it: the node must stop and
    the others go on; after `repair()` it restarts and catches up with everything
    acknowledged. Returns the stopped node's log."""
    victim = 2
    (disk / "node2").mkdir()
    (cluster.data / "node2").symlink_to(disk / "node2")
    acked: dict[int, bytes] = {}
    for node in range(3):
        cluster.start(node)
    with trio.fail_after(PHASE_S):
        await cluster.leader()
        await write_under_load(cluster, acked, 40, "a")
        await all_hold(cluster, acked)

    fail()
    with trio.fail_after(PHASE_S):
        await write_under_load(cluster, acked, 40, "b")
        log = await _stops(cluster, victim)
        await write_under_load(cluster, acked, 40, "c")
    repair()
    cluster.start(victim)
    with trio.fail_after(PHASE_S):
        await all_hold(cluster, acked)
        await write_under_load(cluster, acked, 40, "d")
        await all_hold(cluster, acked)
    return log


async def test_a_full_disk_stops_the_node_and_loses_nothing(cluster, small_disk: Path) -> None:
    filler = small_disk / "filler"
    log = await _a_failing_disk_stops_node_2(
        cluster,
        small_disk,
        fail=lambda: subprocess.run(
            ["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True
        ),
        repair=filler.unlink,  # room again
    )
    assert "No space left" in log or "space" in log.lower(), log[-2000:]


async def test_a_data_directory_gone_read_only_stops_the_node_and_loses_nothing(
    cluster, ext4_disk: Ext4Disk
) -> None:
    # The file system turns read-only under the running node; checked, it is writable again.
    log = await _a_failing_disk_stops_node_2(
        cluster, ext4_disk.mount, fail=ext4_disk.fail, repair=ext4_disk.repair
    )
    assert "Read-only file system" in log, log[-2000:]
