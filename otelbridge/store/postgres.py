"""The distributed engine: PostgreSQL, shared by every replica (``OTELBRIDGE_DATABASE_URL``).

All of the engine's SQL is in this module; rows are read by column name. Every replica receives
(its webhooks go into ``inbox`` in group commits); one leader, chosen by the ``leases`` row,
processes, polls and sends.

* **Claiming** deletes inbox rows inside the processing transaction (``FOR UPDATE SKIP
  LOCKED``): an id watermark would skip a lower id committed after a higher one was read.
* **Receipt is idempotent**: a body's SHA-256 is unique among unprocessed rows, so a webhook
  re-delivered after a commit whose outcome the receiver never learnt adds nothing.
* **The lease** takes its time from the database clock; every leader transaction checks that
  its epoch still holds the lease (``FOR KEY SHARE``, which a takeover's ``FOR UPDATE`` waits
  for), so a leader paused or cut off past its lease commits nothing when it wakes.
* No ``NOTIFY``: it takes a global lock at commit. The processor polls.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

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
from otelbridge.store.files import DatabaseUnreachableError, StoreError

if TYPE_CHECKING:
    from otelbridge.delivery.environment import Signal

log = logging.getLogger("otelbridge.store")

SCHEMA_VERSION: Final = 1
#: the oldest server the schema and queries are written for (identity columns, ``FORCE`` on
#: drop, ``xid8``-free): PostgreSQL 13
MIN_SERVER_VERSION: Final = 130000
#: ``pg_advisory_xact_lock`` key of spool inserts: they commit one at a time, in id order
SPOOL_LOCK: Final = 0x6F62_7370_6F6F_6C00  # "obspool"
#: ``pg_advisory_xact_lock`` key of migrations: replicas starting together migrate one at a time
MIGRATION_LOCK: Final = 0x6F74656C62726467  # "otelbrdg"

#: per session: a statement or an idle transaction never holds locks (or vacuum) for long
STATEMENT_TIMEOUT_MS: Final = 30_000
IDLE_IN_TRANSACTION_TIMEOUT_MS: Final = 10_000
#: TCP keepalives and tcp_user_timeout: a partitioned peer is noticed in ~20 s, not in the
#: kernel's default two hours (a URL that sets its own keeps them)
CONNECT_DEFAULTS: Final[dict[str, Any]] = {
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 2,
    "tcp_user_timeout": 20_000,
}
#: the lease: renewed every LEASE_RENEW_S, lost LEASE_TTL_S after the last renewal; a follower
#: tries every LEASE_RENEW_S too, so a dead leader is replaced within TTL + one try (< 15 s)
LEASE_TTL_S: Final = 10.0
LEASE_RENEW_S: Final = 2.0
#: high-churn tables: vacuumed after 1 % of rows changed, without throttling
_CHURN: Final = "autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0"

MIGRATIONS: Final[dict[int, str]] = {
    1: f"""
