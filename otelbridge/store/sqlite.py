"""The embedded engine: SQLite files in ``OTELBRIDGE_STATE_DIR``, every one in WAL mode with
``synchronous=FULL`` (a committed transaction survives ``kill -9`` and power loss), but for the
ack log (``NORMAL``: see :func:`open_acks`). All of the
engine's SQL is in this module; rows are read by column name.

``inbox.db``
    Webhook bodies, appended by the receiver (group commits) before it answers 2xx. Its own
    file so that acknowledging a webhook never waits on the export side's transactions.

``state.db``
    Everything derived from the inbox, changed together in one transaction per batch: the
    open calls, the ledger of exported span ids, the spool of encoded OTLP requests, metric
    points not yet in an exported metrics request, dead letters, and ``inbox_watermark`` (the
    last inbox id processed), which makes processing exactly-once across the two files.

``acks.db``
    The spool rows a backend has acknowledged (:class:`SqliteAckLog`).
"""

from __future__ import annotations

import errno
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Final

from otelbridge.mapping.latency import TurnTiming
from otelbridge.store.api import (
    BackfillCursor,
    CallRow,
    Claim,
    InboxRow,
    Lease,
    NewRow,
    PollWatermark,
    RunningCall,
    SpoolEntry,
    SpoolStats,
    StateTx,
    StoreWriteError,
    fitting_ids,
)
from otelbridge.store.files import StoreError, ensure_state_dir, free_bytes, no_space_hint, open_private
from otelbridge.store.lease import FileLease

if TYPE_CHECKING:
    from otelbridge.delivery.environment import Signal

SCHEMA_VERSION: Final = 1

INBOX_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS inbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the watermark relies on it
    received_ns INTEGER NOT NULL,
    event_type  TEXT NOT NULL,
    call_id     TEXT NOT NULL,
    body        BLOB NOT NULL
);
"""

STATE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    call_id          TEXT PRIMARY KEY,
    agent_id         TEXT NOT NULL,
    agent_name       TEXT,
    start_ns         INTEGER,            -- the anchor turn offsets add to, once known
    root_exported    INTEGER NOT NULL DEFAULT 0,
    summary_exported INTEGER NOT NULL DEFAULT 0,
    pending          INTEGER NOT NULL DEFAULT 0,   -- events kept in call_events
    last_event_ns    INTEGER NOT NULL,   -- wall clock of the latest delivery (timeouts)
    closed_ns        INTEGER,            -- when the root went out
    deployment_id    TEXT,               -- the deployment that serves it, once known
    latest_role      TEXT,               -- the latest-starting of its turns in `turns`
    latest_start_us  INTEGER,
    latest_end_us    INTEGER
);
CREATE INDEX IF NOT EXISTS calls_open ON calls (closed_ns, last_event_ns);
CREATE TABLE IF NOT EXISTS call_events (
    id      INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL,
    body    BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS call_events_call ON call_events (call_id);
-- the spoken turns of each call received so far: what the response latency of a turn
-- streamed alone needs to know of the turns before it (mapping/latency.py)
CREATE TABLE IF NOT EXISTS turns (
    call_id  TEXT NOT NULL,
    start_us INTEGER NOT NULL,
    role     TEXT NOT NULL,
    end_us   INTEGER,
    PRIMARY KEY (call_id, start_us, role)
) WITHOUT ROWID;
-- every deployment of each agent with the start of its first call: the most recent keep their
-- id in metrics (mapping/deployments.py)
CREATE TABLE IF NOT EXISTS deployments (
    agent_id      TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    first_call_ns INTEGER NOT NULL,
    PRIMARY KEY (agent_id, deployment_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger (
    call_id     TEXT NOT NULL,
    span_id     INTEGER NOT NULL,          -- signed view of the 64-bit id
    exported_ns INTEGER NOT NULL,
    PRIMARY KEY (call_id, span_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS spool (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    signal          TEXT NOT NULL,         -- traces | metrics
    body            BLOB NOT NULL,         -- serialized Export*ServiceRequest, uncompressed
    size            INTEGER NOT NULL,
    items           INTEGER NOT NULL,      -- spans or data points
    created_ns      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ns INTEGER NOT NULL DEFAULT 0,
    call_ends       TEXT,                  -- JSON end times of the calls whose root is inside
    epoch           TEXT                   -- process that made a metrics request
);
DROP INDEX IF EXISTS spool_signal;  -- (signal, id): superseded by spool_take, which covers size
CREATE INDEX IF NOT EXISTS spool_take ON spool (signal, id, size);
CREATE INDEX IF NOT EXISTS spool_created ON spool (created_ns);
-- the spool's total body bytes, kept by triggers: the size cap is checked after every batch,
-- and summing a spool of many thousand requests each time would read all of them
CREATE TABLE IF NOT EXISTS spool_total (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO spool_total (id, bytes) SELECT 1, COALESCE(SUM(size), 0) FROM spool;
CREATE TRIGGER IF NOT EXISTS spool_total_add AFTER INSERT ON spool BEGIN
    UPDATE spool_total SET bytes = bytes + NEW.size WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS spool_total_remove AFTER DELETE ON spool BEGIN
    UPDATE spool_total SET bytes = bytes - OLD.size WHERE id = 1;
END;
CREATE TABLE IF NOT EXISTS dead_letters (
    id         INTEGER PRIMARY KEY,
    signal     TEXT NOT NULL,
    body       BLOB NOT NULL,
    items      INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    failed_ns  INTEGER NOT NULL,
    status     TEXT NOT NULL,
    reason     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS poll_agents (
    agent_id           TEXT PRIMARY KEY,
    watermark_id       TEXT,               -- newest call of the last complete poll
    watermark_start_ns INTEGER,
    last_poll_ns       INTEGER
);
CREATE TABLE IF NOT EXISTS running_calls (
    call_id       TEXT PRIMARY KEY,        -- listed unfinished: re-read until final
    agent_id      TEXT NOT NULL,
    first_seen_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS backfill (
    agent_id TEXT NOT NULL,
    range    TEXT NOT NULL,                -- since..until of the run, so a rerun resumes it
    cursor   TEXT,                         -- starting_after for the next page
    done     INTEGER NOT NULL DEFAULT 0,
    calls    INTEGER NOT NULL DEFAULT 0,
    head_id       TEXT,                    -- newest call when the range was last finished: a
    head_start_ns INTEGER,                 -- rerun of an open range catches up back to it
    PRIMARY KEY (agent_id, range)
);
CREATE TABLE IF NOT EXISTS points (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    point TEXT NOT NULL                    -- JSON MetricPoint, until in a spooled metrics request
);
"""


