"""The spool: encoded OTLP requests waiting for the backend, in ``state.db``.

Requests are added inside the processor's transaction (together with the ledger entries of
their spans), so a request is spooled exactly when its spans are marked exported. The sender
takes them oldest first per signal; a 2xx is recorded at once in ``acks.db``, then deletes; a
retryable answer reschedules, any other answer moves the request to ``dead_letters``. Caps:
``max_bytes`` (the oldest requests are dropped beyond it) and ``max_age_ns`` (older requests
are dropped); every drop is counted and logged loudly by the caller.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from otelbridge.delivery.environment import SIGNALS, Signal

DropReason = Literal["size", "age"]
DROP_REASONS: Final[tuple[DropReason, ...]] = get_args(DropReason)


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    id: int
    signal: Signal
    body: bytes
    items: int
    created_ns: int
    attempts: int
    call_ends: list[int]


@dataclass(slots=True)
class Dropped:
    """Requests dropped by the caps: (signal, reason) -> (requests, items)."""

    by: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def add(self, signal: str, reason: str, items: int) -> None:
        counts = self.by.setdefault((signal, reason), [0, 0])
        counts[0] += 1
        counts[1] += items

    def __bool__(self) -> bool:
        return bool(self.by)


@dataclass(frozen=True, slots=True)
class SpoolStats:
    depth: dict[str, int]
    bytes: int
    oldest_ns: int | None
    dead_letters: int


class Spool:
    def __init__(self, *, max_bytes: int, max_age_ns: int) -> None:
        self.max_bytes = max_bytes
        self.max_age_ns = max_age_ns

    # --- producer side (inside the caller's transaction) ------------------------------
    def add(
        self,
        conn: sqlite3.Connection,
        signal: Signal,
        body: bytes,
        items: int,
        now_ns: int,
        *,
        call_ends: list[int] | None = None,
        epoch: str | None = None,
    ) -> int:
        cur = conn.execute(
            "INSERT INTO spool (signal, body, size, items, created_ns, call_ends, epoch) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (signal, body, len(body), items, now_ns, json.dumps(call_ends) if call_ends else None, epoch),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def supersede_metrics(self, conn: sqlite3.Connection, epoch: str, newest_id: int) -> int:
        """Cumulative metrics: a newer request of the same process holds everything older
        unsent ones hold, so those are deleted (not dropped: nothing is lost)."""
        cur = conn.execute(
            "DELETE FROM spool WHERE signal='metrics' AND epoch=? AND id<?", (epoch, newest_id)
        )
        return cur.rowcount

    def enforce_caps(self, conn: sqlite3.Connection, now_ns: int) -> Dropped:
        dropped = Dropped()
        for signal, items in conn.execute(
            "SELECT signal, items FROM spool WHERE created_ns < ?", (now_ns - self.max_age_ns,)
        ).fetchall():
            dropped.add(signal, "age", items)
        if dropped:
            conn.execute("DELETE FROM spool WHERE created_ns < ?", (now_ns - self.max_age_ns,))
        total = spool_bytes(conn)
        if total > self.max_bytes:
            excess = total - self.max_bytes
            victims = []
            for entry_id, signal, size, items in conn.execute(
                "SELECT id, signal, size, items FROM spool ORDER BY id"
            ):
                if excess <= 0:
                    break
                victims.append(entry_id)
                excess -= size
                dropped.add(signal, "size", items)
            conn.executemany("DELETE FROM spool WHERE id=?", [(v,) for v in victims])
        return dropped

    # --- sender side -----------------------------------------------------------------
    def take(self, conn: sqlite3.Connection, signal: Signal, *, max_bytes: int) -> list[SpoolEntry]:
        """The oldest requests of ``signal``: the first one, then the next ones while their
        bodies add up to at most ``max_bytes``. Serialized ``Export*ServiceRequest`` messages
        concatenate into one valid request (protobuf appends repeated fields), so the sender
        sends them as one when a backlog has formed."""
        entries: list[SpoolEntry] = []
        total = 0
        cursor = conn.execute(
            "SELECT id, signal, body, items, created_ns, attempts, call_ends, size FROM spool "
            "WHERE signal=? ORDER BY id",
            (signal,),
        )
        for row in cursor:
            total += row[7]
            if entries and total > max_bytes:
                break
            ends = json.loads(row[6] or "[]")
            entries.append(SpoolEntry(row[0], row[1], bytes(row[2]), row[3], row[4], row[5], ends))
        cursor.close()
        return entries

    def delete(self, conn: sqlite3.Connection, *entry_ids: int) -> None:
        conn.executemany("DELETE FROM spool WHERE id=?", [(i,) for i in entry_ids])

    # --- acknowledgements (acks.db, see store.ACKS_SCHEMA) -----------------------------
    @staticmethod
    def record_acked(acks: sqlite3.Connection, entries: list[SpoolEntry], forget: list[int]) -> None:
        """In ``acks.db``: ``entries`` were acknowledged; ``forget`` were since deleted from the
        spool (forgotten here in the same commit: one sync per export)."""
        acks.executemany(
            "INSERT OR REPLACE INTO acked (spool_id, created_ns) VALUES (?, ?)",
            [(e.id, e.created_ns) for e in entries],
        )
        acks.executemany("DELETE FROM acked WHERE spool_id=?", [(i,) for i in forget])

    @staticmethod
    def acked(acks: sqlite3.Connection) -> list[tuple[int, int]]:
        return [(int(i), int(c)) for i, c in acks.execute("SELECT spool_id, created_ns FROM acked")]

    def delete_acked(self, conn: sqlite3.Connection, acked: list[tuple[int, int]]) -> int:
        """Delete the spool rows a backend acknowledged before a crash left them; their count."""
        deleted = 0
        for spool_id, created_ns in acked:
            deleted += conn.execute(
                "DELETE FROM spool WHERE id=? AND created_ns=?", (spool_id, created_ns)
            ).rowcount
        return deleted

    @staticmethod
    def forget_acked(acks: sqlite3.Connection, acked: list[tuple[int, int]]) -> None:
        acks.executemany("DELETE FROM acked WHERE spool_id=?", [(i,) for i, _ in acked])

    def retried(self, conn: sqlite3.Connection, next_attempt_ns: int, *entry_ids: int) -> None:
        conn.executemany(
            "UPDATE spool SET attempts = attempts + 1, next_attempt_ns=? WHERE id=?",
            [(next_attempt_ns, i) for i in entry_ids],
        )

    def dead_letter(
        self, conn: sqlite3.Connection, entry: SpoolEntry, now_ns: int, status: str, reason: str
    ) -> None:
        conn.execute(
            "INSERT INTO dead_letters (signal, body, items, created_ns, failed_ns, status, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (entry.signal, entry.body, entry.items, entry.created_ns, now_ns, status, reason[:500]),
        )
        conn.execute("DELETE FROM spool WHERE id=?", (entry.id,))

    def stats(self, conn: sqlite3.Connection) -> SpoolStats:
        depth: dict[str, int] = dict.fromkeys(SIGNALS, 0)
        for signal, count in conn.execute("SELECT signal, COUNT(*) FROM spool GROUP BY signal"):
            depth[signal] = count
        size = spool_bytes(conn)
        oldest = conn.execute("SELECT MIN(created_ns) FROM spool").fetchone()[0]
        dead = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        return SpoolStats(depth, size, oldest, dead)


def spool_bytes(conn: sqlite3.Connection) -> int:
    """Total body bytes in the spool (kept by the schema's triggers, not summed)."""
    return int(conn.execute("SELECT bytes FROM spool_total WHERE id = 1").fetchone()[0])
