"""The spool on a real SQLite file: order, caps (counted), dead letters, superseded metrics."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from otelbridge.delivery.spool import Spool, SpoolEntry
from otelbridge.store import open_state

S = 1_000_000_000


def _oldest(spool: Spool, conn: sqlite3.Connection) -> SpoolEntry | None:
    """What the sender takes first when nothing may be merged."""
    entries = spool.take(conn, "traces", max_bytes=0)
    return entries[0] if entries else None


def test_oldest_first_per_signal_and_delete(tmp_path: Path) -> None:
    db = open_state(tmp_path)
    spool = Spool(max_bytes=1 << 20, max_age_ns=3600 * S)
    with db.transaction() as conn:
        a = spool.add(conn, "traces", b"a", 1, 10, call_ends=[5])
        spool.add(conn, "metrics", b"m", 2, 11)
        spool.add(conn, "traces", b"b", 1, 12)
    with db.transaction() as conn:
        first = _oldest(spool, conn)
        assert first is not None and (first.id, first.body, first.call_ends) == (a, b"a", [5])
        spool.delete(conn, a)
        second = _oldest(spool, conn)
        assert second is not None and second.body == b"b"
        stats = spool.stats(conn)
    assert stats.depth == {"traces": 1, "metrics": 1} and stats.bytes == 2 and stats.oldest_ns == 11
    db.close()


def test_size_cap_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    db = open_state(tmp_path)
    spool = Spool(max_bytes=250, max_age_ns=3600 * S)
    with db.transaction() as conn:
        for i in range(5):
            spool.add(conn, "traces", bytes(100), 3, i)
        dropped = spool.enforce_caps(conn, 10)
        left = spool.stats(conn)
    assert dropped.by == {("traces", "size"): [3, 9]}
    assert left.depth["traces"] == 2 and left.bytes == 200 and left.oldest_ns == 3
    db.close()


def test_age_cap_drops_old_requests(tmp_path: Path) -> None:
    db = open_state(tmp_path)
    spool = Spool(max_bytes=1 << 20, max_age_ns=60 * S)
    with db.transaction() as conn:
        spool.add(conn, "metrics", b"old", 4, 0)
        spool.add(conn, "traces", b"new", 1, 100 * S)
        dropped = spool.enforce_caps(conn, 100 * S)
        assert dropped.by == {("metrics", "age"): [1, 4]}
        assert spool.stats(conn).depth == {"traces": 1, "metrics": 0}
    db.close()


def test_dead_letter_keeps_the_request_and_the_reason(tmp_path: Path) -> None:
    db = open_state(tmp_path)
    spool = Spool(max_bytes=1 << 20, max_age_ns=3600 * S)
    with db.transaction() as conn:
        spool.add(conn, "traces", b"x", 7, 1)
        entry = _oldest(spool, conn)
        assert entry is not None
        spool.dead_letter(conn, entry, 2, "400", "bad request: span name empty")
        assert _oldest(spool, conn) is None
        row = conn.execute("SELECT signal, body, items, status, reason FROM dead_letters").fetchone()
        assert spool.stats(conn).dead_letters == 1
    assert (row[0], bytes(row[1]), row[2], row[3], row[4]) == (
        "traces",
        b"x",
        7,
        "400",
        "bad request: span name empty",
    )
    db.close()


def test_newer_cumulative_metrics_supersede_older_of_the_same_process(tmp_path: Path) -> None:
    db = open_state(tmp_path)
    spool = Spool(max_bytes=1 << 20, max_age_ns=3600 * S)
    with db.transaction() as conn:
        spool.add(conn, "metrics", b"before-restart", 1, 1, epoch="old")
        spool.add(conn, "metrics", b"1", 1, 2, epoch="now")
        newest = spool.add(conn, "metrics", b"2", 1, 3, epoch="now")
        assert spool.supersede_metrics(conn, "now", newest) == 1
        bodies = [bytes(r[0]) for r in conn.execute("SELECT body FROM spool ORDER BY id")]
    assert bodies == [b"before-restart", b"2"]  # another process's series is kept
    db.close()


def test_take_returns_the_oldest_requests_up_to_the_byte_cap(tmp_path: Path) -> None:
    db = open_state(tmp_path)
    spool = Spool(max_bytes=1 << 20, max_age_ns=3600 * S)
    with db.transaction() as conn:
        for body in (b"aaa", b"bb", b"c", b"dddd"):
            spool.add(conn, "traces", body, 1, 0, call_ends=[len(body)])
        spool.add(conn, "metrics", b"m", 1, 0)
        taken = spool.take(conn, "traces", max_bytes=6)
        assert [(e.body, e.call_ends) for e in taken] == [(b"aaa", [3]), (b"bb", [2]), (b"c", [1])]
        assert [e.body for e in spool.take(conn, "traces", max_bytes=0)] == [b"aaa"]  # at least one
        spool.delete(conn, *(e.id for e in taken))
        assert [e.body for e in spool.take(conn, "traces", max_bytes=100)] == [b"dddd"]
        assert spool.take(conn, "metrics", max_bytes=0)[0].body == b"m"
    db.close()


def test_the_byte_total_follows_every_insert_and_delete(tmp_path: Path) -> None:
    db = open_state(tmp_path)
    spool = Spool(max_bytes=250, max_age_ns=60 * S)

    def total_and_sum() -> tuple[int, int]:
        with db.reading() as conn:
            summed = conn.execute("SELECT COALESCE(SUM(size), 0) FROM spool").fetchone()[0]
            return spool.stats(conn).bytes, summed

    with db.transaction() as conn:
        ids = [spool.add(conn, "traces", bytes(100), 1, i * S) for i in range(4)]
    assert total_and_sum() == (400, 400)
    with db.transaction() as conn:
        spool.enforce_caps(conn, 0)  # the size cap drops the two oldest
    assert total_and_sum() == (200, 200)
    with db.transaction() as conn:
        spool.delete(conn, ids[2])
        entry = _oldest(spool, conn)
        assert entry is not None
        spool.dead_letter(conn, entry, 1, "400", "bad")
    assert total_and_sum() == (0, 0)
    with db.transaction() as conn:
        spool.add(conn, "metrics", bytes(50), 1, 0)
        spool.enforce_caps(conn, 100 * S)  # the age cap
    assert total_and_sum() == (0, 0)
    db.close()


def test_a_state_store_from_before_the_byte_total_gets_it_on_open(tmp_path: Path) -> None:
    db = open_state(tmp_path)
    spool = Spool(max_bytes=1 << 20, max_age_ns=3600 * S)
    with db.transaction() as conn:
        spool.add(conn, "traces", bytes(70), 1, 0)
        spool.add(conn, "traces", bytes(30), 1, 0)
        for statement in (
            "DROP TRIGGER spool_total_add",
            "DROP TRIGGER spool_total_remove",
            "DROP TABLE spool_total",
        ):
            conn.execute(statement)
    db.close()
    db = open_state(tmp_path)
    with db.transaction() as conn:
        assert spool.stats(conn).bytes == 100
        spool.add(conn, "traces", bytes(5), 1, 0)
        assert spool.stats(conn).bytes == 105
    db.close()