#: ``acks.db``: the spool rows a backend has acknowledged, written by the sender the moment the
#: 2xx arrives. Its own file, so that recording an acknowledgement never waits for ``state.db``'s
#: lock (the processor holds it through a whole batch, seconds under load), and a ``kill -9``
#: before the spool row is deleted no longer re-sends the export: at the next start the rows
#: listed here are deleted unsent. Rows name ``(id, created_ns)`` so that they can never match
#: a row of a new ``state.db``.
ACKS_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS acked (
    spool_id   INTEGER PRIMARY KEY,
    created_ns INTEGER NOT NULL
);
"""

#: meta key in state.db: the last inbox row the processor has taken (the inbox rows up to it
#: may be deleted by anyone; the processor never reads below it)
INBOX_WATERMARK: Final = "inbox_watermark"

#: WAL pages after which the webhook process checkpoints inbox.db itself. The pipeline
#: checkpoints it far sooner (every few thousand rows it takes), so copying the WAL back and
#: syncing the database file stay off the request path; this is the fallback for when the
#: pipeline is down (~80 MB of WAL).
WEBHOOK_SIDE_AUTOCHECKPOINT_PAGES: Final = 20_000

_UNSIGNED: Final = 0xFFFFFFFFFFFFFFFF


def signed64(value: int) -> int:
    """A 64-bit unsigned id as SQLite's signed INTEGER."""
    return value - (1 << 64) if value >= 1 << 63 else value


def connect(path: Path, schema: str, *, timeout_s: float = 30.0) -> sqlite3.Connection:
    """Open (creating) ``path`` in WAL mode with FULL sync; a clear StoreError when it cannot.
    The file is made 0600 before SQLite opens it: SQLite creates the WAL and shared-memory
    files with the database's mode (it would create the database itself 0644)."""
    ensure_state_dir(path.parent)
    try:
        open_private(path).close()
        conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=OFF")
        # Deleted rows (webhook bodies: transcripts, phone numbers) are overwritten with zeros,
        # freed pages included (Debian's SQLite is built with this on; said here for every build).
        conn.execute("PRAGMA secure_delete=ON")
        conn.executescript(schema)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open {path}: {exc}{no_space_hint(path.parent)}") from None
    return conn


def is_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


@contextmanager
def _writes(what: str) -> Iterator[None]:
    """SQLite's and the OS's errors of a write as StoreWriteError (the cause chained)."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise StoreWriteError(f"{what} ({type(exc).__name__}: {exc})", full=is_full(exc)) from exc


class FairLock:
    """A lock that threads get in the order they asked for it. With a plain ``threading.Lock``
    a thread that releases and at once re-acquires keeps it: the processor's back-to-back
    batches kept the sender from deleting what it had sent, and the spool grew."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()

    def __enter__(self) -> None:
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            try:
                while self._serving != ticket:
                    self._cond.wait()
            except BaseException:  # interrupted while waiting: give the turn up
                self._abandoned.add(ticket)
                self._skip_abandoned()
                raise

    def __exit__(self, *_: object) -> None:
        with self._cond:
            self._serving += 1
            self._skip_abandoned()

    def _skip_abandoned(self) -> None:
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()


