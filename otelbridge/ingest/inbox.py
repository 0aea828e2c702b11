"""The durable inbox of webhook bodies, with group commit.

A request handler calls :meth:`GroupCommitInbox.append` and gets control back only once its body
is in a committed transaction of the store's inbox (:class:`~otelbridge.store.InboxStore`). One
committer thread
takes every body waiting at that moment and writes them in one transaction: while it commits,
the next bodies queue up, so under load one fsync acknowledges many webhooks and at rest a
single webhook waits for one commit only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import anyio

from otelbridge.ingest.receiver import StoreUnavailable
from otelbridge.logs import LOG_EVERY
from otelbridge.store import FreeSpace, InboxStore, NewRow, StoreWriteError

log = logging.getLogger("otelbridge.inbox")

MAX_BATCH = 1024

#: why a batch was not stored: the detail for the log, and the reason the caller may be told
Refusal = tuple[str, str | None]

#: what a webhook refused for the free-space floor is told (fixed: one cached answer for all)
LOW_SPACE_PUBLIC = "free space on the state volume is below OTELBRIDGE_MIN_FREE_BYTES"
FULL_PUBLIC = "the state volume is full"


class GroupCommitInbox:
    """Request handlers await a plain asyncio future each (uvicorn runs asyncio; a future costs
    a few microseconds where an anyio Event costs ten, measured in docs/benchmarks.md). One
    committer thread of its own takes whatever is waiting, writes it in one statement, hands
    the answers back to the event loop in one callback and at once starts on what arrived
    meanwhile: the next commit does not wait for the event loop to come round (with a worker
    thread per commit it did, and the loop sat idle a fifth of the time under load)."""

    def __init__(
        self,
        store: InboxStore,
        *,
        on_commit: Callable[[], None] = lambda: None,
        free_space: FreeSpace | None = None,
        log_every: float = LOG_EVERY,
    ) -> None:
        self._store = store
        #: failed commits are logged once, then as a counted line per ``log_every`` seconds: a
        #: full disk refusing every webhook is not a line per webhook (committer thread only)
        self._log_every = log_every
        self._failed: int | None = None  # failed commits since the last line; None: committing
        self._next_failure_line = 0.0
        self._on_commit = on_commit
        #: checked by the committer once per batch (a cached reading, not a statvfs per request)
        self._space = free_space
        self._low_space: str | None = None  # the free-space problem webhooks are refused for
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[tuple[NewRow, asyncio.Future[Refusal | None]]] = []
        self._idle = False  # the committer waits on _cond for work
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last_error: str | None = None
        self.commits = 0
        self.appended = 0
        self._trim_to = 0  # rows up to this id are processed: delete them in the next commit
        self._trimmed = 0

    async def append(self, body: bytes, event_type: str, call_id: str) -> None:
        if self._closed:
            raise StoreUnavailable("otelbridge is shutting down")
        waiter: asyncio.Future[Refusal | None] = asyncio.get_running_loop().create_future()
        with self._cond:
            self._pending.append(((time.time_ns(), event_type, call_id, body), waiter))
            if self._idle:
                self._idle = False
                self._cond.notify()
        refusal = await waiter
        if refusal is not None:
            raise StoreUnavailable(refusal[0], public=refusal[1])

    def trim_through(self, last_id: int) -> None:
        """Rows up to ``last_id`` have been processed: the next group commit deletes them, in
        the same transaction (so the processor never takes the inbox's write lock under load)."""
        self._trim_to = max(self._trim_to, last_id)

    def close(self) -> None:
        """No more appends; :meth:`run` returns once everything queued is committed."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    async def run(self) -> None:
        """Run the committer thread until :meth:`close` (or cancellation) and everything
        appended before it is committed."""
        self._loop = asyncio.get_running_loop()
        try:
            await anyio.to_thread.run_sync(self._commit_loop, abandon_on_cancel=True)
        finally:
            self.close()  # cancelled: the abandoned thread commits what is queued, then ends

    def _commit_loop(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._idle = True
                    self._cond.wait()
                self._idle = False
                if not self._pending:
                    return
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
            rows = [row for row, _ in batch]
            error = self._refuse_for_space(sum(len(row[3]) for row in rows))
            trim = self._trim_to if self._trim_to > self._trimmed else None
            try:
                if error is None:
                    if self._write(rows, trim) and trim is not None:
                        self._trimmed = trim  # else the next commits delete the rest
                    self._note_commit()
            except StoreWriteError as exc:
                detail = str(exc)
                error = (detail, FULL_PUBLIC if exc.full else None)
                self._note_failure(len(batch), detail)
            try:
                loop.call_soon_threadsafe(self._answer, batch, error)
            except RuntimeError:  # the event loop is closed: nobody is waiting any more
                return

    def _note_failure(self, webhooks: int, detail: str) -> None:
        now = time.monotonic()
        if self._failed is None:
            log.error("inbox commit of %d webhook(s) failed: %s", webhooks, detail)
            self._failed, self._next_failure_line = 0, now + self._log_every
            return
        self._failed += 1
        if now >= self._next_failure_line:
            log.error("inbox commits failed %d more time(s) in the last %g s: %s",
                      self._failed, self._log_every, detail)  # fmt: skip
            self._failed, self._next_failure_line = 0, now + self._log_every

    def _note_commit(self) -> None:
        if self._failed is not None:
            log.info("inbox commits succeed again (%d more failed since the last line)", self._failed)
            self._failed = None

    def _answer(
        self, batch: list[tuple[NewRow, asyncio.Future[Refusal | None]]], error: Refusal | None
    ) -> None:
        self.last_error = None if error is None else error[0]
        for _, waiter in batch:
            if not waiter.done():  # a request that gave up (store timeout) is cancelled
                waiter.set_result(error)
        if error is None:
            self.commits += 1
            self.appended += len(batch)
            self._on_commit()

    def _write(self, rows: list[NewRow], trim_through: int | None = None) -> bool:
        return self._store.append(rows, trim_through=trim_through)

    def _refuse_for_space(self, writing: int) -> Refusal | None:
        """A refusal when writing ``writing`` bytes would go below the free-space floor; logs
        once when refusing starts and once when it ends."""
        problem = None if self._space is None else self._space.problem(writing)
        self._note_low_space(problem)
        return None if problem is None else (problem, LOW_SPACE_PUBLIC)

    def _note_low_space(self, problem: str | None) -> None:
        if problem is not None and self._low_space is None:
            assert self._space is not None
            log.error("refusing webhooks (503): %s on the state volume. %s", problem, self._space.fix())
        elif problem is None and self._low_space is not None:
            log.info(
                "free space on the state volume is back above OTELBRIDGE_MIN_FREE_BYTES: taking webhooks"
            )
        self._low_space = problem

    def health(self) -> str | None:
        """What keeps webhooks from being stored now, or None. The daemon calls it every second
        (from a worker thread), so a problem clears by itself once it is gone — behind a load
        balancer that gates on readiness, no webhook would come to clear it. The free space is
        read afresh; after a failed commit, a real write must succeed again."""
        if self._space is not None:
            problem = self._space.problem(fresh=True)
            self._note_low_space(problem)
            if problem is not None:
                return problem
        failed = self.last_error
        if failed is None:
            return None
        try:
            self._store.probe()
        except StoreWriteError as exc:
            return str(exc)
        if self.last_error is failed:  # no newer failure meanwhile
            self.last_error = None
        return None
