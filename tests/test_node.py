"""Three real nodes in one process: RocksDB journals on disk, TCP on 127.0.0.1, trio timers.

Bounded in time; every wait is for a condition."""

from __future__ import annotations

import errno
from collections import deque
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from paxq.broker.node import LogMachine, PeerSettings
from paxq.broker.node.machines import log_machine
from paxq.broker.node.runtime import CommandFailed, Node, NodeSettings
from paxq.broker.paxos import Config, Role
from paxq.storage import CorruptRecord, Identity, RocksJournal, StorageError

LIMIT_S = 30


async def free_addresses(size: int) -> dict[int, tuple[str, int]]:
    """Loopback ports the OS hands out (closed again, then reused by the nodes). Ports
    handed out just before are not handed out again: a port closed at once may come back
    from the next call, and a node bound to the same port twice fails to start."""
    addresses = {}
    listeners = []
    for node in range(size):
        while True:
            (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listener.socket.getsockname()[1]
            if port not in _HANDED_OUT:
                break
            await listener.aclose()
        _HANDED_OUT.append(port)
        listeners.append(listener)
        addresses[node] = ("127.0.0.1", port)
    for listener in listeners:
        await listener.aclose()
    return addresses


#: the ports free_addresses handed out last (a bounded memory)
_HANDED_OUT: deque[int] = deque(maxlen=256)


@asynccontextmanager
async def running(data: Path, addresses: dict, nodes: list[int] | None = None, **overrides):
    ids = sorted(addresses) if nodes is None else nodes
    config = Config(nodes=tuple(sorted(addresses)))
    started: dict[int, Node] = {}
    async with trio.open_nursery() as nursery:
        for node_id in ids:
            journal = RocksJournal.open(data / f"node{node_id}", Identity("test", node_id), True)
            settings = NodeSettings(PeerSettings("test", node_id, addresses), config, **overrides)
            node = Node(settings, journal, log_machine)
            started[node_id] = node
            await nursery.start(node.run)
        try:
            yield started
        finally:
            nursery.cancel_scope.cancel()
    for node in started.values():
        node.journal.close()


async def leader_of(nodes: dict[int, Node]) -> Node:
    while True:
        leaders = [n for n in nodes.values() if n.replica.role is Role.LEADER]
        if len(leaders) == 1:
            return leaders[0]
        await trio.sleep(0.02)


async def converged(nodes: dict[int, Node], length: int) -> None:
    while any(n.machine.length < length for n in nodes.values()):
        await trio.sleep(0.02)


async def test_a_cluster_elects_commits_and_survives_a_full_restart(tmp_path: Path) -> None:
    addresses = await free_addresses(3)
    with trio.fail_after(LIMIT_S):
        async with running(tmp_path, addresses) as nodes:
            leader = await leader_of(nodes)
            offsets = []

            async def one(i: int) -> None:
                offsets.append(await leader.submit(b"first-%d" % i))

            async with trio.open_nursery() as clients:
                for i in range(200):
                    clients.start_soon(one, i)
            assert sorted(offsets) == list(range(200))
            assert leader.syncs < 200, "concurrent commands share batches and syncs"
            follower = next(n for n in nodes.values() if n is not leader)
            with pytest.raises(CommandFailed) as refused:
                await follower.submit(b"at a follower")
            assert refused.value.reason == "not leader"
            assert refused.value.leader == leader.id
            await converged(nodes, 200)

        # Everything stops; everything comes back from disk.
        async with running(tmp_path, addresses) as nodes:
            await converged(nodes, 200)
            leader = await leader_of(nodes)
            assert await leader.submit(b"after the restart") == 200


async def test_a_majority_goes_on_without_a_stopped_node(tmp_path: Path) -> None:
    addresses = await free_addresses(3)
    with trio.fail_after(LIMIT_S):
        async with running(tmp_path, addresses, nodes=[0, 1]) as nodes:
            leader = await leader_of(nodes)
            for i in range(20):
                assert await leader.submit(b"two-of-three-%d" % i) == i
        # The third node joins later and catches up from the others.
        async with running(tmp_path, addresses) as nodes:
            await converged(nodes, 20)
            assert nodes[2].machine.length == 20


async def test_a_paused_node_does_not_replay_the_ticks_it_missed(tmp_path: Path) -> None:
    """After a pause (SIGSTOP, a stalled disk) the ticker skips ahead instead of firing every
    missed tick at once, which would time out elections before pending messages are read."""
    addresses = await free_addresses(1)
    with trio.fail_after(LIMIT_S):
        async with running(tmp_path, addresses) as nodes:
            node = nodes[0]
            await leader_of(nodes)
            ticks_before = node.replica._tick
            time_before = trio.current_time()
            import time as wall

            wall.sleep(1.0)  # the whole process stands still, as under SIGSTOP
            await trio.sleep(0.1)
            elapsed_ticks = (trio.current_time() - time_before) / node.settings.tick_s
            assert node.ticks_skipped >= 40
            assert node.replica._tick - ticks_before < elapsed_ticks / 2


async def test_a_node_behind_a_compacted_log_gets_the_snapshot_then_the_tail(
    tmp_path: Path,
) -> None:
    addresses = await free_addresses(3)
    snapshots = {"snapshot_every_slots": 4, "snapshot_keep_slots": 2}
    with trio.fail_after(LIMIT_S):
        async with running(tmp_path, addresses, nodes=[0, 1], **snapshots) as nodes:
            leader = await leader_of(nodes)
            for i in range(30):  # one at a time: one slot each
                assert await leader.submit(b"%016d" % 0 + b"entry-%d" % i) == i
            assert leader.snapshots_taken >= 5
            assert leader.replica.log_start > 20, "the log below the snapshot is gone"
        async with running(tmp_path, addresses, **snapshots) as nodes:
            await converged(nodes, 30)
            late = nodes[2]
            assert late.snapshots_installed == 1
            assert late.machine.read(0, 100) == (0, [b"entry-%d" % i for i in range(30)])
            leader = await leader_of(nodes)
            assert await leader.submit(b"%016d" % 0 + b"after") == 30
            await converged(nodes, 31)
        # It restarts from its own stored snapshot, and replays only the log above it.
        async with running(tmp_path, addresses, nodes=[2], **snapshots) as nodes:
            assert nodes[2].machine.length >= 28  # restored before the loop even runs
            await converged(nodes, 30)
            assert nodes[2].machine.read(29, 1) == (29, [b"entry-29"])


async def test_a_stored_snapshot_that_does_not_match_its_slot_is_refused(tmp_path: Path) -> None:
    addresses = await free_addresses(1)
    journal = RocksJournal.open(tmp_path / "node0", Identity("test", 0), True)
    journal.save_snapshot(5, LogMachine().snapshot(1 << 20), truncate_below=0)  # ends at 0
    settings = NodeSettings(PeerSettings("test", 0, addresses), Config(nodes=(0,)))
    with pytest.raises(CorruptRecord, match="ends at slot 0, not at 5"):
        Node(settings, journal, log_machine)
    journal.close()


async def test_an_idle_node_takes_a_command_in_the_proposers_turn(tmp_path: Path) -> None:
    """With the loop parked on an empty inbox, a command is handled where it arrives, and a
    small write is made there too: a lone node commits and answers before propose_nowait
    returns, and writes the commit point (no sync) after the answer. A large one goes to the
    writer thread and is answered later, in order."""
    addresses = await free_addresses(1)
    with trio.fail_after(LIMIT_S):
        async with running(tmp_path, addresses, leader_write_inline_bytes_max=1024) as nodes:
            node = await leader_of(nodes)
            await trio.testing.wait_all_tasks_blocked()
            answers: list[tuple[str, object]] = []
            events: list[str] = []

            def answered(kind: str, value: object) -> None:
                answers.append((kind, value))
                events.append("answered")

            def write(batch, sync: bool = True) -> None:
                events.append(f"write {'synced' if sync else 'commit'} {batch.commit}")
                write_first(batch, sync)

            write_first, node.journal.write = node.journal.write, write
            syncs = node.syncs
            assert node.propose_nowait(b"small", answered)
            assert answers == [("ok", 0)]  # no checkpoint in between: handled right here
            assert node.syncs == syncs + 1
            commit = node.replica.commit
            assert events == ["write synced None", "answered", f"write commit {commit}"]
            assert node.propose_nowait(b"x" * 2048, answered)  # over the inline bound
            assert node.propose_nowait(b"after", answered)
            assert answers == [("ok", 0)]  # waiting for the writer thread
            while len(answers) < 3:
                await trio.sleep(0.01)
            assert answers == [("ok", 0), ("ok", 1), ("ok", 2)]


async def test_a_node_whose_disk_fails_stops_with_the_disk_error(tmp_path: Path) -> None:
    """The write that fails may be made by a task reading from a peer. If the loop finds the
    journal closed first, trio replaces that task's error with Cancelled (its connection
    is closed at a checkpoint while the node stops): every error that stops the node must
    name what failed."""
    addresses = await free_addresses(3)
    journal = RocksJournal.open(tmp_path / "node2", Identity("test", 2), True)
    victim = Node(
        NodeSettings(PeerSettings("test", 2, addresses), Config(nodes=(0, 1, 2))),
        journal,
        log_machine,
    )
    sync_logs = journal._sync_logs
    full = False

    def write(batch, sync: bool = True) -> None:
        nonlocal full
        full = full or bool(batch.entries)  # the disk fills up once entries come
        write_first(batch, sync)

    def sync_or_fail() -> None:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device (planted)")
        sync_logs()

    write_first, journal.write, journal._sync_logs = journal.write, write, sync_or_fail
    with trio.fail_after(LIMIT_S):
        async with running(tmp_path, addresses, nodes=[0, 1]) as nodes:

            async def publish() -> None:
                leader = await leader_of({**nodes, 2: victim})  # it fails as leader too
                for i in range(1000):
                    await leader.submit(b"%d" % i)

            with pytest.raises(ExceptionGroup) as stopped:
                async with trio.open_nursery() as nursery:
                    await nursery.start(victim.run)
                    nursery.start_soon(publish)
    journal.close()
    leaves = list(_leaves(stopped.value))
    assert leaves
    for error in leaves:
        assert isinstance(error, StorageError), repr(error)
        assert "No space left on device (planted)" in str(error)


def _leaves(error: BaseException):
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def test_writes_merged_into_one_group_commit_keep_every_field() -> None:
    """Every field of every batch reaches the merged write (a VotingRecord once did not)."""
    from paxq.broker.node.core import Write
    from paxq.broker.node.runtime import _merged
    from paxq.storage import Batch

    first, second = Batch(), Batch()
    first.promise((1, 0))
    first.accept(3, (1, 0), (b"a",))
    first.truncate(1)
    second.set_commit(4)
    second.voting = True
    merged = _merged([Write(1, first, [], True, None), Write(2, second, [], True, None)])
    for name in Batch.__slots__:
        assert getattr(merged, name) not in (None, {}), f"{name} was dropped"
    assert (merged.promised, merged.commit, merged.voting) == ((1, 0), 4, True)
