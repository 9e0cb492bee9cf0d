"""One conformance suite for both journals (RocksDB on real files, and the in-memory twin),
plus what only a real disk can get wrong: corrupt records and foreign directories."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict

from paxq.broker.paxos import (
    LEARNED,
    AcceptRecord,
    Ballot,
    CommitRecord,
    DurableState,
    PromiseRecord,
    VotingRecord,
)
from paxq.broker.persist import batch_of, durable_state
from paxq.storage import (
    NO_BALLOT,
    Batch,
    CorruptRecord,
    Identity,
    JournalClosed,
    JournalState,
    MemoryDisk,
    MemoryJournal,
    RocksJournal,
    StorageUnavailable,
    WrongDataDirectory,
)

ME = Identity("test-cluster", 1)
Opener = Callable[..., object]


@pytest.fixture(params=["memory", "rocks"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens the journal of one node; calling it again reopens the same data."""
    if request.param == "memory":
        disk = MemoryDisk()
        return lambda identity=ME, bootstrap=True: MemoryJournal(disk, identity, bootstrap)
    return lambda identity=ME, bootstrap=True: RocksJournal.open(
        tmp_path / "journal", identity, bootstrap
    )


def batch(**items) -> Batch:
    b = Batch()
    if "promise" in items:
        b.promise(items["promise"])
    for slot, ballot, value in items.get("accept", ()):
        b.accept(slot, ballot, value)
    if "commit" in items:
        b.set_commit(items["commit"])
    if "truncate" in items:
        b.truncate(items["truncate"])
    return b


def test_a_fresh_journal_is_empty(opener: Opener) -> None:
    assert opener().load() == JournalState(NO_BALLOT, {}, 0, 0)


def test_a_journal_created_without_bootstrap_does_not_vote_until_told(opener: Opener) -> None:
    journal = opener(bootstrap=False)
    assert journal.load().voting is False
    batch = Batch()
    batch.voting = True
    journal.write(batch)
    journal.close()
    assert opener(bootstrap=False).load().voting is True, "bootstrap matters only at creation"


def test_a_rocks_journal_from_before_the_voting_rule_votes(tmp_path: Path) -> None:
    from rocksdict import Rdict

    path = tmp_path / "journal"
    RocksJournal.open(path, ME, bootstrap=False).close()
    raw = Rdict(str(path))
    del raw[b"voting"]
    raw.close()
    assert RocksJournal.open(path, ME).load().voting is True


def test_what_was_written_survives_a_close_and_reopen(opener: Opener) -> None:
    journal = opener()
    journal.write(batch(promise=(3, 1), accept=[(0, (3, 1), (b"a", b"b"))], commit=1))
    journal.write(batch(accept=[(1, (3, 1), ()), (2, LEARNED, (b"x" * 5000,))]))
    journal.close()
    state = opener().load()
    assert state.promised == (3, 1)
    assert state.commit == 1
    assert state.entries == {
        0: ((3, 1), (b"a", b"b")),
        1: ((3, 1), ()),
        2: (tuple(LEARNED), (b"x" * 5000,)),
    }


def test_later_writes_win(opener: Opener) -> None:
    journal = opener()
    journal.write(batch(promise=(1, 0), accept=[(0, (1, 0), (b"old",))], commit=0))
    journal.write(batch(promise=(2, 2), accept=[(0, (2, 2), (b"new",))], commit=1))
    state = journal.load()
    assert state.promised == (2, 2) and state.commit == 1
    assert state.entries[0] == ((2, 2), (b"new",))


def test_truncation_drops_the_prefix_and_later_writes_below_it(opener: Opener) -> None:
    journal = opener()
    journal.write(batch(accept=[(s, (1, 0), (b"%d" % s,)) for s in range(10)], commit=10))
    journal.write(batch(truncate=6, accept=[(3, (1, 0), (b"late",))]))
    journal.write(batch(accept=[(4, (1, 0), (b"later",)), (10, (1, 0), (b"10",))]))
    journal.close()
    state = opener().load()
    assert state.log_start == 6
    assert sorted(state.entries) == [6, 7, 8, 9, 10]


def test_an_empty_batch_writes_nothing(opener: Opener) -> None:
    journal = opener()
    assert not Batch()
    journal.write(Batch())
    assert journal.load() == JournalState()


