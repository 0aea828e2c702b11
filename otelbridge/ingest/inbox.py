"""The durable inbox of webhook bodies, with group commit.

A request handler calls :meth:`SqliteInbox.append` and gets control back only once its body is
in a committed transaction of ``inbox.db`` (WAL, ``synchronous=FULL``). One committer task
takes every body waiting at that moment and writes them in one transaction in a worker thread:
while it commits, the next bodies queue up, so under load one fsync acknowledges many
webhooks and at rest a single webhook waits for one commit only.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from otelbridge.ingest.receiver import StoreUnavailable
from otelbridge.store import Database

log = logging.getLogger("otelbridge.inbox")

MAX_BATCH = 1024

NewRow = tuple[int, str, str, bytes]  # received_ns, event type, call id, body

_INSERT = "INSERT INTO inbox (received_ns, event_type, call_id, body) VALUES (?, ?, ?, ?)"
_DELETE_THROUGH = "DELETE FROM inbox WHERE id <= ?"


@dataclass(frozen=True, slots=True)
class InboxRow:
    id: int
    received_ns: int
    body: bytes


class SqliteInbox:
    """The request side awaits a plain asyncio future per webhook (uvicorn runs asyncio; a
    future costs a few microseconds where an anyio Event costs ten — measured in
    docs/benchmarks.md); the commit itself runs in a worker thread via anyio."""

    def __init__(self, db: Database, *, on_commit: Callable[[], None] = lambda: None) -> None:
        self._db = db
        self._on_commit = on_commit
        self._queue: deque[tuple[NewRow, asyncio.Future[str | None]]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._closed = False
        self.last_error: str | None = None
        self.commits = 0
        self.appended = 0
        self._trim_to = 0  # rows up to this id are processed: delete them in the next commit
        self._trimmed = 0

    async def append(self, body: bytes, event_type: str, call_id: str) -> None:
        if self._closed:
            raise StoreUnavailable("otelbridge is shutting down")
        waiter: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._queue.append(((time.time_ns(), event_type, call_id, body), waiter))
        if self._wakeup is not None:
            self._wakeup.set()
        error = await waiter
        if error is not None:
            raise StoreUnavailable(error)

    def trim_through(self, last_id: int) -> None:
        """Rows up to ``last_id`` have been processed: the next group commit deletes them, in
        the same transaction (so the processor never takes the inbox's write lock under load)."""
        self._trim_to = max(self._trim_to, last_id)

    def close(self) -> None:
        """No more appends; :meth:`run` returns once everything queued is committed."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def run(self) -> None:
        self._wakeup = wakeup = asyncio.Event()
        while True:
            if not self._queue:
                if self._closed:
                    return
                await wakeup.wait()
                wakeup.clear()
                continue
            batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
            error: str | None = None
            try:
                trim = self._trim_to if self._trim_to > self._trimmed else None
                await anyio.to_thread.run_sync(self._write, [row for row, _ in batch], trim)
                if trim is not None:
                    self._trimmed = trim
            except (sqlite3.Error, OSError) as exc:
                error = f"the state store cannot be written ({type(exc).__name__}: {exc})"
                log.error("inbox commit of %d webhook(s) failed: %s", len(batch), error)
            self.last_error = error
            for _, waiter in batch:
                if not waiter.done():  # a request that gave up (store timeout) is cancelled
                    waiter.set_result(error)
            if error is None:
                self.commits += 1
                self.appended += len(batch)
                self._on_commit()

    def _write(self, rows: list[NewRow], trim_through: int | None = None) -> None:
        with self._db.transaction() as conn:
            if trim_through is not None:
                conn.execute(_DELETE_THROUGH, (trim_through,))
            conn.executemany(_INSERT, rows)

    def probe(self) -> None:
        """Raise when the inbox cannot take a write transaction (for /readyz)."""
        with self._db.transaction():
            pass


def read_inbox(db: Database, after_id: int, limit: int, max_bytes: int = 8 * 1024 * 1024) -> list[InboxRow]:
    """Up to ``limit`` rows after ``after_id``, stopping once ``max_bytes`` of bodies are read
    (at least one row): a batch of whole polled calls stays small in memory."""
    rows: list[InboxRow] = []
    size = 0
    with db.reading() as conn:
        cursor = conn.execute(
            "SELECT id, received_ns, body FROM inbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        )
        for row_id, received_ns, body in cursor:
            rows.append(InboxRow(row_id, received_ns, bytes(body)))
            size += len(body)
            if size >= max_bytes:
                break
        cursor.close()
    return rows


def append_rows(db: Database, rows: list[NewRow]) -> None:
    """Append rows in one transaction, outside the group commit (the poller's pages)."""
    with db.transaction() as conn:
        conn.executemany(_INSERT, rows)


def delete_inbox_through(db: Database, last_id: int) -> None:
    with db.transaction() as conn:
        conn.execute(_DELETE_THROUGH, (last_id,))


def inbox_depth(db: Database, after_id: int) -> int:
    with db.reading() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM inbox WHERE id > ?", (after_id,)).fetchone()[0])