class Database:
    """One connection, used by one component from worker threads, one call at a time (in the
    order the calls came: :class:`FairLock`)."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        self.conn = connect(path, schema)
        self._lock = FairLock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any exception, which is what the
        caller sees)."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                if not self.conn.in_transaction:  # rolled back by SQLite: nothing may commit
                    raise StoreWriteError(
                        "the state store cannot be written (the transaction was rolled back)"
                    )
                self.conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        # SQLite rolls back by itself on SQLITE_FULL or an I/O error: a second ROLLBACK would
        # raise "cannot rollback - no transaction is active" and hide the real error.
        if self.conn.in_transaction:
            with suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")

    def execute_atomic(self, sql: str, parameters: Sequence[object]) -> None:
        """One statement as its own transaction (autocommit): for a single write, one call into
        SQLite instead of three (``BEGIN``, the statement, ``COMMIT``)."""
        with self._lock:
            self.conn.execute(sql, parameters)

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self.conn

    def probe(self) -> None:
        """A real write, committed: raises what a write would (read-only file, I/O error) as
        StoreWriteError. It rewrites ``user_version`` with its own value, so nothing changes
        but one WAL frame."""
        with _writes("the state store cannot be written"), self.transaction() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute(f"PRAGMA user_version={version}")

    def close(self) -> None:
        with self._lock:
            self.conn.close()


# --- state.db ----------------------------------------------------------------------------------
_RECORD_EXPORTED: Final = "INSERT OR IGNORE INTO ledger (call_id, span_id, exported_ns) VALUES (?, ?, ?)"
_SAVE_CALL: Final = (
    "INSERT INTO calls (call_id, agent_id, agent_name, start_ns, root_exported, summary_exported, "
    "pending, last_event_ns, closed_ns, deployment_id, latest_role, latest_start_us, latest_end_us) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(call_id) DO UPDATE SET agent_id=excluded.agent_id, agent_name=excluded.agent_name, "
    "start_ns=excluded.start_ns, root_exported=excluded.root_exported, "
    "summary_exported=excluded.summary_exported, pending=excluded.pending, "
    "last_event_ns=excluded.last_event_ns, closed_ns=excluded.closed_ns, "
    "deployment_id=excluded.deployment_id, latest_role=excluded.latest_role, "
    "latest_start_us=excluded.latest_start_us, latest_end_us=excluded.latest_end_us"
)
#: the next calls of the ledger after one, and whether each is forgotten: no call row, and its
#: last span out before the cutoff
_LEDGER_WALK: Final = (
    "SELECT call_id, MAX(exported_ns) < ? AND NOT EXISTS "
    "(SELECT 1 FROM calls WHERE calls.call_id = ledger.call_id) AS orphan "
    "FROM ledger WHERE call_id > ? GROUP BY call_id ORDER BY call_id LIMIT ?"
)
_REMEMBER_TURN: Final = "INSERT OR IGNORE INTO turns (call_id, start_us, role, end_us) VALUES (?, ?, ?, ?)"
_SAVE_BACKFILL_UPSERT: Final = (
    "INSERT INTO backfill (agent_id, range, cursor, done, calls, head_id, head_start_ns) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(agent_id, range) DO UPDATE SET cursor=excluded.cursor, done=excluded.done, "
    "calls=backfill.calls + excluded.calls, "
)
#: the mark is set once ...
_SAVE_BACKFILL: Final = _SAVE_BACKFILL_UPSERT + (
    "head_id=COALESCE(backfill.head_id, excluded.head_id), "
    "head_start_ns=COALESCE(backfill.head_start_ns, excluded.head_start_ns)"
)
#: ... and moved by a finished catch-up
_SAVE_BACKFILL_NEW_MARK: Final = _SAVE_BACKFILL_UPSERT + (
    "head_id=COALESCE(excluded.head_id, backfill.head_id), "
    "head_start_ns=COALESCE(excluded.head_start_ns, backfill.head_start_ns)"
)


def _turn(row: sqlite3.Row) -> TurnTiming:
    return TurnTiming(row["role"], row["start_us"], row["end_us"])


class SqliteStateTx:
    """:class:`~otelbridge.store.api.StateTx` on a connection inside its transaction."""

    __slots__ = ("_conn", "_savepoints")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._savepoints = 0

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self._savepoints += 1
        name = f"sp{self._savepoints}"
        self._conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException as exc:
            if not self._conn.in_transaction:
                # SQLite rolled the whole transaction back by itself (SQLITE_FULL, an I/O
                # error): nothing is left to undo in part, and the unit of work must fail
                # whole, or what follows would commit statement by statement.
                raise StoreWriteError(
                    f"the state store cannot be written ({type(exc).__name__}: {exc})", full=is_full(exc)
                ) from exc
            self._conn.execute(f"ROLLBACK TO {name}")
            self._conn.execute(f"RELEASE {name}")
            raise
        finally:
            self._savepoints -= 1
        self._conn.execute(f"RELEASE {name}")

    # --- calls ----------------------------------------------------------------------------
    def load_call(self, call_id: str) -> CallRow | None:
        row = self._conn.execute("SELECT * FROM calls WHERE call_id=?", (call_id,)).fetchone()
        if row is None:
            return None
        role = row["latest_role"]
        return CallRow(
            call_id,
            row["agent_id"],
            row["agent_name"],
            row["start_ns"],
            bool(row["root_exported"]),
            bool(row["summary_exported"]),
            bool(row["pending"]),
            row["last_event_ns"],
            row["closed_ns"],
            row["deployment_id"],
            None if role is None else TurnTiming(role, row["latest_start_us"], row["latest_end_us"]),
        )

    def save_call(self, call: CallRow) -> None:
        t = call.latest_turn
        self._conn.execute(
            _SAVE_CALL,
            (
                call.call_id,
                call.agent_id,
                call.agent_name,
                call.start_ns,
                int(call.root_exported),
                int(call.summary_exported),
                int(call.pending),
                call.last_event_ns,
                call.closed_ns,
                call.deployment_id,
                *((None, None, None) if t is None else (t.role, t.start_us, t.end_us)),
            ),
        )

    def stale_calls(self, silent_since_ns: int, limit: int) -> list[str]:
        rows = self._conn.execute(
            "SELECT call_id FROM calls WHERE closed_ns IS NULL AND last_event_ns < ? LIMIT ?",
            (silent_since_ns, limit),
        )
        return [r["call_id"] for r in rows]

    def forget_calls_closed_before(self, cutoff_ns: int, limit: int) -> int:
        old = [
            (r["call_id"],)
            for r in self._conn.execute(
                "SELECT call_id FROM calls WHERE closed_ns < ? LIMIT ?", (cutoff_ns, limit)
            )
        ]
        for table in ("ledger", "turns", "calls"):
            self._conn.executemany(f"DELETE FROM {table} WHERE call_id=?", old)  # noqa: S608 - fixed names
        return len(old)

    def open_calls(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM calls WHERE closed_ns IS NULL").fetchone()[0])

    def keep_event(self, call_id: str, body: bytes) -> None:
        self._conn.execute("INSERT INTO call_events (call_id, body) VALUES (?, ?)", (call_id, body))

    def kept_events(self, call_id: str) -> list[bytes]:
        rows = self._conn.execute("SELECT body FROM call_events WHERE call_id=? ORDER BY id", (call_id,))
        return [bytes(r["body"]) for r in rows]

    def drop_kept_events(self, call_id: str) -> None:
        self._conn.execute("DELETE FROM call_events WHERE call_id=?", (call_id,))

    def kept_events_with_ids(self, call_id: str) -> list[tuple[int, bytes]]:
        rows = self._conn.execute("SELECT id, body FROM call_events WHERE call_id=? ORDER BY id", (call_id,))
        return [(r["id"], bytes(r["body"])) for r in rows]

    def drop_kept_events_by_id(self, call_id: str, event_ids: Sequence[int]) -> None:
        self._conn.executemany(
            "DELETE FROM call_events WHERE call_id=? AND id=?", [(call_id, i) for i in event_ids]
        )

    # --- turns ----------------------------------------------------------------------------
    def turns(self, call_id: str) -> list[TurnTiming]:
        rows = self._conn.execute("SELECT role, start_us, end_us FROM turns WHERE call_id=?", (call_id,))
        return [_turn(r) for r in rows]

    def turns_starting_last_before(self, call_id: str, start_us: int) -> list[TurnTiming]:
        rows = self._conn.execute(
            "SELECT role, start_us, end_us FROM turns WHERE call_id=? AND start_us = "
            "(SELECT MAX(start_us) FROM turns WHERE call_id=? AND start_us < ?)",
            (call_id, call_id, start_us),
        )
        return [_turn(r) for r in rows]

    def remember_turns(self, call_id: str, turns: Sequence[TurnTiming]) -> None:
        if len(turns) == 1:  # a streamed turn: execute is cheaper than executemany for one row
            t = turns[0]
            self._conn.execute(_REMEMBER_TURN, (call_id, t.start_us, t.role, t.end_us))
        else:
            self._conn.executemany(_REMEMBER_TURN, [(call_id, t.start_us, t.role, t.end_us) for t in turns])

    # --- deployments ------------------------------------------------------------------------
    def deployments(self, agent_id: str) -> dict[str, int]:
        rows = self._conn.execute(
            "SELECT deployment_id, first_call_ns FROM deployments WHERE agent_id=?", (agent_id,)
        )
        return {r["deployment_id"]: r["first_call_ns"] for r in rows}

    def set_deployment(self, agent_id: str, deployment_id: str, first_call_ns: int) -> None:
        self._conn.execute(
            "INSERT INTO deployments VALUES (?, ?, ?) ON CONFLICT(agent_id, deployment_id) "
            "DO UPDATE SET first_call_ns=excluded.first_call_ns",
            (agent_id, deployment_id, first_call_ns),
        )

    def forget_deployment(self, agent_id: str, deployment_id: str) -> None:
        self._conn.execute(
            "DELETE FROM deployments WHERE agent_id=? AND deployment_id=?", (agent_id, deployment_id)
        )

    # --- ledger -----------------------------------------------------------------------------
    def exported(self, call_id: str) -> set[int]:
        rows = self._conn.execute("SELECT span_id FROM ledger WHERE call_id=?", (call_id,))
        return {r["span_id"] & _UNSIGNED for r in rows}

    def newly_exported(self, call_id: str, span_ids: Sequence[int], now_ns: int) -> set[int]:
        if len(span_ids) == 1:  # most turns: the count of rows changed says it (RETURNING costs more)
            inserted = self._conn.execute(_RECORD_EXPORTED, (call_id, signed64(span_ids[0]), now_ns)).rowcount
            return set(span_ids) if inserted else set()
        if not span_ids:
            return set()
        rows = self._conn.execute(
            # RETURNING gives the rows inserted, not the ones ignored (already in the ledger)
            _RECORD_EXPORTED + ", (?, ?, ?)" * (len(span_ids) - 1) + " RETURNING span_id",
            [value for s in span_ids for value in (call_id, signed64(s), now_ns)],
        ).fetchall()
        return {r["span_id"] & _UNSIGNED for r in rows}

    def record_exported(self, call_id: str, span_ids: Sequence[int], now_ns: int) -> None:
        self._conn.executemany(_RECORD_EXPORTED, [(call_id, signed64(s), now_ns) for s in span_ids])

    def forget_ledger_without_call(
        self, after_call_id: str, exported_before_ns: int, limit: int
    ) -> tuple[int, str | None]:
        # the primary key's order: a step reads the ledger of `limit` calls, no more (an index
        # on exported_ns would make every span's insert dearer for a sweep every 30 s)
        rows = self._conn.execute(_LEDGER_WALK, (exported_before_ns, after_call_id, limit)).fetchall()
        orphans = [(r["call_id"],) for r in rows if r["orphan"]]
        deleted = (
            self._conn.executemany("DELETE FROM ledger WHERE call_id=?", orphans).rowcount if orphans else 0
        )
        return deleted, rows[-1]["call_id"] if len(rows) == limit else None

    # --- points -----------------------------------------------------------------------------
    def add_point(self, point: str) -> int:
        cur = self._conn.execute("INSERT INTO points (point) VALUES (?)", (point,))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def points(self) -> list[tuple[int, str]]:
        return [(r["id"], r["point"]) for r in self._conn.execute("SELECT id, point FROM points ORDER BY id")]

    def forget_points(self, through_id: int) -> None:
        self._conn.execute("DELETE FROM points WHERE id <= ?", (through_id,))

    # --- spool ------------------------------------------------------------------------------
    def spool_add(
        self,
        signal: Signal,
        body: bytes,
        items: int,
        now_ns: int,
        *,
        call_ends: list[int] | None = None,
        epoch: str | None = None,
    ) -> int:
        cur = self._conn.execute(
            "INSERT INTO spool (signal, body, size, items, created_ns, call_ends, epoch) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (signal, body, len(body), items, now_ns, json.dumps(call_ends) if call_ends else None, epoch),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def spool_supersede_metrics(self, epoch: str, newest_id: int) -> int:
        cur = self._conn.execute(
            "DELETE FROM spool WHERE signal='metrics' AND epoch=? AND id<?", (epoch, newest_id)
        )
        return cur.rowcount

    def spool_expire(self, created_before_ns: int) -> list[tuple[str, int]]:
        rows = self._conn.execute(
            "SELECT signal, items FROM spool WHERE created_ns < ?", (created_before_ns,)
        ).fetchall()
        if rows:
            self._conn.execute("DELETE FROM spool WHERE created_ns < ?", (created_before_ns,))
        return [(r["signal"], r["items"]) for r in rows]

    def spool_bytes(self) -> int:
        """Total body bytes in the spool (kept by the schema's triggers, not summed)."""
        return int(self._conn.execute("SELECT bytes FROM spool_total WHERE id = 1").fetchone()[0])

    def spool_drop_oldest(self, excess_bytes: int) -> list[tuple[str, int]]:
        victims: list[tuple[int, str, int]] = []
        for row in self._conn.execute("SELECT id, signal, size, items FROM spool ORDER BY id"):
            if excess_bytes <= 0:
                break
            victims.append((row["id"], row["signal"], row["items"]))
            excess_bytes -= row["size"]
        self._conn.executemany("DELETE FROM spool WHERE id=?", [(v[0],) for v in victims])
        return [(signal, items) for _, signal, items in victims]

    def spool_take(self, signal: Signal, max_bytes: int, after_id: int = 0) -> list[SpoolEntry]:
        # sizes from the covering index spool_take: a row's columns after its body are reached
        # only through the body's overflow pages, so a body is read only once it fits
        cursor = self._conn.execute(
            "SELECT id, size FROM spool WHERE signal=? AND id > ? ORDER BY id", (signal, after_id)
        )
        ids = fitting_ids(cursor, max_bytes)
        cursor.close()
        if not ids:
            return []
        # the ids are a prefix of that scan: (after_id, last id] holds exactly them
        rows = self._conn.execute(
            "SELECT id, signal, body, items, created_ns, attempts, call_ends FROM spool "
            "WHERE signal=? AND id > ? AND id <= ? ORDER BY id",
            (signal, after_id, ids[-1]),
        )
        return [SpoolEntry.from_row(row) for row in rows]

    def spool_delete(self, entry_ids: Sequence[int]) -> None:
        self._conn.executemany("DELETE FROM spool WHERE id=?", [(i,) for i in entry_ids])

    def spool_delete_acked(self, acked: Sequence[tuple[int, int]]) -> int:
        deleted = 0
        for spool_id, created_ns in acked:
            deleted += self._conn.execute(
                "DELETE FROM spool WHERE id=? AND created_ns=?", (spool_id, created_ns)
            ).rowcount
        return deleted

    def spool_retried(self, entry_ids: Sequence[int], next_attempt_ns: int) -> None:
        self._conn.executemany(
            "UPDATE spool SET attempts = attempts + 1, next_attempt_ns=? WHERE id=?",
            [(next_attempt_ns, i) for i in entry_ids],
        )

    def dead_letter(self, entry: SpoolEntry, now_ns: int, status: str, reason: str) -> None:
        self._conn.execute(
            "INSERT INTO dead_letters (signal, body, items, created_ns, failed_ns, status, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (entry.signal, entry.body, entry.items, entry.created_ns, now_ns, status, reason[:500]),
        )
        self._conn.execute("DELETE FROM spool WHERE id=?", (entry.id,))

    # --- what a drain leaves (SQLite only: ``otelbridge drain`` retires a SQLite volume) ------
    def open_calls_latest_event(self) -> tuple[int, int]:
        """How many calls are open, and the newest ``last_event_ns`` among them (0: none)."""
        count, latest = self._conn.execute(
            "SELECT COUNT(*), MAX(last_event_ns) FROM calls WHERE closed_ns IS NULL"
        ).fetchone()
        return int(count), int(latest or 0)

    def dead_letter_kinds(self, since_ns: int) -> list[tuple[str, str, str, int, int, int]]:
        """The dead letters by (signal, status, reason), the most frequent first: with how many
        requests, items, and requests that failed at ``since_ns`` or later (never the bodies)."""
        rows = self._conn.execute(
            "SELECT signal, status, reason, COUNT(*), SUM(items), SUM(failed_ns >= ?) "
            "FROM dead_letters GROUP BY signal, status, reason "
            "ORDER BY COUNT(*) DESC, signal, status, reason",
            (since_ns,),
        )
        return [(str(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows]

    def purge_dead_letters(self, failed_before_ns: int) -> None:
        self._conn.execute("DELETE FROM dead_letters WHERE failed_ns < ?", (failed_before_ns,))

    def spool_stats(self) -> SpoolStats:
        depth = {"traces": 0, "metrics": 0}
        for row in self._conn.execute("SELECT signal, COUNT(*) AS n FROM spool GROUP BY signal"):
            depth[row["signal"]] = row["n"]
        oldest = self._conn.execute("SELECT MIN(created_ns) AS oldest FROM spool").fetchone()["oldest"]
        dead = self._conn.execute("SELECT COUNT(*) AS n FROM dead_letters").fetchone()["n"]
        return SpoolStats(depth, self.spool_bytes(), oldest, dead)

    # --- cursors ----------------------------------------------------------------------------
    def inbox_watermark(self) -> int:
        return int(self.get_meta(INBOX_WATERMARK) or 0)

    def set_inbox_watermark(self, last_id: int) -> None:
        self.set_meta(INBOX_WATERMARK, str(last_id))

    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value)
        )

    def poll_watermark(self, agent_id: str) -> PollWatermark:
        row = self._conn.execute(
            "SELECT watermark_id, watermark_start_ns FROM poll_agents WHERE agent_id=?", (agent_id,)
        ).fetchone()
        return (
            PollWatermark(None, None)
            if row is None
            else PollWatermark(row["watermark_id"], row["watermark_start_ns"])
        )

    def save_poll_watermark(self, agent_id: str, call_id: str, start_ns: int | None, polled_ns: int) -> None:
        self._conn.execute(
            "INSERT INTO poll_agents VALUES (?, ?, ?, ?) ON CONFLICT(agent_id) DO UPDATE SET "
            "watermark_id=excluded.watermark_id, watermark_start_ns=excluded.watermark_start_ns, "
            "last_poll_ns=excluded.last_poll_ns",
            (agent_id, call_id, start_ns, polled_ns),
        )

    def remember_running(self, calls: Sequence[RunningCall]) -> None:
        self._conn.executemany(
            "INSERT OR IGNORE INTO running_calls VALUES (?, ?, ?)",
            [(c.call_id, c.agent_id, c.first_seen_ns) for c in calls],
        )

    def running_calls(self) -> list[RunningCall]:
        rows = self._conn.execute("SELECT call_id, agent_id, first_seen_ns FROM running_calls")
        return [RunningCall(r["call_id"], r["agent_id"], r["first_seen_ns"]) for r in rows]

    def forget_running(self, call_id: str) -> None:
        self._conn.execute("DELETE FROM running_calls WHERE call_id=?", (call_id,))

    def backfill_cursor(self, agent_id: str, span: str) -> BackfillCursor:
        row = self._conn.execute(
            "SELECT cursor, done, head_id, head_start_ns FROM backfill WHERE agent_id=? AND range=?",
            (agent_id, span),
        ).fetchone()
        if row is None:
            return BackfillCursor(None, False, None, None)
        return BackfillCursor(row["cursor"], bool(row["done"]), row["head_id"], row["head_start_ns"])

    def save_backfill(
        self,
        agent_id: str,
        span: str,
        *,
        cursor: str | None,
        done: bool,
        calls: int,
        head_id: str | None,
        head_start_ns: int | None,
        new_mark: bool,
    ) -> None:
        self._conn.execute(
            _SAVE_BACKFILL_NEW_MARK if new_mark else _SAVE_BACKFILL,
            (agent_id, span, cursor, int(done), calls, head_id, head_start_ns),
        )


class SqliteState:
    """:class:`~otelbridge.store.api.StateStore` on ``state.db`` (or a second, reading
    connection to it)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.path = db.path

    @contextmanager
    def transaction(self) -> Iterator[SqliteStateTx]:
        # SQLite's errors as the seam's StoreWriteError, as PostgreSQL's are: a caller tells a
        # full disk from a bug without knowing the engine
        with _writes("the state store cannot be written"), self.db.transaction() as conn:
            yield SqliteStateTx(conn)

    @contextmanager
    def reading(self) -> Iterator[SqliteStateTx]:
        with self.db.reading() as conn:
            yield SqliteStateTx(conn)

    def probe(self) -> None:
        self.db.probe()

    def close(self) -> None:
        self.db.close()


def state_path(state_dir: Path) -> Path:
    return state_dir / "state.db"


def open_state(state_dir: Path) -> SqliteState:
    db = Database(state_path(state_dir), STATE_SCHEMA)
    try:
        with db.transaction() as conn:
            _migrate(conn, db.path)
    except BaseException:
        db.close()  # after the transaction let go of the connection (closing inside it hung)
        raise
    return SqliteState(db)


def open_state_reader(state_dir: Path) -> SqliteState:
    """A second connection to ``state.db`` for reads only (WAL readers never wait for the
    writer): the sender looks at the spool without queueing behind the processor's batches."""
    return SqliteState(Database(state_path(state_dir), ""))


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    elif int(row["value"]) > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer otelbridge (schema {row['value']} > {SCHEMA_VERSION}); "
            "run that version, or point OTELBRIDGE_STATE_DIR at a new directory"
        )
    _add_missing_columns(conn, "backfill", {"head_id": "TEXT", "head_start_ns": "INTEGER"})
    _add_missing_columns(
        conn,
        "calls",
        {
            "deployment_id": "TEXT",
            "latest_role": "TEXT",
            "latest_start_us": "INTEGER",
            "latest_end_us": "INTEGER",
        },
    )