CREATE TABLE IF NOT EXISTS otelbridge_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_ns bigint NOT NULL,
    event_type  text NOT NULL,
    call_id     text NOT NULL,
    body        bytea NOT NULL,
    digest      bytea NOT NULL UNIQUE          -- SHA-256 of body: re-delivery adds nothing
) WITH ({_CHURN});
CREATE TABLE IF NOT EXISTS calls (
    call_id          text PRIMARY KEY,
    agent_id         text NOT NULL,
    agent_name       text,
    start_ns         bigint,
    root_exported    boolean NOT NULL DEFAULT false,
    summary_exported boolean NOT NULL DEFAULT false,
    pending          boolean NOT NULL DEFAULT false,
    last_event_ns    bigint NOT NULL,
    closed_ns        bigint,
    deployment_id    text,
    latest_role      text,
    latest_start_us  bigint,
    latest_end_us    bigint
) WITH (fillfactor = 80, {_CHURN});
CREATE INDEX IF NOT EXISTS calls_open ON calls (closed_ns, last_event_ns);
CREATE TABLE IF NOT EXISTS call_events (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id text NOT NULL,
    body    bytea NOT NULL
) WITH ({_CHURN});
CREATE INDEX IF NOT EXISTS call_events_call ON call_events (call_id, id);
CREATE TABLE IF NOT EXISTS turns (
    call_id  text NOT NULL,
    start_us bigint NOT NULL,
    role     text NOT NULL,
    end_us   bigint,
    PRIMARY KEY (call_id, start_us, role)
) WITH ({_CHURN});
CREATE TABLE IF NOT EXISTS deployments (
    agent_id      text NOT NULL,
    deployment_id text NOT NULL,
    first_call_ns bigint NOT NULL,
    PRIMARY KEY (agent_id, deployment_id)
);
CREATE TABLE IF NOT EXISTS ledger (
    call_id     text NOT NULL,
    span_id     bigint NOT NULL,               -- signed view of the 64-bit id
    exported_ns bigint NOT NULL,
    PRIMARY KEY (call_id, span_id)
) WITH ({_CHURN});
CREATE TABLE IF NOT EXISTS spool (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    signal          text NOT NULL,
    body            bytea NOT NULL,
    size            bigint NOT NULL,
    items           bigint NOT NULL,
    created_ns      bigint NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_ns bigint NOT NULL DEFAULT 0,
    call_ends       text,
    epoch           text
) WITH (fillfactor = 70, {_CHURN});
CREATE INDEX IF NOT EXISTS spool_signal ON spool (signal, id);
CREATE INDEX IF NOT EXISTS spool_created ON spool (created_ns);
CREATE TABLE IF NOT EXISTS dead_letters (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    signal     text NOT NULL,
    body       bytea NOT NULL,
    items      bigint NOT NULL,
    created_ns bigint NOT NULL,
    failed_ns  bigint NOT NULL,
    status     text NOT NULL,
    reason     text NOT NULL
);
CREATE TABLE IF NOT EXISTS poll_agents (
    agent_id           text PRIMARY KEY,
    watermark_id       text,
    watermark_start_ns bigint,
    last_poll_ns       bigint
);
CREATE TABLE IF NOT EXISTS running_calls (
    call_id       text PRIMARY KEY,
    agent_id      text NOT NULL,
    first_seen_ns bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS backfill (
    agent_id      text NOT NULL,
    range         text NOT NULL,
    cursor        text,
    done          boolean NOT NULL DEFAULT false,
    calls         bigint NOT NULL DEFAULT 0,
    head_id       text,
    head_start_ns bigint,
    PRIMARY KEY (agent_id, range)
);
CREATE TABLE IF NOT EXISTS points (
    id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    point text NOT NULL
) WITH ({_CHURN});
CREATE TABLE IF NOT EXISTS acked (
    spool_id   bigint PRIMARY KEY,
    created_ns bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    epoch      bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
""",
}

_UNSIGNED: Final = 0xFFFFFFFFFFFFFFFF
#: the errors of a connection that broke or a server that went away (the commit's outcome may
#: be unknown: the receiver answers 503 and the re-delivery is deduplicated)
_CONNECTION_ERRORS: Final = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)


class LeaseLostError(StoreWriteError):
    """A leader transaction found that this process no longer holds the lease."""


def signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _turn(row: dict[str, Any]) -> TurnTiming:
    return TurnTiming(row["role"], row["start_us"], row["end_us"])


@contextmanager
def _writes(what: str) -> Iterator[None]:
    try:
        yield
    except LeaseLostError:
        raise
    except psycopg.Error as exc:
        full = getattr(exc, "sqlstate", None) in ("53100", "53200")  # disk full, out of memory
        raise StoreWriteError(f"{what} ({type(exc).__name__}: {_first_line(exc)})", full=full) from exc
    except PoolTimeout as exc:
        raise StoreWriteError(f"{what} (the database did not answer: {exc})") from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# --- connections ---------------------------------------------------------------------------------
def _configure(conn: psycopg.Connection[Any]) -> None:
    """Per session: bounded statements and idle transactions (a stuck transaction would hold
    the lease's locks and stall vacuum of the queue tables)."""
    conn.execute(
        f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}; "
        f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_TIMEOUT_MS}"
    )


def connect(url: str, application_name: str) -> psycopg.Connection[dict[str, Any]]:
    """A connection of its own (the lease's: outside any pool, never recycled under it)."""
    try:
        conn = psycopg.connect(
            url, autocommit=True, row_factory=dict_row, application_name=application_name, **CONNECT_DEFAULTS
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachableError(f"cannot connect to the database: {_first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to the database: {_first_line(exc)}") from exc
    _configure(conn)
    return conn


class Database:
    """A pool of autocommit connections; :meth:`transaction` is one explicit transaction."""

    def __init__(
        self,
        url: str,
        application_name: str,
        *,
        max_size: int = 4,
        timeout_s: float = 10.0,
        check: bool = True,
    ) -> None:
        """``check``: test a connection on checkout (one round trip more); without it a
        connection the server cut fails its first statement and the pool replaces it."""
        self.url = url
        self.pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "application_name": application_name,
                **CONNECT_DEFAULTS,
            },
            configure=_configure,
            check=ConnectionPool.check_connection if check else None,
            timeout=timeout_s,
            open=False,
            name=application_name,
        )
        self.pool.open(wait=False)

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with self.pool.connection() as conn, conn.transaction():
            yield conn

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with self.pool.connection() as conn:
            yield conn

    def close(self) -> None:
        self.pool.close()


# --- the state store -----------------------------------------------------------------------------
_SAVE_CALL: Final = (
    "INSERT INTO calls (call_id, agent_id, agent_name, start_ns, root_exported, summary_exported, "
    "pending, last_event_ns, closed_ns, deployment_id, latest_role, latest_start_us, latest_end_us) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (call_id) DO UPDATE SET agent_id=excluded.agent_id, agent_name=excluded.agent_name, "
    "start_ns=excluded.start_ns, root_exported=excluded.root_exported, "
    "summary_exported=excluded.summary_exported, pending=excluded.pending, "
    "last_event_ns=excluded.last_event_ns, closed_ns=excluded.closed_ns, "
    "deployment_id=excluded.deployment_id, latest_role=excluded.latest_role, "
    "latest_start_us=excluded.latest_start_us, latest_end_us=excluded.latest_end_us"
)
_SAVE_BACKFILL_UPSERT: Final = (
    "INSERT INTO backfill (agent_id, range, cursor, done, calls, head_id, head_start_ns) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (agent_id, range) DO UPDATE SET cursor=excluded.cursor, done=excluded.done, "
    "calls=backfill.calls + excluded.calls, "
)
_SAVE_BACKFILL: Final = _SAVE_BACKFILL_UPSERT + (
    "head_id=COALESCE(backfill.head_id, excluded.head_id), "
    "head_start_ns=COALESCE(backfill.head_start_ns, excluded.head_start_ns)"
)
_SAVE_BACKFILL_NEW_MARK: Final = _SAVE_BACKFILL_UPSERT + (
    "head_id=COALESCE(excluded.head_id, backfill.head_id), "
    "head_start_ns=COALESCE(excluded.head_start_ns, backfill.head_start_ns)"
)


