"""The daemon's durable state: two SQLite files in ``OTELBRIDGE_STATE_DIR``, both in WAL mode
with ``synchronous=FULL`` (a committed transaction survives ``kill -9`` and power loss).

``inbox.db``
    Webhook bodies, appended by the receiver (group commits) before it answers 2xx. Its own
    file so that acknowledging a webhook never waits on the export side's transactions.

``state.db``
    Everything derived from the inbox, changed together in one transaction per batch: the
    open calls, the ledger of exported span ids, the spool of encoded OTLP requests, metric
    points not yet in an exported metrics request, dead letters, and ``inbox_watermark`` (the
    last inbox id processed), which makes processing exactly-once across the two files.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Final

log = logging.getLogger(__name__)

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
CREATE INDEX IF NOT EXISTS spool_signal ON spool (signal, id);
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


class StoreError(Exception):
    """The state directory or a database in it cannot be used."""


#: The state holds webhook bodies: transcripts and unmasked phone numbers. Its directory is
#: 0700 and its files 0600, whatever the umask.
PRIVATE_DIR_MODE: Final = 0o700
PRIVATE_FILE_MODE: Final = 0o600
#: every file otelbridge keeps in the state directory (SQLite adds -wal, -shm, -journal)
STATE_FILES: Final = ("inbox.db", "state.db", "acks.db", "serve.lock", "pipeline.lock")
SQLITE_COMPANIONS: Final = ("-wal", "-shm", "-journal")


def ensure_state_dir(state_dir: Path) -> None:
    """Create the state directory (and its parents) 0700 and check that it and its files are
    private; a StoreError naming the absolute path, the reason and the fix when that cannot be
    done, when the directory is group- or world-writable, or when a state file is a symbolic
    link. See :func:`_check_private_dir` for what is accepted and tightened."""
    try:
        existed = state_dir.is_dir()
        state_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        if not existed:
            os.chmod(state_dir, PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask
        if not os.access(state_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "Permission denied")
        _check_private_dir(state_dir)
        for name in STATE_FILES:
            for suffix in SQLITE_COMPANIONS if name.endswith(".db") else ():
                _check_private_file(state_dir / f"{name}{suffix}")
            _check_private_file(state_dir / name)
    except OSError as exc:
        where = state_dir.absolute()
        shown = repr(str(state_dir)) + ("" if str(where) == str(state_dir) else f" ({where})")
        raise StoreError(
            f"cannot use OTELBRIDGE_STATE_DIR={shown}: {exc.strerror or exc}. Fix: make {where} a "
            f"directory writable by this user (uid {os.getuid()}), or point OTELBRIDGE_STATE_DIR at one "
            "(a persistent volume in containers)"
        ) from None


def _check_private_dir(state_dir: Path) -> None:
    """Refuse a directory others can write into (they could plant links or swap the files);
    tighten one of ours that others can only read (0755 from older versions: refusing it would
    stop every upgrade, and chmod loses nothing).

    One shared directory is accepted as it is: a Kubernetes volume under ``fsGroup`` (the
    chart's 10001), which the kubelet makes group-writable with the setgid bit and owns by root
    (``drwxrwsr-x root:10001``). Its group is this process's own group, so no other user can
    write into it; and it is left unchanged, since changing it would make the kubelet's
    ``fsGroupChangePolicy: OnRootMismatch`` walk the volume again at every start."""
    st = os.stat(state_dir)  # a symlink to the directory is the operator's choice of path
    mode = stat.S_IMODE(st.st_mode)
    euid = os.geteuid()
    where = state_dir.absolute()
    fsgroup = bool(mode & stat.S_ISGID) and st.st_gid == os.getegid() and st.st_uid in (euid, 0)
    if mode & stat.S_IWOTH or (mode & stat.S_IWGRP and not fsgroup):
        who = "world-writable" if mode & stat.S_IWOTH else f"writable by group {st.st_gid}"
        raise StoreError(
            f"refusing OTELBRIDGE_STATE_DIR {where}: it is {who} (mode {mode:04o}, owner uid {st.st_uid}), "
            "so other users could read or replace the stored webhooks (transcripts, phone numbers). "
            f"Fix: chmod 0700 {where}, or point OTELBRIDGE_STATE_DIR at a subdirectory, which otelbridge "
            "creates 0700 (a volume shared through a group is accepted when the group is this process's "
            f"own, gid {os.getegid()}, and the directory has the setgid bit, as fsGroup makes it)"
        )
    if st.st_uid not in (euid, 0):
        raise StoreError(
            f"refusing OTELBRIDGE_STATE_DIR {where}: it belongs to uid {st.st_uid}, not to this user "
            f"(uid {euid}), and its owner can change or replace everything in it. Fix: chown {euid} {where}, "
            "or point OTELBRIDGE_STATE_DIR at a directory of this user's"
        )
    if mode & 0o077 and st.st_uid == euid and not fsgroup:
        os.chmod(state_dir, mode & ~0o077)
        log.info("state directory %s was mode %04o: now %04o (private)", where, mode, mode & ~0o077)


def _check_private_file(path: Path) -> None:
    """Refuse a state file that is a symbolic link or not a regular file (a planted link made
    the daemon create its files elsewhere); make one others can read 0600."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise StoreError(
            f"refusing {path.absolute()}: it is {what}; otelbridge opens its state files only as regular "
            "files in the state directory, so that nothing can redirect what it writes. "
            f"Fix: remove {path.absolute()} (or put the real file in its place)"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        if st.st_uid != os.geteuid():
            where, euid = path.absolute(), os.geteuid()
            raise StoreError(
                f"refusing {where}: it is mode {stat.S_IMODE(st.st_mode):04o} and belongs to uid "
                f"{st.st_uid}, not to this user (uid {euid}). Fix: chown {euid} {where}"
            )
        with suppress(FileNotFoundError):  # a WAL file SQLite removed meanwhile
            os.chmod(path, PRIVATE_FILE_MODE)


def open_private(path: Path) -> IO[str]:
    """Open (creating) a file of the state directory for appending (the lock files): 0600
    whatever the umask, never through a symbolic link."""
    _check_private_file(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # os.open's mode is masked by the umask
        return os.fdopen(fd, "a")
    except BaseException:
        os.close(fd)
        raise


#: seconds a free-space reading is trusted: ``os.statvfs`` costs ~3 µs, several times what the
#: cached comparison does, and a webhook's batch is checked against it
FREE_SPACE_TTL_S: Final = 1.0


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem of ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class FreeSpace:
    """The state volume's free space against ``OTELBRIDGE_MIN_FREE_BYTES``: a reserve. Below it
    webhooks are refused (503) and readiness fails, so that what must still write to make room
    — processing, trimming the inbox, checkpoints — never meets a full disk."""

    def __init__(self, state_dir: Path, min_free_bytes: int, *, ttl_s: float = FREE_SPACE_TTL_S) -> None:
        self.state_dir = state_dir
        self.min_free_bytes = min_free_bytes
        self._ttl_s = ttl_s
        self._free = 0
        self._expires = float("-inf")  # time.monotonic() after which the reading is stale

    def problem(self, writing: int = 0, *, fresh: bool = False) -> str | None:
        """Why nothing more may be written (free space below the floor), else None, and then
        ``writing`` bytes are counted off the reading, so a burst within one reading is seen.
        A write may take the space below the floor (the reserve is sized for it); after it,
        everything is refused until space returns — no flapping at the edge. The volume is
        read again once the reading is older than the TTL, or at once with ``fresh``."""
        if self.min_free_bytes <= 0:
            return None
        now = time.monotonic()
        if fresh or now >= self._expires:
            try:
                self._free = free_bytes(self.state_dir)
            except OSError:
                return None  # cannot tell: the write itself will say what is wrong
            self._expires = now + self._ttl_s
        if self._free < self.min_free_bytes:
            return f"free space {self._free} bytes below OTELBRIDGE_MIN_FREE_BYTES ({self.min_free_bytes})"
        self._free -= writing
        return None

    def fix(self) -> str:
        return (
            f"Fix: free space on the volume of {self.state_dir.absolute()} (or grow it), or lower "
            "OTELBRIDGE_MIN_FREE_BYTES; webhooks are taken again as soon as there is room"
        )


def probe_write(db: Database) -> None:
    """A real write, committed: raises what a write would (read-only file, I/O error). It
    rewrites ``user_version`` with its own value, so nothing changes but one WAL frame."""
    with db.transaction() as conn:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        conn.execute(f"PRAGMA user_version={version}")


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
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=OFF")
        # Deleted rows (webhook bodies: transcripts, phone numbers) are overwritten with zeros,
        # freed pages included. Debian's SQLite (the image's) is built with this on already;
        # said here so that every build does it. Measured on the inbox's workload: 1.7x the
        # disk writes of OFF (460 MB against 270 MB for 129 MB of bodies), commit times within
        # the noise; FAST, which adds no I/O, left 9 of 1936 deleted bodies readable.
        conn.execute("PRAGMA secure_delete=ON")
        conn.executescript(schema)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open {path}: {exc}{_no_space_hint(path.parent)}") from None
    return conn


def _no_space_hint(state_dir: Path) -> str:
    """Why opening failed when the volume is (nearly) full: SQLite says only "disk I/O error"
    when it cannot allocate its shared-memory file."""
    try:
        free = free_bytes(state_dir)
    except OSError:
        return ""
    if free >= 1024 * 1024:
        return ""
    return f"; the volume has {free} bytes free. Fix: free space on it (or grow it), then start again"


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

    def close(self) -> None:
        with self._lock:
            self.conn.close()


def inbox_path(state_dir: Path) -> Path:
    return state_dir / "inbox.db"


def state_path(state_dir: Path) -> Path:
    return state_dir / "state.db"


#: WAL pages after which the webhook process checkpoints inbox.db itself. The pipeline
#: checkpoints it far sooner (every INBOX_CHECKPOINT_ROWS rows it takes), so copying the WAL
#: back and syncing the database file stay off the request path; this is the fallback for when
#: the pipeline is down (~80 MB of WAL).
WEBHOOK_SIDE_AUTOCHECKPOINT_PAGES: Final = 20_000


def open_state_reader(state_dir: Path) -> Database:
    """A second connection to ``state.db`` for reads only (WAL readers never wait for the
    writer): the sender looks at the spool without queueing behind the processor's batches."""
    return Database(state_path(state_dir), "")


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


def acks_path(state_dir: Path) -> Path:
    return state_dir / "acks.db"


def open_acks(state_dir: Path) -> Database:
    return Database(acks_path(state_dir), ACKS_SCHEMA)


def open_inbox(state_dir: Path, *, autocheckpoint_pages: int | None = None) -> Database:
    db = Database(inbox_path(state_dir), INBOX_SCHEMA)
    if autocheckpoint_pages is not None:
        db.conn.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint_pages)}")
    return db