def _add_missing_columns(conn: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Columns added after a state store was made (nullable, so old rows stay valid)."""
    have = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns.items():
        if name not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def read_inbox_watermark(state_dir: Path) -> int | None:
    """The processor's inbox watermark, read without creating or migrating anything (for the
    webhook process, which trims the inbox); None when there is no state store yet."""
    path = state_path(state_dir)
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key=?", (INBOX_WATERMARK,)).fetchone()
            return (int(row[0]) if row is not None else 0) or None
        finally:
            conn.close()
    except sqlite3.Error:
        return None


# --- inbox.db ----------------------------------------------------------------------------------
_INSERT: Final = "INSERT INTO inbox (received_ns, event_type, call_id, body) VALUES (?, ?, ?, ?)"
_DELETE_THROUGH: Final = "DELETE FROM inbox WHERE id <= ?"
#: ... at most so many rows from the first: the ids left are one run (see ``depth``)
_TRIM_THROUGH: Final = "DELETE FROM inbox WHERE id <= ? AND id < (SELECT MIN(id) FROM inbox) + ?"
#: processed rows a webhook commit deletes at most (``append``), the next ones the rest: its
#: webhooks wait for the delete, and with ``secure_delete`` each row is overwritten (a commit of
#: 20 rows that also deleted 3,000 took 13.5 ms instead of 1.1 ms; 10,000, 33.6 ms)
TRIM_ROWS_PER_COMMIT = 256


class SqliteInboxStore:
    """:class:`~otelbridge.store.api.InboxStore` on ``inbox.db``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.path = db.path

    def append(self, rows: Sequence[NewRow], *, trim_through: int | None = None) -> bool:
        """One multi-row INSERT: in autocommit it is its own transaction, and the thread gives
        up and takes back the GIL once, not once a row (executemany) plus BEGIN/COMMIT. At most
        1024 x 4 parameters, far below SQLite's 32,766; longer lists go in one transaction.
        ``trim_through``: at most :data:`TRIM_ROWS_PER_COMMIT` processed rows are deleted."""
        if not rows:
            return True
        trimmed = True
        with _writes("the state store cannot be written"):
            if trim_through is None and len(rows) <= 1024:
                self.db.execute_atomic(_INSERT + ", (?, ?, ?, ?)" * (len(rows) - 1), _flat(rows))
                return True
            with self.db.transaction() as conn:
                if trim_through is not None:
                    deleted = conn.execute(_TRIM_THROUGH, (trim_through, TRIM_ROWS_PER_COMMIT)).rowcount
                    trimmed = deleted < TRIM_ROWS_PER_COMMIT
                for start in range(0, len(rows), 1024):
                    chunk = rows[start : start + 1024]
                    conn.execute(_INSERT + ", (?, ?, ?, ?)" * (len(chunk) - 1), _flat(chunk))
        return trimmed

    def claim(self, tx: StateTx, limit: int, max_bytes: int) -> Claim:
        """The rows after ``inbox_watermark`` in state.db, which moves past them in ``tx``.
        Safe with an id watermark: one writer connection appends, so ids commit in order."""
        assert isinstance(tx, SqliteStateTx), "the SQLite inbox claims within the SQLite state store"
        watermark = tx.inbox_watermark()
        rows = self.read_after(watermark, limit, max_bytes)
        if rows:
            watermark = rows[-1].id
            tx.set_inbox_watermark(watermark)
        return Claim(rows, watermark)

    def processed_through(self) -> int | None:
        return read_inbox_watermark(self.path.parent)

    def backlog(self) -> int:
        return self.depth(self.processed_through() or 0)

    def read_after(self, after_id: int, limit: int, max_bytes: int) -> list[InboxRow]:
        rows: list[InboxRow] = []
        size = 0
        with self.db.reading() as conn:
            cursor = conn.execute(
                "SELECT id, received_ns, body FROM inbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            )
            for row in cursor:
                body = bytes(row["body"])
                rows.append(InboxRow(row["id"], row["received_ns"], body))
                size += len(body)
                if size >= max_bytes:
                    break
            cursor.close()
        return rows

    def delete_through(self, last_id: int) -> None:
        with self.db.transaction() as conn:
            conn.execute(_DELETE_THROUGH, (last_id,))

    def depth(self, after_id: int) -> int:
        """The rows after ``after_id``, from the first and last ids (two index seeks): the rows
        left are one run of ids, as ids are never reused and always committed in order, and
        rows are only deleted through an id. A ``COUNT(*)`` read every page of the backlog (the
        bodies' first bytes live there), every housekeeping tick of a loaded pipeline."""
        with self.db.reading() as conn:
            # two statements' worth: SQLite seeks for a lone MIN() or MAX(), not for both at once
            first, last = conn.execute(
                "SELECT (SELECT MIN(id) FROM inbox), (SELECT MAX(id) FROM inbox)"
            ).fetchone()
        if last is None or last <= after_id:
            return 0
        return int(last) - max(after_id, int(first) - 1)

    def checkpoint(self) -> None:
        """Copy what the WAL holds back into the database file without blocking its writers
        (``PASSIVE``), so the writer's own automatic checkpoints rarely have anything to do."""
        with self.db.reading() as conn:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def probe(self) -> None:
        self.db.probe()

    def close(self) -> None:
        self.db.close()


def _flat(rows: Sequence[NewRow]) -> list[object]:
    return [value for row in rows for value in row]


def inbox_path(state_dir: Path) -> Path:
    return state_dir / "inbox.db"


def open_inbox(state_dir: Path, *, autocheckpoint_pages: int | None = None) -> SqliteInboxStore:
    db = Database(inbox_path(state_dir), INBOX_SCHEMA)
    if autocheckpoint_pages is not None:
        db.conn.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint_pages)}")
    return SqliteInboxStore(db)


