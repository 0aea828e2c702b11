"""The durable inbox on a real SQLite file: acked means committed; group commit; failures."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest

from otelbridge.ingest.inbox import FULL_PUBLIC, LOW_SPACE_PUBLIC, GroupCommitInbox
from otelbridge.ingest.receiver import StoreUnavailable
from otelbridge.store import FreeSpace, InboxStore, free_bytes, inbox_path, open_inbox
from otelbridge.store import sqlite as sqlite_store
from tests.support.tmpfs import fill, tmpfs

MiB = 1024 * 1024
READ_BYTES = 8 * MiB  # bytes of bodies a read stops after (read_inbox's old default)


def _committed_rows(state_dir: Path) -> list[tuple[int, str, str, bytes]]:
    """Read with a fresh connection: only what is committed is visible."""
    conn = sqlite3.connect(inbox_path(state_dir))
    try:
        return conn.execute("SELECT id, event_type, call_id, body FROM inbox ORDER BY id").fetchall()
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def _running(
    store: InboxStore, on_commit: Callable[[], None] = lambda: None, free_space: FreeSpace | None = None
) -> AsyncIterator[GroupCommitInbox]:
    """An inbox with its committer running; closed (everything queued committed) on exit."""
    inbox = GroupCommitInbox(store, on_commit=on_commit, free_space=free_space)
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
        store = open_inbox(tmp_path)
        store.close()  # every write now fails
        async with _running(store) as inbox:
            with pytest.raises(StoreUnavailable, match="cannot be written") as info:
                await inbox.append(b"{}", "call_turn", "c")
            assert info.value.public is None  # not a full disk: the caller is told nothing more
            assert inbox.last_error is not None
            health = await anyio.to_thread.run_sync(inbox.health)  # the probe write fails too
            assert health is not None and "cannot be written" in health
            assert inbox.last_error is not None

    anyio.run(main)


def test_failed_commits_are_logged_once_then_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that refuses every commit (a full disk refuses every webhook): the first failure
    has its line, the next ones one counted line per interval, not a line per commit."""
    caplog.set_level(logging.INFO, logger="otelbridge")
    store = open_inbox(tmp_path)
    store.close()  # every write now fails

    async def main() -> None:
        inbox = GroupCommitInbox(store, log_every=1.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(inbox.run)
            for _ in range(30):  # one at a time: a failed commit each
                with pytest.raises(StoreUnavailable):
                    await inbox.append(b"{}", "call_turn", "c")
            await anyio.sleep(1.05)  # 30 failures take far less than the interval
            with pytest.raises(StoreUnavailable):
                await inbox.append(b"{}", "call_turn", "c")
            inbox.close()

    anyio.run(main)
    lines = [r.getMessage() for r in caplog.records if "inbox commit" in r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("inbox commit of 1 webhook(s) failed: ")
    assert lines[1].startswith("inbox commits failed 30 more time(s) in the last 1 s: ")


def test_append_after_close_is_store_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        inbox = GroupCommitInbox(open_inbox(tmp_path))
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
    store = open_inbox(tmp_path)
    rows = store.read_after(0, 10, READ_BYTES)
    assert [r.body for r in rows] == [b"0", b"1", b"2"]
    assert store.depth(rows[0].id) == 2
    store.delete_through(rows[-1].id)
    assert store.read_after(0, 10, READ_BYTES) == []
    store.append([(0, "t", "c", b"\x00")])
    assert store.read_after(0, 10, READ_BYTES)[0].id > rows[-1].id  # AUTOINCREMENT: the watermark stays valid
    store.close()


def test_depth_counts_the_rows_after_an_id_as_the_rows_read_do(tmp_path: Path) -> None:
    """depth() works from the first and last ids: it must agree with the rows themselves,
    before and after the processed ones are deleted, past either end and inside."""
    store = open_inbox(tmp_path)
    assert store.depth(0) == 0
    store.append([(0, "call_turn", "c", f"{i}".encode()) for i in range(10)])
    ids = [r.id for r in store.read_after(0, 100, READ_BYTES)]
    store.delete_through(ids[3])
    for after in range(0, ids[-1] + 3):
        assert store.depth(after) == len(store.read_after(after, 100, READ_BYTES)), after
    store.delete_through(ids[-1])
    assert [store.depth(a) for a in (0, ids[-1], ids[-1] + 5)] == [0, 0, 0]
    store.close()


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


def test_a_commit_trims_at_most_so_many_rows_and_the_next_ones_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store deletes at most ``TRIM_ROWS_PER_COMMIT`` processed rows with a commit and says
    whether any is left; never one past ``trim_through``, whatever the first id left is."""
    monkeypatch.setattr(sqlite_store, "TRIM_ROWS_PER_COMMIT", 2)
    store = open_inbox(tmp_path)
    store.append([(0, "call_turn", "c", f"{i}".encode()) for i in range(7)])
    ids = [r.id for r in store.read_after(0, 100, READ_BYTES)]
    store.delete_through(ids[1])  # the first id left is not 1
    answers = [store.append([(0, "t", "c", b"new")], trim_through=ids[5]) for _ in range(3)]
    assert answers == [False, False, True]
    assert [bytes(r.body) for r in store.read_after(0, 100, READ_BYTES)] == [b"6", b"new", b"new", b"new"]
    assert store.append([(0, "t", "c", b"new")], trim_through=ids[5]) is True  # nothing left
    store.close()


def test_the_group_commit_trims_over_several_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "TRIM_ROWS_PER_COMMIT", 2)

    async def main() -> None:
        async with _running(open_inbox(tmp_path)) as inbox:
            for i in range(5):
                await inbox.append(f"{i}".encode(), "call_turn", "c")
            inbox.trim_through(_committed_rows(tmp_path)[3][0])  # four processed rows
            left = []
            for i in range(3):
                await inbox.append(f"n{i}".encode(), "call_turn", "c")
                left.append([bytes(r[3]) for r in _committed_rows(tmp_path)])
            assert left == [
                [b"2", b"3", b"4", b"n0"],
                [b"4", b"n0", b"n1"],
                [b"4", b"n0", b"n1", b"n2"],  # done: nothing more is deleted
            ]

    anyio.run(main)


def test_cancelled_run_still_commits_what_was_queued(tmp_path: Path) -> None:
    async def main() -> None:
        inbox = GroupCommitInbox(open_inbox(tmp_path))
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


# --- a full state volume (a real tmpfs) ---------------------------------------------------------
def test_below_the_free_space_floor_webhooks_are_refused_and_health_recovers_without_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Below OTELBRIDGE_MIN_FREE_BYTES nothing is written (the reserve stays for processing and
    trimming); once space returns, ``health`` says so with no webhook arriving (readiness
    behind a load balancer that gates on it would otherwise never recover)."""
    caplog.set_level(logging.INFO, logger="otelbridge.inbox")
    with tmpfs(tmp_path / "vol", 8 * MiB) as vol:

        async def main() -> None:
            async with _running(open_inbox(vol), free_space=FreeSpace(vol, 2 * MiB)) as inbox:
                await inbox.append(b"before", "call_turn", "c")
                filler = fill(vol, 1 * MiB)
                health = await anyio.to_thread.run_sync(inbox.health)
                assert health is not None and "below OTELBRIDGE_MIN_FREE_BYTES (2097152)" in health
                for _ in range(3):
                    with pytest.raises(StoreUnavailable) as info:
                        await inbox.append(b"refused", "call_turn", "c")
                    assert info.value.public == LOW_SPACE_PUBLIC
                filler.unlink()
                assert await anyio.to_thread.run_sync(inbox.health) is None
                assert inbox.last_error is None
                await inbox.append(b"after", "call_turn", "c")

        anyio.run(main)
        assert [bytes(r[3]) for r in _committed_rows(vol)] == [b"before", b"after"]
    refusing = [r for r in caplog.records if "refusing webhooks" in r.getMessage()]
    assert len(refusing) == 1, "one line when refusing starts, not one per batch"
    assert "Fix: free space on the volume of" in refusing[0].getMessage()
    assert any("taking webhooks" in r.getMessage() for r in caplog.records)


def test_a_burst_within_one_free_space_reading_is_counted_against_the_floor(tmp_path: Path) -> None:
    """The volume is read once a second at most (statvfs stays off the request path); the bytes
    committed meanwhile are counted off the reading, so a burst stops at the floor instead of
    running the disk full."""
    with tmpfs(tmp_path / "vol", 8 * MiB) as vol:
        fill(vol, 3 * MiB)
        space = FreeSpace(vol, 2 * MiB, ttl_s=3600)  # one reading for the whole test

        async def main() -> list[str | None]:
            publics: list[str | None] = []
            async with _running(open_inbox(vol), free_space=space) as inbox:
                for _ in range(8):  # 4 MB into 1 MB above the floor
                    try:
                        await inbox.append(b"x" * 500_000, "call_turn", "c")
                        publics.append(None)
                    except StoreUnavailable as exc:
                        publics.append(exc.public)
            return publics

        publics = anyio.run(main)
        assert publics[0] is None and publics[-1] == LOW_SPACE_PUBLIC, publics
        assert FULL_PUBLIC not in publics  # the disk itself never ran out
        assert free_bytes(vol) > 1 * MiB


def test_after_a_full_disk_health_clears_the_error_once_space_is_back(tmp_path: Path) -> None:
    """No floor (0): SQLite itself runs out of space; the caller is told the volume is full, and
    the error clears by itself once a real write succeeds again, with no webhook needed."""
    with tmpfs(tmp_path / "vol", 8 * MiB) as vol:

        async def main() -> None:
            async with _running(open_inbox(vol), free_space=FreeSpace(vol, 0)) as inbox:
                filler = fill(vol, 256 * 1024)
                with pytest.raises(StoreUnavailable, match="database or disk is full") as info:
                    await inbox.append(os.urandom(2 * MiB), "call_turn", "c")
                assert info.value.public == FULL_PUBLIC
                assert inbox.last_error is not None
                filler.unlink()
                assert await anyio.to_thread.run_sync(inbox.health) is None
                assert inbox.last_error is None

        anyio.run(main)