def checkpoint(db: Database) -> None:
    """Copy what the WAL holds back into the database file without blocking its writers
    (``PASSIVE``), so the writer's own automatic checkpoints rarely have anything to do."""
    with db.reading() as conn:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def open_state(state_dir: Path) -> Database:
    db = Database(state_path(state_dir), STATE_SCHEMA)
    try:
        with db.transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"{db.path} was written by a newer otelbridge (schema {row[0]} > {SCHEMA_VERSION}); "
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
    except BaseException:
        db.close()  # after the transaction let go of the connection (closing inside it hung)
        raise
    return db


def _add_missing_columns(conn: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Columns added after a state store was made (nullable, so old rows stay valid)."""
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns.items():
        if name not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


#: meta key in state.db: the last inbox row the processor has taken (the inbox rows up to it
#: may be deleted by anyone; the processor never reads below it)
INBOX_WATERMARK: Final = "inbox_watermark"


def read_inbox_watermark(state_dir: Path) -> int | None:
    """The processor's inbox watermark, read without creating or migrating anything (for the
    webhook process, which trims the inbox); None when there is no state store yet."""
    path = state_path(state_dir)
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            return inbox_watermark(conn) or None
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def inbox_watermark(conn: sqlite3.Connection) -> int:
    """The last inbox row the processor has taken (0 before the first)."""
    return int(get_meta(conn, INBOX_WATERMARK, "0") or 0)


def get_meta(conn: sqlite3.Connection, key: str, default: str | None = None) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return default if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value)
    )