# --- acks.db -----------------------------------------------------------------------------------
class SqliteAckLog:
    """:class:`~otelbridge.store.api.AckLog` on ``acks.db``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.path = db.path

    def record(self, acked: Sequence[SpoolEntry], forget: Sequence[int]) -> None:
        with _writes(f"{self.path.name} cannot be written"), self.db.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO acked (spool_id, created_ns) VALUES (?, ?)",
                [(e.id, e.created_ns) for e in acked],
            )
            conn.executemany("DELETE FROM acked WHERE spool_id=?", [(i,) for i in forget])

    def acked(self) -> list[tuple[int, int]]:
        with self.db.reading() as conn:
            rows = conn.execute("SELECT spool_id, created_ns FROM acked")
            return [(int(r["spool_id"]), int(r["created_ns"])) for r in rows]

    def forget(self, acked: Sequence[tuple[int, int]]) -> None:
        with self.db.transaction() as conn:
            conn.executemany("DELETE FROM acked WHERE spool_id=?", [(i,) for i, _ in acked])

    def close(self) -> None:
        self.db.close()


def acks_path(state_dir: Path) -> Path:
    return state_dir / "acks.db"


def open_acks(state_dir: Path) -> SqliteAckLog:
    db = Database(acks_path(state_dir), ACKS_SCHEMA)
    # NORMAL, not FULL: a commit reaches the OS (and survives kill -9) without an fsync of its
    # own; only a power loss or kernel crash can forget the last acknowledgements, and then those
    # exports are sent again (duplicates, never a loss). One fsync per export halved the drain.
    db.conn.execute("PRAGMA synchronous=NORMAL")
    return SqliteAckLog(db)


__all__ = [
    "ACKS_SCHEMA",
    "INBOX_SCHEMA",
    "INBOX_WATERMARK",
    "SCHEMA_VERSION",
    "STATE_SCHEMA",
    "WEBHOOK_SIDE_AUTOCHECKPOINT_PAGES",
    "Database",
    "FairLock",
    "SqliteAckLog",
    "SqliteEngine",
    "SqliteInboxStore",
    "SqliteState",
    "SqliteStateTx",
    "acks_path",
    "free_bytes",
    "inbox_path",
    "open_acks",
    "open_inbox",
    "open_state",
    "open_state_reader",
    "read_inbox_watermark",
    "signed64",
    "state_path",
]


class SqliteEngine:
    """The embedded engine's stores, each opened on demand in ``state_dir``."""

    name: Final = "sqlite"
    single_process: Final = True

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def ensure_schema(self) -> int:
        """Each file's schema is made (and migrated) when it is opened."""
        return SCHEMA_VERSION

    def state(self, *, fence: Lease | None = None) -> SqliteState:
        """``fence`` is unused: a file lease is the kernel's, held until its holder dies."""
        return open_state(self.state_dir)

    def state_reader(self) -> SqliteState:
        return open_state_reader(self.state_dir)

    def inbox(self, *, receiving: bool = False) -> SqliteInboxStore:
        """``receiving``: the webhook side's connection, which checkpoints only as a fallback."""
        return open_inbox(
            self.state_dir, autocheckpoint_pages=WEBHOOK_SIDE_AUTOCHECKPOINT_PAGES if receiving else None
        )

    def acks(self) -> SqliteAckLog:
        return open_acks(self.state_dir)

    def lease(self, name: str) -> FileLease:
        return FileLease(self.state_dir, name)
