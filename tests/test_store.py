"""The state store on real SQLite files: opening, schema versions, columns added later."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from otelbridge.store import (
    FreeSpace,
    StoreError,
    free_bytes,
    open_inbox,
    open_state,
    open_state_reader,
    state_path,
)
from otelbridge.store.sqlite import SCHEMA_VERSION, FairLock
from tests.support.tmpfs import fill, tmpfs

MiB = 1024 * 1024


def test_a_store_from_before_the_backfill_mark_gets_its_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    with state.db.transaction() as conn:
        conn.execute(
            "INSERT INTO backfill (agent_id, range, cursor, done, calls) VALUES ('a', '..', 'c', 1, 7)"
        )
        conn.execute("ALTER TABLE backfill DROP COLUMN head_id")
        conn.execute("ALTER TABLE backfill DROP COLUMN head_start_ns")
    state.close()

    state = open_state(tmp_path)
    with state.db.reading() as conn:
        rows = conn.execute(
            "SELECT agent_id, cursor, done, calls, head_id, head_start_ns FROM backfill"
        ).fetchall()
    state.close()
    assert [tuple(row) for row in rows] == [("a", "c", 1, 7, None, None)]


def test_a_spool_take_reads_sizes_from_an_index_and_only_the_bodies_it_sends(tmp_path: Path) -> None:
    """A row's columns after its body are reached through the body's overflow pages: the sizes a
    take adds up come from a covering index, and the rows it returns from their id range."""
    state = open_state(tmp_path)
    big = 3 * MiB
    with state.transaction() as tx:
        ids = [tx.spool_add("traces", bytes([n]) * big, 1, n) for n in range(3)]
        tx.spool_add("metrics", b"m", 1, 9, epoch="e")
    with state.db.reading() as conn:
        plan = " ".join(
            row[3]
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT id, size FROM spool WHERE signal=? AND id > ? ORDER BY id",
                ("traces", 0),
            )
        )
    assert "COVERING INDEX spool_take" in plan
    with state.transaction() as tx:
        taken = tx.spool_take("traces", 2 * MiB)
        assert [(e.id, len(e.body), e.body[:1]) for e in taken] == [(ids[0], big, b"\x00")]
        assert [e.id for e in tx.spool_take("traces", 2 * big, after_id=ids[0])] == ids[1:]
    state.close()


def test_an_older_spool_index_is_replaced_on_open(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    with state.db.transaction() as conn:
        conn.execute("DROP INDEX spool_take")
        conn.execute("CREATE INDEX spool_signal ON spool (signal, id)")
    state.close()
    state = open_state(tmp_path)
    with state.db.reading() as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE tbl_name='spool'")}
    assert "spool_take" in names and "spool_signal" not in names
    state.close()


def test_a_store_written_by_a_newer_version_is_refused_by_name(tmp_path: Path) -> None:
    open_state(tmp_path).close()
    conn = sqlite3.connect(state_path(tmp_path))
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    newer = rf"written by a newer otelbridge \(schema {SCHEMA_VERSION + 1} > {SCHEMA_VERSION}\)"
    with pytest.raises(StoreError, match=newer):
        open_state(tmp_path)


def test_the_lock_goes_to_threads_in_the_order_they_asked() -> None:
    lock = FairLock()
    order: list[int] = []

    def take(n: int) -> None:
        with lock:
            order.append(n)

    with lock:
        threads = []
        for n in range(4):
            thread = threading.Thread(target=take, args=(n,))
            thread.start()
            threads.append(thread)
            time.sleep(0.05)  # each one queued before the next asks
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3]


def test_a_thread_that_releases_and_asks_again_at_once_lets_the_waiting_one_go_first() -> None:
    """What starved the sender: the processor's batches back to back on one connection."""
    lock = FairLock()
    events: list[str] = []
    waiting = threading.Event()

    def other() -> None:
        waiting.set()
        with lock:
            events.append("other")

    lock.__enter__()
    thread = threading.Thread(target=other)
    thread.start()
    waiting.wait(5)
    time.sleep(0.05)  # the other thread is now waiting for the lock
    lock.__exit__()
    with lock:  # straight back in, as a loop of batches does
        events.append("again")
    thread.join(5)
    assert events == ["other", "again"]


