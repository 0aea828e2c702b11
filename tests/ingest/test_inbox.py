"""The durable inbox on a real SQLite file: acked means committed; group commit; failures."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest

from otelbridge.ingest.inbox import SqliteInbox, delete_inbox_through, inbox_depth, read_inbox
from otelbridge.ingest.receiver import StoreUnavailable
from otelbridge.store import Database, inbox_path, open_inbox


def _committed_rows(state_dir: Path) -> list[tuple[int, str, str, bytes]]:
    """Read with a fresh connection: only what is committed is visible."""
    conn = sqlite3.connect(inbox_path(state_dir))
    try:
        return conn.execute("SELECT id, event_type, call_id, body FROM inbox ORDER BY id").fetchall()
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def _running(db: Database, on_commit: Callable[[], None] = lambda: None) -> AsyncIterator[SqliteInbox]:
    """An inbox with its committer running; closed (everything queued committed) on exit."""
    inbox = SqliteInbox(db, on_commit=on_commit)
    async with anyio.create_task_group() as tg:
        tg.start_soon(inbox.run)
        yield inbox
        inbox.close()


def test_append_returns_only_once_committed(tmp_path: Path) -> None:
    async def main() -> None:
        async with _running(open_inbox(tmp_path)) as inbox:
            await inbox.append(b'{"type":"call_turn"}', "call_turn", "call_1")
            rows = _committed_rows(tmp_path)
            assert [(r[1], r[2], bytes(r[3])) for r in rows] == [
                ("call_turn", "call_1", b'{"type":"call_turn"}')
            ]

    anyio.run(main)


def test_concurrent_appends_share_commits(tmp_path: Path) -> None:
    commits: list[int] = []

    async def main() -> None:
        async with (
            _running(open_inbox(tmp_path), on_commit=lambda: commits.append(1)) as inbox,
            anyio.create_task_group() as senders,
        ):
            for i in range(300):
                senders.start_soon(inbox.append, f'{{"n":{i}}}'.encode(), "call_turn", f"call_{i % 7}")
        assert inbox.appended == 300
        assert inbox.commits == len(commits) < 300  # many webhooks per fsync

    anyio.run(main)
    assert len(_committed_rows(tmp_path)) == 300


def test_store_failure_is_store_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        db = open_inbox(tmp_path)
        db.close()  # every write now fails
        async with _running(db) as inbox:
            with pytest.raises(StoreUnavailable, match="cannot be written"):
                await inbox.append(b"{}", "call_turn", "c")
            assert inbox.last_error is not None

    anyio.run(main)


def test_append_after_close_is_store_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        inbox = SqliteInbox(open_inbox(tmp_path))
        inbox.close()
        with pytest.raises(StoreUnavailable, match="shutting down"):
            await inbox.append(b"{}", "call_turn", "c")

    anyio.run(main)


def test_read_delete_and_ids_never_reused(tmp_path: Path) -> None:
    async def main() -> None:
        async with _running(open_inbox(tmp_path)) as inbox:
            for i in range(3):
                await inbox.append(f"{i}".encode(), "call_turn", "c")

    anyio.run(main)
    db = open_inbox(tmp_path)
    rows = read_inbox(db, 0, 10)
    assert [r.body for r in rows] == [b"0", b"1", b"2"]
    assert inbox_depth(db, rows[0].id) == 2
    delete_inbox_through(db, rows[-1].id)
    assert read_inbox(db, 0, 10) == []
    with db.transaction() as conn:
        conn.execute("INSERT INTO inbox (received_ns, event_type, call_id, body) VALUES (0, 't', 'c', x'00')")
    assert read_inbox(db, 0, 10)[0].id > rows[-1].id  # AUTOINCREMENT: the watermark stays valid
    db.close()


def test_rows_keep_the_order_of_the_appends(tmp_path: Path) -> None:
    async def main() -> None:
        async with _running(open_inbox(tmp_path)) as inbox, anyio.create_task_group() as senders:
            for i in range(200):
                senders.start_soon(inbox.append, f"{i}".encode(), "call_turn", "c")
                if i % 50 == 0:
                    await anyio.sleep(0.01)  # some commits in between

    anyio.run(main)
    bodies = [int(bytes(r[3])) for r in _committed_rows(tmp_path)]
    assert bodies == list(range(200))  # start_soon runs the tasks in order: ids follow appends


def test_trim_through_deletes_processed_rows_in_the_next_commit(tmp_path: Path) -> None:
    async def main() -> None:
        async with _running(open_inbox(tmp_path)) as inbox:
            for i in range(3):
                await inbox.append(f"{i}".encode(), "call_turn", "c")
            first_two = [r[0] for r in _committed_rows(tmp_path)][:2]
            inbox.trim_through(first_two[-1])
            assert len(_committed_rows(tmp_path)) == 3  # nothing deleted until the next commit
            await inbox.append(b"3", "call_turn", "c")
            assert [bytes(r[3]) for r in _committed_rows(tmp_path)] == [b"2", b"3"]

    anyio.run(main)


def test_cancelled_run_still_commits_what_was_queued(tmp_path: Path) -> None:
    async def main() -> None:
        inbox = SqliteInbox(open_inbox(tmp_path))
        with anyio.move_on_after(5) as deadline:
            async with anyio.create_task_group() as tg:
                tg.start_soon(inbox.run)
                await inbox.append(b"acked", "call_turn", "c")
                tg.start_soon(inbox.append, b"queued", "call_turn", "c")
                await anyio.sleep(0)  # that append is queued, its request task now waits
                tg.cancel_scope.cancel()  # as when the daemon's task group fails
        assert not deadline.cancelled_caught  # the cancelled run did not hang
        with pytest.raises(StoreUnavailable, match="shutting down"):
            await inbox.append(b"late", "call_turn", "c")
        for _ in range(500):  # the abandoned committer thread finishes what was queued
            if len(_committed_rows(tmp_path)) == 2:
                break
            await anyio.sleep(0.01)

    anyio.run(main)
    assert [bytes(r[3]) for r in _committed_rows(tmp_path)] == [b"acked", b"queued"]


def test_a_full_batch_is_one_statement_within_sqlite_limits(tmp_path: Path) -> None:
    """More appends than MAX_BATCH wait at once: batches of up to MAX_BATCH rows (4 parameters
    each, one multi-row INSERT) all commit, in order."""
    from otelbridge.ingest.inbox import MAX_BATCH

    total = MAX_BATCH * 2 + 100

    async def main() -> None:
        async with _running(open_inbox(tmp_path)) as inbox, anyio.create_task_group() as senders:
            for i in range(total):
                senders.start_soon(inbox.append, f"{i}".encode(), "call_turn", "c")
        assert inbox.appended == total
        assert inbox.commits >= 3  # no batch above MAX_BATCH

    anyio.run(main)
    assert [int(bytes(r[3])) for r in _committed_rows(tmp_path)] == list(range(total))
