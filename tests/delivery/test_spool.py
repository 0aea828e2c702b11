"""The spool on a real SQLite file: order, caps (counted), dead letters, superseded metrics."""

from __future__ import annotations

from pathlib import Path

from otelbridge.delivery.spool import Spool, SpoolEntry
from otelbridge.store import StateTx, open_state

S = 1_000_000_000


def _oldest(tx: StateTx) -> SpoolEntry | None:
    """What the sender takes first when nothing may be merged."""
    entries = tx.spool_take("traces", 0)
    return entries[0] if entries else None


def test_oldest_first_per_signal_and_delete(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    with state.transaction() as tx:
        a = tx.spool_add("traces", b"a", 1, 10, call_ends=[5])
        tx.spool_add("metrics", b"m", 2, 11)
        tx.spool_add("traces", b"b", 1, 12)
    with state.transaction() as tx:
        first = _oldest(tx)
        assert first is not None and (first.id, first.body, first.call_ends) == (a, b"a", [5])
        tx.spool_delete([a])
        second = _oldest(tx)
        assert second is not None and second.body == b"b"
        stats = tx.spool_stats()
    assert stats.depth == {"traces": 1, "metrics": 1} and stats.bytes == 2 and stats.oldest_ns == 11
    state.close()


def test_size_cap_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    spool = Spool(max_bytes=250, max_age_ns=3600 * S)
    with state.transaction() as tx:
        for i in range(5):
            tx.spool_add("traces", bytes(100), 3, i)
        dropped = spool.enforce_caps(tx, 10)
        left = tx.spool_stats()
    assert dropped.by == {("traces", "size"): [3, 9]}
    assert left.depth["traces"] == 2 and left.bytes == 200 and left.oldest_ns == 3
    state.close()


def test_age_cap_drops_old_requests(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    spool = Spool(max_bytes=1 << 20, max_age_ns=60 * S)
    with state.transaction() as tx:
        tx.spool_add("metrics", b"old", 4, 0)
        tx.spool_add("traces", b"new", 1, 100 * S)
        dropped = spool.enforce_caps(tx, 100 * S)
        assert dropped.by == {("metrics", "age"): [1, 4]}
        assert tx.spool_stats().depth == {"traces": 1, "metrics": 0}
    state.close()


def test_dead_letter_keeps_the_request_and_the_reason(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    with state.transaction() as tx:
        tx.spool_add("traces", b"x", 7, 1)
        entry = _oldest(tx)
        assert entry is not None
        tx.dead_letter(entry, 2, "400", "bad request: span name empty")
        assert _oldest(tx) is None
        # what is really in the file (the store has no reader of dead letters)
        row = state.db.conn.execute("SELECT signal, body, items, status, reason FROM dead_letters").fetchone()
        assert tx.spool_stats().dead_letters == 1
    assert (row["signal"], bytes(row["body"]), row["items"], row["status"], row["reason"]) == (
        "traces",
        b"x",
        7,
        "400",
        "bad request: span name empty",
    )
    state.close()


def test_newer_cumulative_metrics_supersede_older_of_the_same_process(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    with state.transaction() as tx:
        tx.spool_add("metrics", b"before-restart", 1, 1, epoch="old")
        tx.spool_add("metrics", b"1", 1, 2, epoch="now")
        newest = tx.spool_add("metrics", b"2", 1, 3, epoch="now")
        assert tx.spool_supersede_metrics("now", newest) == 1
        bodies = [e.body for e in tx.spool_take("metrics", 1 << 62)]  # every one, oldest first
        assert tx.spool_stats().depth == {"traces": 0, "metrics": 2}
    assert bodies == [b"before-restart", b"2"]  # another process's series is kept
    state.close()


def test_take_returns_the_oldest_requests_up_to_the_byte_cap(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    with state.transaction() as tx:
        for body in (b"aaa", b"bb", b"c", b"dddd"):
            tx.spool_add("traces", body, 1, 0, call_ends=[len(body)])
        tx.spool_add("metrics", b"m", 1, 0)
        taken = tx.spool_take("traces", 6)
        assert [(e.body, e.call_ends) for e in taken] == [(b"aaa", [3]), (b"bb", [2]), (b"c", [1])]
        assert [e.body for e in tx.spool_take("traces", 0)] == [b"aaa"]  # at least one
        tx.spool_delete([e.id for e in taken])
        assert [e.body for e in tx.spool_take("traces", 100)] == [b"dddd"]
        assert tx.spool_take("metrics", 0)[0].body == b"m"
    state.close()


def test_the_byte_total_follows_every_insert_and_delete(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    spool = Spool(max_bytes=250, max_age_ns=60 * S)

    def total_and_sum() -> tuple[int, int]:
        """The total the triggers keep, and the sum of the sizes really in the file."""
        with state.reading() as tx:
            summed = state.db.conn.execute("SELECT COALESCE(SUM(size), 0) FROM spool").fetchone()[0]
            return tx.spool_stats().bytes, summed

    with state.transaction() as tx:
        ids = [tx.spool_add("traces", bytes(100), 1, i * S) for i in range(4)]
    assert total_and_sum() == (400, 400)
    with state.transaction() as tx:
        spool.enforce_caps(tx, 0)  # the size cap drops the two oldest
    assert total_and_sum() == (200, 200)
    with state.transaction() as tx:
        tx.spool_delete([ids[2]])
        entry = _oldest(tx)
        assert entry is not None
        tx.dead_letter(entry, 1, "400", "bad")
    assert total_and_sum() == (0, 0)
    with state.transaction() as tx:
        tx.spool_add("metrics", bytes(50), 1, 0)
        spool.enforce_caps(tx, 100 * S)  # the age cap
    assert total_and_sum() == (0, 0)
    state.close()


def test_a_state_store_from_before_the_byte_total_gets_it_on_open(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    with state.transaction() as tx:
        tx.spool_add("traces", bytes(70), 1, 0)
        tx.spool_add("traces", bytes(30), 1, 0)
        for statement in (  # the schema of a store made before the total (no API unmakes it)
            "DROP TRIGGER spool_total_add",
            "DROP TRIGGER spool_total_remove",
            "DROP TABLE spool_total",
        ):
            state.db.conn.execute(statement)
    state.close()
    state = open_state(tmp_path)
    with state.transaction() as tx:
        assert tx.spool_stats().bytes == 100
        tx.spool_add("traces", bytes(5), 1, 0)
        assert tx.spool_stats().bytes == 105
    state.close()