def test_a_reader_connection_sees_what_the_writer_committed(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    reader = open_state_reader(tmp_path)
    with state.transaction() as tx:
        tx.set_meta("k", "v")
    with reader.reading() as tx:
        assert tx.get_meta("k") == "v"
    reader.close()
    state.close()


# --- a full disk (a real tmpfs) ------------------------------------------------------------------
def test_a_write_the_disk_cannot_hold_raises_sqlites_own_error_and_leaves_the_store_usable(
    tmp_path: Path,
) -> None:
    """SQLite rolls back by itself on SQLITE_FULL: the transaction helper must not roll back a
    second time ("cannot rollback - no transaction is active"), which hid the real error."""
    with tmpfs(tmp_path / "vol", 8 * MiB) as vol:
        db = open_inbox(vol).db  # the engine's transaction helper itself
        filler = fill(vol, 1 * MiB)

        def write_5_mb() -> None:
            with db.transaction() as conn:
                for _ in range(10):  # more than the page cache holds: it spills inside the block
                    conn.execute(
                        "INSERT INTO inbox (received_ns, event_type, call_id, body) VALUES (0, 't', 'c', ?)",
                        (os.urandom(500_000),),
                    )

        with pytest.raises(sqlite3.OperationalError) as info:
            write_5_mb()
        assert str(info.value) == "database or disk is full"
        assert info.value.__context__ is None  # no second error raised while handling it
        assert not db.conn.in_transaction
        filler.unlink()
        with db.transaction() as conn:  # space is back: the same connection writes again
            conn.execute(
                "INSERT INTO inbox (received_ns, event_type, call_id, body) VALUES (0, 't', 'c', x'00')"
            )
        db.close()


def test_free_space_is_measured_against_the_floor_and_cached(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "vol", 8 * MiB) as vol:
        filler = fill(vol, 1 * MiB)
        space = FreeSpace(vol, 2 * MiB, ttl_s=3600)
        problem = space.problem()
        assert problem == f"free space {free_bytes(vol)} bytes below OTELBRIDGE_MIN_FREE_BYTES ({2 * MiB})"
        filler.unlink()
        assert space.problem() == problem  # the reading is cached: no statvfs per request
        assert space.problem(fresh=True) is None
        # bytes written within one reading are counted off it
        room = free_bytes(vol) - 2 * MiB
        assert space.problem(room) is None
        assert space.problem() is None  # exactly at the floor
        assert space.problem(1) is None  # a write may go below it (the reserve is for that)...
        # ... and then nothing more until space returns
        assert (
            space.problem() == f"free space {2 * MiB - 1} bytes below OTELBRIDGE_MIN_FREE_BYTES ({2 * MiB})"
        )
        assert FreeSpace(vol, 0).problem(10 * MiB) is None  # 0: no floor


def test_probe_write_commits_a_real_write(tmp_path: Path) -> None:
    """An empty transaction writes nothing and passes on any disk; the probe commits a change
    that another connection sees (``data_version`` moves only for a commit by another one)."""
    inbox = open_inbox(tmp_path)
    other = sqlite3.connect(tmp_path / "inbox.db")
    before = other.execute("PRAGMA data_version").fetchone()[0]
    with inbox.db.transaction():
        pass
    assert other.execute("PRAGMA data_version").fetchone()[0] == before
    inbox.db.probe()
    after_probe_write = other.execute("PRAGMA data_version").fetchone()[0]
    assert after_probe_write != before
    inbox.probe()  # the store's probe (what readiness calls) is the same real write
    assert other.execute("PRAGMA data_version").fetchone()[0] != after_probe_write
    other.close()
    inbox.close()


def test_opening_the_store_on_a_full_volume_says_the_volume_is_full(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "vol", 4 * MiB) as vol:
        open_inbox(vol).close()  # a store from before, as at a restart
        fill(vol, 0)
        with pytest.raises(StoreError) as info:
            open_inbox(vol)
        assert f"cannot open {vol / 'inbox.db'}: " in str(info.value)
        assert "; the volume has 0 bytes free. Fix: free space on it" in str(info.value)