def test_a_journal_of_another_node_or_cluster_is_refused(opener: Opener) -> None:
    opener().close()
    with pytest.raises(WrongDataDirectory):
        opener(Identity("test-cluster", 2))
    with pytest.raises(WrongDataDirectory):
        opener(Identity("other-cluster", 1))


def test_a_closed_journal_refuses_work(opener: Opener) -> None:
    journal = opener()
    journal.close()
    with pytest.raises(JournalClosed):
        journal.write(batch(commit=1))
    with pytest.raises(JournalClosed):
        journal.load()


def test_a_snapshot_replaces_the_last_and_truncates_with_it(opener: Opener) -> None:
    journal = opener()
    assert journal.read_snapshot() == (0, [])
    journal.write(batch(accept=[(s, (1, 0), (b"%d" % s,)) for s in range(10)], commit=10))
    journal.save_snapshot(4, [b"a", b"b", b"c"], truncate_below=2)
    journal.save_snapshot(8, [b"state at 8"], truncate_below=6)
    journal.close()
    journal = opener()
    state = journal.load()
    assert (state.snapshot_slot, state.log_start, sorted(state.entries)) == (8, 6, [6, 7, 8, 9])
    # The first snapshot's surplus chunks are gone with it.
    assert journal.read_snapshot() == (8, [b"state at 8"])


def test_a_snapshot_never_moves_back_nor_truncates_past_itself(opener: Opener) -> None:
    journal = opener()
    journal.save_snapshot(5, [b"x"], truncate_below=5)
    with pytest.raises(ValueError, match="older"):
        journal.save_snapshot(4, [b"y"], truncate_below=0)
    with pytest.raises(ValueError, match="ends at"):
        journal.save_snapshot(6, [b"y"], truncate_below=7)
    journal.close()
    reopened = opener()  # and a reopened journal remembers where it stands before any load
    with pytest.raises(ValueError, match="older"):
        reopened.save_snapshot(4, [b"y"], truncate_below=0)
    assert reopened.read_snapshot() == (5, [b"x"])


# A sequence of batches, as a node's turns would produce them.
ballots = st.tuples(st.integers(0, 1 << 62), st.integers(-1, 7))
values = st.lists(st.binary(max_size=40), max_size=4).map(tuple)
batches = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "promise": ballots,
            "accept": st.lists(st.tuples(st.integers(0, 30), ballots, values), max_size=5),
            "commit": st.integers(0, 30),
            "truncate": st.integers(0, 30),
            "snapshot": st.tuples(st.integers(0, 30), st.lists(st.binary(max_size=9), max_size=3)),
        },
    ),
    max_size=12,
)
_directories = itertools.count()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(turns=batches)
def test_both_journals_end_in_the_same_state(turns: list[dict], tmp_path: Path) -> None:
    twin = MemoryJournal(MemoryDisk(), ME)
    path = tmp_path / f"journal-{next(_directories)}"
    rocks = RocksJournal.open(path, ME)
    try:
        for items in turns:
            snapshot = items.pop("snapshot", None)
            twin.write(batch(**items))
            rocks.write(batch(**items))
            if snapshot is not None:
                slot, chunks = snapshot
                slot = max(slot, twin.load().snapshot_slot)
                below = min(slot, items.get("truncate", 0))
                twin.save_snapshot(slot, chunks, below)
                rocks.save_snapshot(slot, chunks, below)
        rocks.close()
        rocks = RocksJournal.open(path, ME)
        assert rocks.load() == twin.load()
        assert rocks.read_snapshot() == twin.read_snapshot()
    finally:
        rocks.close()


# ------------------------------------------------------------------------- RocksDB only


def _raw(path: Path) -> Rdict:
    return Rdict(str(path), Options(raw_mode=True))


def _flip(path: Path, key: bytes, at: int, bits: int) -> None:
    """Corrupt one stored record behind the journal's back."""
    raw = _raw(path)
    value = bytearray(raw[key])
    value[at] ^= bits
    raw[key] = bytes(value)
    raw.close()


