"""The state store on real SQLite files: opening, schema versions, columns added later."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from otelbridge.store import SCHEMA_VERSION, FairLock, StoreError, open_state, open_state_reader, state_path


def test_a_store_from_before_the_backfill_mark_gets_its_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    db = open_state(tmp_path)
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO backfill (agent_id, range, cursor, done, calls) VALUES ('a', '..', 'c', 1, 7)"
        )
        conn.execute("ALTER TABLE backfill DROP COLUMN head_id")
        conn.execute("ALTER TABLE backfill DROP COLUMN head_start_ns")
    db.close()

    db = open_state(tmp_path)
    with db.reading() as conn:
        rows = conn.execute(
            "SELECT agent_id, cursor, done, calls, head_id, head_start_ns FROM backfill"
        ).fetchall()
    db.close()
    assert rows == [("a", "c", 1, 7, None, None)]


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
    db = open_state(tmp_path)
    reader = open_state_reader(tmp_path)
    with db.transaction() as conn:
        conn.execute("INSERT INTO meta VALUES ('k', 'v')")
    with reader.reading() as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='k'").fetchone() == ("v",)
    reader.close()
    db.close()