class PostgresStateTx:
    """:class:`~otelbridge.store.api.StateTx` on a connection inside its transaction."""

    __slots__ = ("conn",)

    def __init__(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        self.conn = conn

    def _all(self, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self.conn.execute(query, params).fetchall()

    def _one(self, query: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        return self.conn.execute(query, params).fetchone()

    def _run(self, query: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(query, params).rowcount

    def _many(self, query: str, params: Sequence[Sequence[Any]]) -> None:
        if params:
            with self.conn.cursor() as cur:
                cur.executemany(query, params)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        try:
            with self.conn.transaction():
                yield
        except _CONNECTION_ERRORS as exc:  # the database failed, not the work: all of it fails
            raise StoreWriteError(f"the database cannot be written ({_first_line(exc)})") from exc

    # --- calls ----------------------------------------------------------------------------
    def load_call(self, call_id: str) -> CallRow | None:
        row = self._one("SELECT * FROM calls WHERE call_id=%s", (call_id,))
        if row is None:
            return None
        role = row["latest_role"]
        return CallRow(
            call_id,
            row["agent_id"],
            row["agent_name"],
            row["start_ns"],
            row["root_exported"],
            row["summary_exported"],
            row["pending"],
            row["last_event_ns"],
            row["closed_ns"],
            row["deployment_id"],
            None if role is None else TurnTiming(role, row["latest_start_us"], row["latest_end_us"]),
        )

    def save_call(self, call: CallRow) -> None:
        t = call.latest_turn
        self._run(
            _SAVE_CALL,
            (
                call.call_id,
                call.agent_id,
                call.agent_name,
                call.start_ns,
                call.root_exported,
                call.summary_exported,
                call.pending,
                call.last_event_ns,
                call.closed_ns,
                call.deployment_id,
                *((None, None, None) if t is None else (t.role, t.start_us, t.end_us)),
            ),
        )

    def stale_calls(self, silent_since_ns: int, limit: int) -> list[str]:
        rows = self._all(
            "SELECT call_id FROM calls WHERE closed_ns IS NULL AND last_event_ns < %s LIMIT %s",
            (silent_since_ns, limit),
        )
        return [r["call_id"] for r in rows]

    def forget_calls_closed_before(self, cutoff_ns: int, limit: int) -> int:
        old = [
            r["call_id"]
            for r in self._all("SELECT call_id FROM calls WHERE closed_ns < %s LIMIT %s", (cutoff_ns, limit))
        ]
        if old:
            for table in ("ledger", "turns", "calls"):
                query = sql.SQL("DELETE FROM {} WHERE call_id = ANY(%s)").format(sql.Identifier(table))
                self.conn.execute(query, (old,))
        return len(old)

    def open_calls(self) -> int:
        row = self._one("SELECT COUNT(*) AS n FROM calls WHERE closed_ns IS NULL")
        return int(row["n"]) if row else 0

    def keep_event(self, call_id: str, body: bytes) -> None:
        self._run("INSERT INTO call_events (call_id, body) VALUES (%s, %s)", (call_id, body))

    def kept_events(self, call_id: str) -> list[bytes]:
        rows = self._all("SELECT body FROM call_events WHERE call_id=%s ORDER BY id", (call_id,))
        return [bytes(r["body"]) for r in rows]

    def drop_kept_events(self, call_id: str) -> None:
        self._run("DELETE FROM call_events WHERE call_id=%s", (call_id,))

    def kept_events_with_ids(self, call_id: str) -> list[tuple[int, bytes]]:
        rows = self._all("SELECT id, body FROM call_events WHERE call_id=%s ORDER BY id", (call_id,))
        return [(int(r["id"]), bytes(r["body"])) for r in rows]

    def drop_kept_events_by_id(self, call_id: str, event_ids: Sequence[int]) -> None:
        if event_ids:
            self._run("DELETE FROM call_events WHERE call_id=%s AND id = ANY(%s)", (call_id, list(event_ids)))

    # --- turns ----------------------------------------------------------------------------
    def turns(self, call_id: str) -> list[TurnTiming]:
        rows = self._all("SELECT role, start_us, end_us FROM turns WHERE call_id=%s", (call_id,))
        return [_turn(r) for r in rows]

    def turns_starting_last_before(self, call_id: str, start_us: int) -> list[TurnTiming]:
        rows = self._all(
            "SELECT role, start_us, end_us FROM turns WHERE call_id=%s AND start_us = "
            "(SELECT MAX(start_us) FROM turns WHERE call_id=%s AND start_us < %s)",
            (call_id, call_id, start_us),
        )
        return [_turn(r) for r in rows]

    def remember_turns(self, call_id: str, turns: Sequence[TurnTiming]) -> None:
        self._many(
            "INSERT INTO turns (call_id, start_us, role, end_us) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            [(call_id, t.start_us, t.role, t.end_us) for t in turns],
        )

    # --- deployments ------------------------------------------------------------------------
    def deployments(self, agent_id: str) -> dict[str, int]:
        rows = self._all(
            "SELECT deployment_id, first_call_ns FROM deployments WHERE agent_id=%s", (agent_id,)
        )
        return {r["deployment_id"]: r["first_call_ns"] for r in rows}

    def set_deployment(self, agent_id: str, deployment_id: str, first_call_ns: int) -> None:
        self._run(
            "INSERT INTO deployments VALUES (%s, %s, %s) ON CONFLICT (agent_id, deployment_id) "
            "DO UPDATE SET first_call_ns=excluded.first_call_ns",
            (agent_id, deployment_id, first_call_ns),
        )

    def forget_deployment(self, agent_id: str, deployment_id: str) -> None:
        self._run("DELETE FROM deployments WHERE agent_id=%s AND deployment_id=%s", (agent_id, deployment_id))

    # --- ledger -----------------------------------------------------------------------------
    def exported(self, call_id: str) -> set[int]:
        rows = self._all("SELECT span_id FROM ledger WHERE call_id=%s", (call_id,))
        return {r["span_id"] & _UNSIGNED for r in rows}

    def newly_exported(self, call_id: str, span_ids: Sequence[int], now_ns: int) -> set[int]:
        if not span_ids:
            return set()
        rows = self._all(
            # RETURNING gives the rows inserted, not the ones skipped (already in the ledger)
            "INSERT INTO ledger (call_id, span_id, exported_ns) "
            "SELECT %s, unnest(%s::bigint[]), %s ON CONFLICT DO NOTHING RETURNING span_id",
            (call_id, [signed64(s) for s in span_ids], now_ns),
        )
        return {r["span_id"] & _UNSIGNED for r in rows}

    def record_exported(self, call_id: str, span_ids: Sequence[int], now_ns: int) -> None:
        if span_ids:
            self._run(
                "INSERT INTO ledger (call_id, span_id, exported_ns) "
                "SELECT %s, unnest(%s::bigint[]), %s ON CONFLICT DO NOTHING",
                (call_id, [signed64(s) for s in span_ids], now_ns),
            )

    def forget_ledger_without_call(
        self, after_call_id: str, exported_before_ns: int, limit: int
    ) -> tuple[int, str | None]:
        # The primary key's order, its index alone: a step reads the ids of `limit` calls, looks
        # each up in calls, and reads the spans of those that have no row (an index on
        # exported_ns would make every span's insert dearer for a sweep every 30 s). In steps:
        # a NOT EXISTS in one query was planned as a hash of every call, or of the whole ledger.
        walked = self._all(
            "WITH walked AS (SELECT DISTINCT call_id FROM ledger WHERE call_id > %s "
            "ORDER BY call_id LIMIT %s) "
            "SELECT walked.call_id, calls.call_id IS NULL AS unowned FROM walked "
            "LEFT JOIN calls ON calls.call_id = walked.call_id ORDER BY walked.call_id",
            (after_call_id, limit),
        )
        unowned = [r["call_id"] for r in walked if r["unowned"]]
        deleted = 0
        if unowned:
            old = self._all(
                "SELECT call_id FROM ledger WHERE call_id = ANY(%s) GROUP BY call_id "
                "HAVING MAX(exported_ns) < %s",
                (unowned, exported_before_ns),
            )
            if old:
                deleted = self._run(
                    "DELETE FROM ledger WHERE call_id = ANY(%s)", ([r["call_id"] for r in old],)
                )
        return deleted, walked[-1]["call_id"] if len(walked) == limit else None

    # --- points -----------------------------------------------------------------------------
    def add_point(self, point: str) -> int:
        row = self._one("INSERT INTO points (point) VALUES (%s) RETURNING id", (point,))
        assert row is not None
        return int(row["id"])

    def points(self) -> list[tuple[int, str]]:
        return [(r["id"], r["point"]) for r in self._all("SELECT id, point FROM points ORDER BY id")]

    def forget_points(self, through_id: int) -> None:
        self._run("DELETE FROM points WHERE id <= %s", (through_id,))

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
        # Spool ids commit in id order: the sender reads past the newest id it sent, and a
        # lower id committed after a higher one (another replica's metrics, the leader's
        # collection beside its processor) would be skipped. The lock is held to the commit.
        self._run("SELECT pg_advisory_xact_lock(%s)", (SPOOL_LOCK,))
        row = self._one(
            "INSERT INTO spool (signal, body, size, items, created_ns, call_ends, epoch) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (signal, body, len(body), items, now_ns, json.dumps(call_ends) if call_ends else None, epoch),
        )
        assert row is not None
        return int(row["id"])

    def spool_supersede_metrics(self, epoch: str, newest_id: int) -> int:
        return self._run(
            "DELETE FROM spool WHERE signal='metrics' AND epoch=%s AND id<%s", (epoch, newest_id)
        )

    def spool_expire(self, created_before_ns: int) -> list[tuple[str, int]]:
        rows = self._all(
            "DELETE FROM spool WHERE created_ns < %s RETURNING signal, items", (created_before_ns,)
        )
        return [(r["signal"], int(r["items"])) for r in rows]

    def spool_bytes(self) -> int:
        row = self._one("SELECT COALESCE(SUM(size), 0) AS bytes FROM spool")
        return int(row["bytes"]) if row else 0

    def spool_drop_oldest(self, excess_bytes: int) -> list[tuple[str, int]]:
        rows = self._all(
            "DELETE FROM spool WHERE id IN (SELECT id FROM (SELECT id, SUM(size) OVER (ORDER BY id) - size "
            "AS before FROM spool) s WHERE before < %s) RETURNING id, signal, items",
            (excess_bytes,),
        )
        rows.sort(key=lambda r: r["id"])
        return [(r["signal"], int(r["items"])) for r in rows]

    def spool_take(self, signal: Signal, max_bytes: int, after_id: int = 0) -> list[SpoolEntry]:
        # sizes first: a client-side cursor fetches its whole result, and a body is up to 2 MiB
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT id, size FROM spool WHERE signal=%s AND id > %s ORDER BY id LIMIT 1000",
                (signal, after_id),
            )
            ids = fitting_ids(((row["id"], row["size"]) for row in cur), max_bytes)
            if not ids:
                return []
            cur.execute(
                "SELECT id, signal, body, items, created_ns, attempts, call_ends FROM spool "
                "WHERE id = ANY(%s) ORDER BY id",
                (ids,),
            )
            rows = cur.fetchall()
        return [SpoolEntry.from_row(row) for row in rows]

    def spool_delete(self, entry_ids: Sequence[int]) -> None:
        self._run("DELETE FROM spool WHERE id = ANY(%s)", (list(entry_ids),))

    def spool_delete_acked(self, acked: Sequence[tuple[int, int]]) -> int:
        if not acked:
            return 0
        return self._run(
            "DELETE FROM spool s USING unnest(%s::bigint[], %s::bigint[]) AS a(id, created_ns) "
            "WHERE s.id = a.id AND s.created_ns = a.created_ns",
            ([a[0] for a in acked], [a[1] for a in acked]),
        )

    def spool_retried(self, entry_ids: Sequence[int], next_attempt_ns: int) -> None:
        self._run(
            "UPDATE spool SET attempts = attempts + 1, next_attempt_ns=%s WHERE id = ANY(%s)",
            (next_attempt_ns, list(entry_ids)),
        )

    def dead_letter(self, entry: SpoolEntry, now_ns: int, status: str, reason: str) -> None:
        self._run(
            "INSERT INTO dead_letters (signal, body, items, created_ns, failed_ns, status, reason) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (entry.signal, entry.body, entry.items, entry.created_ns, now_ns, status, reason[:500]),
        )
        self._run("DELETE FROM spool WHERE id=%s", (entry.id,))

    def purge_dead_letters(self, failed_before_ns: int) -> None:
        self._run("DELETE FROM dead_letters WHERE failed_ns < %s", (failed_before_ns,))

    def spool_stats(self) -> SpoolStats:
        depth = {"traces": 0, "metrics": 0}
        for row in self._all("SELECT signal, COUNT(*) AS n FROM spool GROUP BY signal"):
            depth[row["signal"]] = int(row["n"])
        totals = self._one(
            "SELECT COALESCE(SUM(size), 0) AS bytes, MIN(created_ns) AS oldest, "
            "(SELECT COUNT(*) FROM dead_letters) AS dead FROM spool"
        )
        assert totals is not None
        return SpoolStats(depth, int(totals["bytes"]), totals["oldest"], int(totals["dead"]))

    # --- cursors ----------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM otelbridge_meta WHERE key=%s", (key,))
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        self._run(
            "INSERT INTO otelbridge_meta VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    def poll_watermark(self, agent_id: str) -> PollWatermark:
        row = self._one(
            "SELECT watermark_id, watermark_start_ns FROM poll_agents WHERE agent_id=%s", (agent_id,)
        )
        if row is None:
            return PollWatermark(None, None)
        return PollWatermark(row["watermark_id"], row["watermark_start_ns"])

    def save_poll_watermark(self, agent_id: str, call_id: str, start_ns: int | None, polled_ns: int) -> None:
        self._run(
            "INSERT INTO poll_agents VALUES (%s, %s, %s, %s) ON CONFLICT (agent_id) DO UPDATE SET "
            "watermark_id=excluded.watermark_id, watermark_start_ns=excluded.watermark_start_ns, "
            "last_poll_ns=excluded.last_poll_ns",
            (agent_id, call_id, start_ns, polled_ns),
        )

    def remember_running(self, calls: Sequence[RunningCall]) -> None:
        self._many(
            "INSERT INTO running_calls VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            [(c.call_id, c.agent_id, c.first_seen_ns) for c in calls],
        )

    def running_calls(self) -> list[RunningCall]:
        rows = self._all("SELECT call_id, agent_id, first_seen_ns FROM running_calls")
        return [RunningCall(r["call_id"], r["agent_id"], r["first_seen_ns"]) for r in rows]

    def forget_running(self, call_id: str) -> None:
        self._run("DELETE FROM running_calls WHERE call_id=%s", (call_id,))

    def backfill_cursor(self, agent_id: str, span: str) -> BackfillCursor:
        row = self._one(
            "SELECT cursor, done, head_id, head_start_ns FROM backfill WHERE agent_id=%s AND range=%s",
            (agent_id, span),
        )
        if row is None:
            return BackfillCursor(None, False, None, None)
        return BackfillCursor(row["cursor"], row["done"], row["head_id"], row["head_start_ns"])

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
        self._run(
            _SAVE_BACKFILL_NEW_MARK if new_mark else _SAVE_BACKFILL,
            (agent_id, span, cursor, done, calls, head_id, head_start_ns),
        )


class PostgresState:
    """:class:`~otelbridge.store.api.StateStore`. With a ``fence``, every transaction first
    checks that the lease is still this process's (:class:`PostgresLease`)."""

    def __init__(self, db: Database, fence: PostgresLease | None = None) -> None:
        self.db = db
        self.fence = fence

    @contextmanager
    def transaction(self) -> Iterator[PostgresStateTx]:
        with _writes("the database cannot be written"), self.db.transaction() as conn:
            if self.fence is not None:
                self.fence.check(conn)
            yield PostgresStateTx(conn)

    @contextmanager
    def reading(self) -> Iterator[PostgresStateTx]:
        with self.db.connection() as conn:
            yield PostgresStateTx(conn)

    def probe(self) -> None:
        with _writes("the database cannot be written"), self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO otelbridge_meta VALUES ('probe', now()::text) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            )

    def close(self) -> None:
        self.db.close()


# --- the inbox -----------------------------------------------------------------------------------
class PostgresInboxStore:
    """:class:`~otelbridge.store.api.InboxStore` in the shared database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def append(self, rows: Sequence[NewRow], *, trim_through: int | None = None) -> bool:
        """One multi-row INSERT; a body already waiting is skipped. The processed rows are gone
        already (claiming deletes them): ``trim_through`` is unused."""
        if not rows:
            return True
        chunks = [rows[start : start + 1000] for start in range(0, len(rows), 1000)]
        with _writes("the database cannot be written"):
            if len(chunks) == 1:  # one statement in autocommit: atomic, one round trip
                with self.db.connection() as conn:
                    _insert_inbox(conn, chunks[0])
                return True
            with self.db.transaction() as conn:
                for chunk in chunks:
                    _insert_inbox(conn, chunk)
        return True

    def claim(self, tx: StateTx, limit: int, max_bytes: int) -> Claim:
        assert isinstance(tx, PostgresStateTx), (
            "the PostgreSQL inbox claims within the PostgreSQL state store"
        )
        rows: list[InboxRow] = []
        size = 0
        with tx.conn.cursor() as cur:
            cur.execute(
                "SELECT id, received_ns, body FROM inbox ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                (limit,),
            )
            for row in cur:
                body = bytes(row["body"])
                rows.append(InboxRow(row["id"], row["received_ns"], body))
                size += len(body)
                if size >= max_bytes:
                    break
        if rows:
            tx.conn.execute("DELETE FROM inbox WHERE id = ANY(%s)", ([r.id for r in rows],))
        return Claim(rows, rows[-1].id if rows else 0)

    def processed_through(self) -> int | None:
        return None

    def delete_through(self, last_id: int) -> None:
        """Nothing: claiming deleted the rows."""

    def checkpoint(self) -> None:
        """Nothing: the server checkpoints."""

    def backlog(self) -> int:
        with self.db.connection() as conn:
            row = conn.execute("SELECT COUNT(*) AS n FROM inbox").fetchone()
        return int(row["n"]) if row else 0

    def probe(self) -> None:
        with _writes("the database cannot be written"), self.db.transaction() as conn:
            conn.execute("SELECT 1 FROM inbox LIMIT 0")
            conn.execute(
                "INSERT INTO otelbridge_meta VALUES ('probe', now()::text) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            )

    def close(self) -> None:
        self.db.close()


def _insert_inbox(conn: psycopg.Connection[dict[str, Any]], rows: Sequence[NewRow]) -> None:
    values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(rows))
    params = [
        v
        for received_ns, event_type, call_id, body in rows
        for v in (received_ns, event_type, call_id, body, hashlib.sha256(body).digest())
    ]
    conn.execute(
        "INSERT INTO inbox (received_ns, event_type, call_id, body, digest) "  # noqa: S608 - placeholders
        f"VALUES {values} ON CONFLICT (digest) DO NOTHING",
        params,
    )


class PostgresAckLog:
    """:class:`~otelbridge.store.api.AckLog` in the shared database (its own transactions)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, acked: Sequence[SpoolEntry], forget: Sequence[int]) -> None:
        with _writes("the database cannot be written"), self.db.transaction() as conn:
            if acked:
                conn.execute(
                    "INSERT INTO acked SELECT * FROM unnest(%s::bigint[], %s::bigint[]) "
                    "ON CONFLICT (spool_id) DO UPDATE SET created_ns = excluded.created_ns",
                    ([e.id for e in acked], [e.created_ns for e in acked]),
                )
            if forget:
                conn.execute("DELETE FROM acked WHERE spool_id = ANY(%s)", (list(forget),))

    def acked(self) -> list[tuple[int, int]]:
        with self.db.connection() as conn:
            rows = conn.execute("SELECT spool_id, created_ns FROM acked").fetchall()
        return [(int(r["spool_id"]), int(r["created_ns"])) for r in rows]

    def forget(self, acked: Sequence[tuple[int, int]]) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM acked WHERE spool_id = ANY(%s)", ([a[0] for a in acked],))

    def close(self) -> None:
        self.db.close()


# --- the lease -----------------------------------------------------------------------------------
class PostgresLease:
    """A lease row, its time from the database clock. The holder id is fresh on every start
    (never a pod name: a restarted pod must not inherit what it held). It lives on a connection
    of its own, outside any pool."""

    def __init__(
        self, url: str, name: str, *, ttl_s: float = LEASE_TTL_S, application_name: str | None = None
    ) -> None:
        self.url = url
        self.application_name = application_name or f"otelbridge-lease-{name}"
        self.name = name
        self.ttl_s = ttl_s
        self.holder = f"{uuid.uuid4()}"
        self.epoch: int | None = None
        #: time.monotonic() after which this process no longer counts on the lease, whatever
        #: the database said (a renewal that never came back)
        self._valid_until = 0.0
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def _connection(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url, self.application_name)
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()

    def acquire(self, wait_s: float = 0.0) -> bool:
        deadline = time.monotonic() + wait_s
        while True:
            if self._try_acquire():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(LEASE_RENEW_S, max(0.0, deadline - time.monotonic())))

    def _try_acquire(self) -> bool:
        with self._lock:
            asked = time.monotonic()
            try:
                conn = self._connection()
                seen = conn.execute(
                    "SELECT holder, expires_at > clock_timestamp() AS live FROM leases WHERE name=%s",
                    (self.name,),
                ).fetchone()
                if seen is not None and seen["live"] and seen["holder"] != self.holder:
                    return False  # held: no need to queue behind the leader's transactions
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO leases (name, holder, epoch, expires_at) "
                        "VALUES (%s, '', 0, '-infinity') ON CONFLICT DO NOTHING",
                        (self.name,),
                    )
                    # FOR UPDATE waits for the old leader's transaction in flight (it holds the
                    # row FOR KEY SHARE): what it commits is committed before this takes over
                    row = conn.execute(
                        "SELECT holder, epoch, expires_at > clock_timestamp() AS live FROM leases "
                        "WHERE name=%s FOR UPDATE",
                        (self.name,),
                    ).fetchone()
                    assert row is not None
                    if row["live"] and row["holder"] != self.holder:
                        return False
                    taken = conn.execute(
                        "UPDATE leases SET holder=%s, epoch=epoch + 1, "
                        "expires_at=clock_timestamp() + make_interval(secs => %s) "
                        "WHERE name=%s RETURNING epoch",
                        (self.holder, self.ttl_s, self.name),
                    ).fetchone()
                    assert taken is not None
            except (psycopg.Error, StoreError) as exc:
                log.warning("lease %s: cannot reach the database (%s)", self.name, _first_line(exc))
                self._drop_connection()
                return False
            self.epoch = int(taken["epoch"])
            self._valid_until = asked + self.ttl_s
            return True

    def renew(self) -> bool:
        """Extend the lease; False (and the lease is given up) when it cannot be renewed."""
        with self._lock:
            if self.epoch is None:
                return False
            asked = time.monotonic()
            try:
                renewed = (
                    self._connection()
                    .execute(
                        "UPDATE leases SET expires_at=clock_timestamp() + make_interval(secs => %s) "
                        "WHERE name=%s AND holder=%s AND epoch=%s AND expires_at > clock_timestamp()",
                        (self.ttl_s, self.name, self.holder, self.epoch),
                    )
                    .rowcount
                )
            except (psycopg.Error, StoreError) as exc:
                log.warning("lease %s: renewal failed (%s)", self.name, _first_line(exc))
                self._drop_connection()
                renewed = 0
            if renewed != 1 or time.monotonic() > self._valid_until:
                self.epoch = None
                return False
            self._valid_until = asked + self.ttl_s
            return True

    @property
    def held(self) -> bool:
        return self.epoch is not None and time.monotonic() < self._valid_until

    def check(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        """Inside a leader transaction: the lease is still ours, and stays so until commit (a
        takeover's FOR UPDATE waits for this FOR KEY SHARE)."""
        epoch = self.epoch
        if epoch is None or time.monotonic() >= self._valid_until:
            raise LeaseLostError(f"this process no longer holds the {self.name} lease")
        row = conn.execute(
            "SELECT 1 FROM leases WHERE name=%s AND holder=%s AND epoch=%s "
            "AND expires_at > clock_timestamp() "
            "FOR KEY SHARE",
            (self.name, self.holder, epoch),
        ).fetchone()
        if row is None:
            raise LeaseLostError(f"this process no longer holds the {self.name} lease")

    def release(self) -> None:
        with self._lock:
            epoch, self.epoch = self.epoch, None
            if epoch is not None:
                with suppress(psycopg.Error, StoreError):  # else it expires by itself
                    self._connection().execute(
                        "UPDATE leases SET expires_at='-infinity' WHERE name=%s AND holder=%s AND epoch=%s",
                        (self.name, self.holder, epoch),
                    )
            self._drop_connection()


# --- the engine ----------------------------------------------------------------------------------
def server_version(url: str) -> int:
    with connect(url, "otelbridge-check") as conn:
        return int(conn.info.server_version)


def migrate(url: str) -> int:
    """Apply the missing migrations under a transaction-scoped advisory lock (replicas that
    start together migrate one at a time); the schema version. Migrations only add: an older
    replica keeps running beside a newer one during a rolling update."""
    with connect(url, "otelbridge-migrate") as conn:
        version = int(conn.info.server_version)
        if version < MIN_SERVER_VERSION:
            raise StoreError(
                f"the database server is PostgreSQL {version // 10000}; otelbridge needs 13 or newer. "
                "Fix: point OTELBRIDGE_DATABASE_URL at a newer server"
            )
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS otelbridge_schema "
                    "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                row = conn.execute("SELECT COALESCE(MAX(version), 0) AS v FROM otelbridge_schema").fetchone()
                current = int(row["v"]) if row else 0
                if current > SCHEMA_VERSION:
                    raise StoreError(
                        "the database was written by a newer otelbridge "
                        f"(schema {current} > {SCHEMA_VERSION}); "
                        "run that version, or point OTELBRIDGE_DATABASE_URL at another database"
                    )
                for number in range(current + 1, SCHEMA_VERSION + 1):
                    conn.execute(MIGRATIONS[number])
                    conn.execute("INSERT INTO otelbridge_schema (version) VALUES (%s)", (number,))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise StoreError(
                f"the database user may not create otelbridge's tables ({_first_line(exc)}). "
                "Fix: GRANT CREATE ON SCHEMA public (or ownership of the database) to the user of "
                "OTELBRIDGE_DATABASE_URL"
            ) from exc
        except psycopg.Error as exc:
            raise StoreError(f"cannot prepare the database: {_first_line(exc)}") from exc
        return SCHEMA_VERSION


class PostgresEngine:
    """The stores of one process, each on its own small pool; migrated when opened."""

    name: Final = "postgres"
    single_process: Final = False

    def __init__(self, url: str, *, role: str = "otelbridge") -> None:
        """Opens nothing yet: pools connect when first used, so a replica starts (and answers
        its probes) while the database is down."""
        self.url = url
        #: in every connection's application_name, with the pid: pg_stat_activity tells
        #: replicas and their processes apart
        self.role = f"{role}-{os.getpid()}"
        self.schema_version: int | None = None

    def ensure_schema(self) -> int:
        """Migrate once per process (DatabaseUnreachableError: try again later)."""
        if self.schema_version is None:
            self.schema_version = migrate(self.url)
        return self.schema_version

    def state(self, *, fence: Lease | None = None) -> PostgresState:
        assert fence is None or isinstance(fence, PostgresLease)
        return PostgresState(Database(self.url, f"otelbridge-{self.role}-state"), fence)

    def state_reader(self) -> PostgresState:
        return PostgresState(Database(self.url, f"otelbridge-{self.role}-reader", max_size=2))

    def inbox(self, *, receiving: bool = False) -> PostgresInboxStore:
        # a webhook waits for a connection briefly: with the database down, 503 at once (the
        # caller retries) rather than after the receiver's store timeout
        return PostgresInboxStore(
            Database(self.url, f"otelbridge-{self.role}-inbox", max_size=2, timeout_s=2.0, check=False)
        )

    def acks(self) -> PostgresAckLog:
        return PostgresAckLog(Database(self.url, f"otelbridge-{self.role}-acks", max_size=1))

    def lease(self, name: str) -> PostgresLease:
        return PostgresLease(self.url, name, application_name=f"otelbridge-{self.role}-lease")


def describe(url: str) -> tuple[bool, str]:
    """For ``otelbridge check``: whether the database can be used, and one line saying what was
    found (server and schema versions) or what is missing, with the fix. Changes nothing."""
    try:
        conn = connect(url, "otelbridge-check")
    except StoreError as exc:
        reason = str(exc)
        if "password authentication failed" in reason or "no password supplied" in reason:
            fix = "check the user and password in OTELBRIDGE_DATABASE_URL"
        elif "does not exist" in reason:
            fix = "create the database, or name an existing one in OTELBRIDGE_DATABASE_URL"
        else:
            fix = "check the host and port in OTELBRIDGE_DATABASE_URL, and that this pod may reach them"
        return False, f"{reason}. Fix: {fix}"
    with conn:
        info = conn.info
        where = f"{info.host}:{info.port}/{info.dbname} as {info.user}"
        version = int(info.server_version)
        server = f"PostgreSQL {version // 10000}.{version % 10000}"
        if version < MIN_SERVER_VERSION:
            return (
                False,
                f"{where}: {server} is too old; otelbridge needs 13 or newer. Fix: use a newer server",
            )
        row = conn.execute("SELECT to_regclass('otelbridge_schema') IS NOT NULL AS made").fetchone()
        if row is None or not row["made"]:
            can = conn.execute("SELECT has_schema_privilege(current_schema(), 'CREATE') AS can").fetchone()
            if can is None or not can["can"]:
                return False, (
                    f"{where}: {server}; otelbridge's tables are not there and this user may not create "
                    f"them. Fix: GRANT CREATE ON SCHEMA public TO {info.user} (or make it the database owner)"
                )
            return (
                True,
                f"{where}: {server}; no schema yet (schema {SCHEMA_VERSION} is created at the first start)",
            )
        writable = conn.execute(
            "SELECT has_table_privilege('otelbridge_schema', 'SELECT') "
            "AND has_table_privilege('inbox', 'INSERT, DELETE') "
            "AND has_table_privilege('spool', 'INSERT, DELETE, UPDATE') "
            "AND has_table_privilege('leases', 'INSERT, UPDATE') AS ok"
        ).fetchone()
        if writable is None or not writable["ok"]:
            return False, (
                f"{where}: {server}; otelbridge's tables are there, but this user may not write them. "
                f"Fix: GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {info.user}"
            )
        current = conn.execute("SELECT COALESCE(MAX(version), 0) AS v FROM otelbridge_schema").fetchone()
        schema = int(current["v"]) if current else 0
        if schema > SCHEMA_VERSION:
            return False, (
                f"{where}: {server}; schema {schema} was written by a newer otelbridge (this one: "
                f"{SCHEMA_VERSION}). Fix: run that version"
            )
        return True, f"{where}: {server}; schema {schema} (this otelbridge: {SCHEMA_VERSION}); writable"