def test_a_flipped_bit_is_refused_with_the_record_named(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = RocksJournal.open(path, ME)
    journal.write(batch(promise=(1, 1), accept=[(7, (1, 1), (b"payload",))], commit=0))
    journal.close()
    key = b"e" + (7).to_bytes(8, "big")
    _flip(path, key, -2, 0x01)
    with pytest.raises(CorruptRecord) as caught:
        RocksJournal.open(path, ME).load()
    assert caught.value.key == key and "checksum" in caught.value.reason


def test_a_valid_record_under_another_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = RocksJournal.open(path, ME)
    journal.write(batch(accept=[(1, (1, 1), (b"one",))]))
    journal.close()
    raw = _raw(path)
    raw[b"e" + (2).to_bytes(8, "big")] = raw[b"e" + (1).to_bytes(8, "big")]
    raw.close()
    with pytest.raises(CorruptRecord):
        RocksJournal.open(path, ME).load()


def test_a_corrupt_snapshot_chunk_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = RocksJournal.open(path, ME)
    journal.save_snapshot(3, [b"one", b"two"], truncate_below=0)
    journal.close()
    key = b"j" + (1).to_bytes(4, "big")  # the first snapshot is generation 1
    _flip(path, key, -1, 0x40)
    with pytest.raises(CorruptRecord) as caught:
        RocksJournal.open(path, ME).read_snapshot()
    assert caught.value.key == key


def test_a_snapshot_save_cut_short_leaves_the_last_one_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal"
    journal = RocksJournal.open(path, ME)
    journal.save_snapshot(3, [b"one", b"two", b"three"], truncate_below=0)
    journal.save_snapshot(5, [b"five"], truncate_below=0)  # back to generation 0
    real, writes = journal._commit_batch, []

    def crash_at_the_last_write(out, sync: bool = True) -> None:
        if sync:
            raise StorageUnavailable("the process died here")
        writes.append(out)
        real(out, sync)

    monkeypatch.setattr(journal, "_commit_batch", crash_at_the_last_write)
    with pytest.raises(StorageUnavailable):
        journal.save_snapshot(9, [b"nine-a", b"nine-b"], truncate_below=0)
    assert len(writes) == 2  # one write per chunk, before the final one
    monkeypatch.undo()
    journal.close()
    journal = RocksJournal.open(path, ME)
    assert journal.read_snapshot() == (5, [b"five"])
    journal.save_snapshot(12, [b"twelve"], truncate_below=0)
    journal.close()
    raw = _raw(path)
    chunk_keys = [key for key, _ in raw.items() if key[:1] in (b"j", b"k")]
    raw.close()
    # Only the stored snapshot's chunks remain: the old generation and the save cut short
    # (whose second chunk the new one does not overwrite) are gone.
    assert chunk_keys == [b"j" + (0).to_bytes(4, "big")]
    assert RocksJournal.open(path, ME).read_snapshot() == (12, [b"twelve"])


def test_a_snapshot_stored_without_a_generation_is_generation_0(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    RocksJournal.open(path, ME).close()
    raw = _raw(path)
    for key, value in ((b"k" + (0).to_bytes(4, "big"), b"old"), (b"snapshot", [4, 1])):
        data = cbor2.dumps(value)
        raw[key] = zlib.crc32(data, zlib.crc32(key)).to_bytes(4, "big") + data
    raw.close()
    journal = RocksJournal.open(path, ME)
    assert journal.read_snapshot() == (4, [b"old"])
    journal.save_snapshot(6, [b"new"], truncate_below=0)
    assert journal.read_snapshot() == (6, [b"new"])


def test_a_truncated_promise_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = RocksJournal.open(path, ME)
    journal.write(batch(promise=(4, 2)))
    journal.close()
    raw = _raw(path)
    raw[b"promise"] = raw[b"promise"][:3]
    raw.close()
    with pytest.raises(CorruptRecord, match="promise"):
        RocksJournal.open(path, ME).load()


def test_a_directory_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    with pytest.raises(WrongDataDirectory, match="holds no paxq journal"):
        RocksJournal.open(tmp_path / "data", ME)
    (tmp_path / "file").write_text("x")
    with pytest.raises(WrongDataDirectory, match="not a directory"):
        RocksJournal.open(tmp_path / "file", ME)


def _commit_at(slot: int) -> Batch:
    batch = Batch()
    batch.set_commit(slot)
    return batch


def test_a_synced_write_fdatasyncs_every_write_ahead_log_and_a_new_ones_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = RocksJournal.open(tmp_path / "journal", ME)
    synced: list[str] = []

    def record(kind: str, real):
        def sync(fd: int) -> None:
            synced.append(f"{kind} {os.path.basename(os.readlink(f'/proc/self/fd/{fd}'))}")
            real(fd)

        return sync

    listed: list[str] = []

    def list_logs() -> None:
        listed.append("journal")
        real_list_logs()

    real_list_logs = journal._list_logs
    monkeypatch.setattr(os, "fdatasync", record("data", os.fdatasync))
    monkeypatch.setattr(os, "fsync", record("dir", os.fsync))
    monkeypatch.setattr(journal, "_list_logs", list_logs)
    logs = sorted(p.name for p in (tmp_path / "journal").glob("*.log"))
    journal.write(_commit_at(1))
    assert synced == [f"data {name}" for name in logs]  # known since the open: no directory sync
    synced.clear()
    journal.write(_commit_at(2), sync=False)
    assert synced == []
    journal.write(_commit_at(2))
    assert synced == [f"data {logs[-1]}"] and listed == []  # no switch: not listed since the open
    synced.clear()
    keys = journal.keyspace()
    keys.put(b"k", b"payload")  # the key space's memtable keeps the old log alive
    keys.flush()
    journal._open_db().flush()  # a memtable switch: a new log file
    journal.write(_commit_at(3))
    now = sorted(p.name for p in (tmp_path / "journal").glob("*.log"))
    assert set(now) - set(logs), "the flush started no new log"
    assert len(now) == 2
    assert sorted(synced) == sorted([f"data {name}" for name in now] + ["dir journal"])
    assert listed == ["journal"]  # the switch was noticed
    synced.clear()
    journal.write(_commit_at(4))  # the old log was synced since it was left: only the new one
    assert synced == [f"data {now[-1]}"]
    journal.write(_commit_at(5), sync=False)  # something in the log for the next switch
    keys.put(b"k2", b"payload")
    keys.flush()
    journal._open_keys()[0].flush()  # the key space's memtable alone switches: a new log too
    synced.clear()
    journal.write(_commit_at(6))
    newest = max(p.name for p in (tmp_path / "journal").glob("*.log"))
    assert newest > now[-1] and f"data {newest}" in synced
    journal.close()
    reopened = RocksJournal.open(tmp_path / "journal", ME)
    assert reopened.load().commit == 6
    assert reopened.keyspace().get(b"k") == b"payload"  # flushed at the close


_DIES_AFTER_WRITING = """
import os, sys
from paxq.storage import Batch, Identity, RocksJournal
journal = RocksJournal.open(sys.argv[1], Identity("test-cluster", 1), True)
keys = journal.keyspace()
keys.put(b"before", b"kept")
keys.flush()
journal.save_snapshot(5, [b"chunk"], 0)
keys.put(b"after", b"lost")
keys.flush()
batch = Batch()
batch.set_commit(7)
journal.write(batch)  # synced: it does not cover the key space
os._exit(0)  # no close: what the process held in memory is gone, as after kill -9
"""


def test_the_key_space_skips_the_log_and_a_stored_snapshot_makes_it_durable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal"
    subprocess.run([sys.executable, "-c", _DIES_AFTER_WRITING, str(path)], check=True, timeout=60)
    journal = RocksJournal.open(path, ME)
    keys = journal.keyspace()
    assert keys.get(b"before") == b"kept"  # flushed before the snapshot was stored
    assert keys.get(b"after") is None  # the replay of the log writes it again
    assert journal.load().commit == 7
    assert journal.read_snapshot() == (5, [b"chunk"])


def test_the_twin_loses_key_space_writes_since_the_last_stored_snapshot() -> None:
    disk = MemoryDisk()
    journal = MemoryJournal(disk, ME, True)
    keys = journal.keyspace()
    keys.put(b"before", b"kept")
    keys.flush()
    journal.save_snapshot(5, [b"chunk"], 0)
    keys.put(b"after", b"lost")
    keys.flush()  # written, not flushed by a snapshot: a crash may lose it
    keys.put(b"later", b"lost too")  # buffered in the process: a crash loses it
    journal.write(_commit_at(7))
    assert disk.crash(0, keep_keys=0) == 1
    keys = MemoryJournal(disk, ME).keyspace()
    assert (keys.get(b"before"), keys.get(b"after"), keys.get(b"later")) == (b"kept", None, None)


def test_a_synced_write_that_finds_no_write_ahead_log_fails_and_closes_the_journal(
    tmp_path: Path,
) -> None:
    journal = RocksJournal.open(tmp_path / "journal", ME)
    journal.write(_commit_at(1))
    for log in (tmp_path / "journal").glob("*.log"):
        log.unlink()  # RocksDB writes on into the unlinked file: nothing would make it durable
    with pytest.raises(StorageUnavailable, match="no write-ahead log file"):
        journal.write(_commit_at(2))
    with pytest.raises(JournalClosed, match=r"stopped: .* no write-ahead log file"):
        journal.write(_commit_at(3))  # whoever finds it closed is told why


# ---------------------------------------------------------------- the core's records, persisted


def test_records_through_the_journal_rebuild_what_replaying_them_would() -> None:
    records = [
        PromiseRecord(Ballot(2, 1)),
        AcceptRecord(0, Ballot(2, 1), (b"a",)),
        AcceptRecord(1, LEARNED, (b"b", b"c")),
        CommitRecord(2),
        PromiseRecord(Ballot(5, 0)),
        AcceptRecord(2, Ballot(5, 0), ()),
        VotingRecord(True),
    ]
    replayed = DurableState(voting=False)
    for record in records:
        replayed.apply(record)
    journal = MemoryJournal(MemoryDisk(), ME)  # a node that lost its data, learning
    assert durable_state(journal.load()).voting is False
    journal.write(batch_of(records[:4]))
    journal.write(batch_of(records[4:]))
    assert durable_state(journal.load()) == replayed
    with pytest.raises(TypeError):
        batch_of(["not a record"])


def test_a_snapshot_view_holds_the_journal_as_of_its_making(opener: Opener) -> None:
    journal = opener()
    keys = journal.keyspace()
    for n in range(5):
        keys.put(b"m%d" % n, b"payload %d" % n)
    keys.flush()
    journal.save_snapshot(4, [b"four", b"chunks"], truncate_below=0)
    view = journal.snapshot_view()
    # What a node does while the view is shipped: a newer snapshot, then the deletion of
    # the payloads the older one needed, and new payloads.
    journal.save_snapshot(9, [b"nine"], truncate_below=0)
    keys.delete_range(b"m0", b"m3")
    keys.put(b"m9", b"later")
    keys.flush()
    assert (view.slot, view.chunks) == (4, [b"four", b"chunks"])
    expected = [(b"m%d" % n, b"payload %d" % n) for n in range(5)]
    assert list(view.keys()) == expected
    assert list(view.keys()) == expected, "a second pass sees the same"
    assert [key for key, _ in keys.items(b"m", b"n")] == [b"m3", b"m4", b"m9"]


def test_get_many_answers_as_get_does(opener: Opener) -> None:
    """Runs, gaps, keys past the end, duplicates, buffered puts, in any order."""
    keys = opener().keyspace()
    for n in [*range(0, 40), *range(45, 60, 3), 90]:
        keys.put(b"m%03d" % n, b"v%d" % n)
    keys.flush()
    keys.put(b"m041", b"buffered")  # not flushed: seen as get sees it
    keys.put(b"m045", b"rewritten")
    asked = [b"m%03d" % n for n in [*range(0, 100), 7, 95, 3, 41, 200]]
    random.Random(7).shuffle(asked)
    assert keys.get_many(asked) == [keys.get(key) for key in asked]
    assert keys.get_many([b"m041", b"m045", b"m046", b"m048"]) == [
        b"buffered",
        b"rewritten",
        None,
        b"v48",
    ]
    sparse = [b"m%03d" % n for n in (1, 5, 30, 47, 57, 90)]  # keys between them are passed
    assert keys.get_many(sparse) == [keys.get(key) for key in sparse]
    assert keys.get_many([]) == []


def test_payloads_a_journal_kept_beside_its_records_move_to_their_column_family(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal"
    RocksJournal.open(path, ME).close()
    raw = _raw(path)  # payloads where a journal of before kept them: the default family
    for n in range(25_000):
        full = b"P" + b"m%06d" % n
        value = b"v%d" % n
        raw[full] = zlib.crc32(value, zlib.crc32(full)).to_bytes(4, "big") + value
    raw.close()
    journal = RocksJournal.open(path, ME)
    keys = journal.keyspace()
    assert keys.get(b"m000000") == b"v0" and keys.get(b"m024999") == b"v24999"
    assert sum(1 for _ in keys.items(b"m", b"n")) == 25_000
    journal.close()
    raw = _raw(path)
    assert not [key for key in raw.keys(from_key=b"P") if key.startswith(b"P")]
    raw.close()
