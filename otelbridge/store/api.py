"""What the rest of otelbridge asks of storage: typed Protocols and the rows they carry.

An engine (:mod:`otelbridge.store.sqlite`) implements them; nothing outside ``otelbridge/store``
writes SQL or imports a driver. Every write of the processing side happens inside one
:class:`StateTx`, the unit of work: a crash leaves all of it or none of it.

    receiver ─► InboxStore (group-committed webhook bodies)
    processor ─► StateStore.transaction() ─► StateTx: calls, kept events, turns, deployments,
                 ledger, points, spool, dead letters, cursors, the inbox watermark
    sender ─► StateStore (its reader: take; its writer: delete, retry, dead-letter) + AckLog
    daemon, pipeline, backfill ─► Lease (one holder at a time)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, get_args

from otelbridge.mapping.latency import TurnTiming

if TYPE_CHECKING:
    from otelbridge.delivery.environment import Signal

#: an inbox row to append: received_ns, event type, call id, body
NewRow = tuple[int, str, str, bytes]

DropReason = Literal["size", "age"]
DROP_REASONS: Final[tuple[DropReason, ...]] = get_args(DropReason)


class StoreWriteError(Exception):
    """A write the engine could not commit (the cause is chained). ``full``: the volume or
    database is out of space, which the receiver tells its caller apart."""

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.full = full


# --- rows -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class InboxRow:
    id: int
    received_ns: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Claim:
    """Inbox rows taken by one unit of work; ``through``: the engine's position after them
    (what may be deleted once the unit commits)."""

    rows: list[InboxRow]
    through: int


@dataclass(slots=True)
class CallRow:
    """A call the processor has heard of (table ``calls``)."""

    call_id: str
    agent_id: str
    agent_name: str | None = None
    start_ns: int | None = None  # the anchor turn offsets add to, once known
    root_exported: bool = False
    summary_exported: bool = False
    pending: bool = False  # events kept in call_events
    last_event_ns: int = 0  # wall clock of the latest delivery (timeouts)
    closed_ns: int | None = None  # when the root went out
    deployment_id: str | None = None
    #: the latest (by start) of the turns received: the predecessor of a turn that starts
    #: after it, read without a query (turns mostly arrive in start order)
    latest_turn: TurnTiming | None = None


class _Row(Protocol):
    """A result row read by column name (``sqlite3.Row``, psycopg's ``dict_row``)."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    id: int
    signal: Signal
    body: bytes
    items: int
    created_ns: int
    attempts: int
    call_ends: list[int]

    @classmethod
    def from_row(cls, row: _Row) -> SpoolEntry:
        """An entry from a spool row (either engine's: ``call_ends`` is stored as JSON text)."""
        return cls(
            row["id"], row["signal"], bytes(row["body"]), int(row["items"]), row["created_ns"],
            row["attempts"], json.loads(row["call_ends"] or "[]"),
        )  # fmt: skip


def fitting_ids(sizes: Iterable[tuple[int, int]], max_bytes: int) -> list[int]:
    """The ids of the oldest (id, size) rows whose sizes add up to at most ``max_bytes`` (always
    at least one row): a spool take reads sizes first, and a body only once it fits."""
    ids: list[int] = []
    total = 0
    for row_id, size in sizes:
        total += size
        if ids and total > max_bytes:
            break
        ids.append(row_id)
    return ids


@dataclass(slots=True)
class Dropped:
    """Requests dropped by the spool's caps: (signal, reason) -> (requests, items)."""

    by: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def add(self, signal: str, reason: str, items: int) -> None:
        counts = self.by.setdefault((signal, reason), [0, 0])
        counts[0] += 1
        counts[1] += items

    def merge(self, other: Dropped) -> None:
        for key, (requests, items) in other.by.items():
            counts = self.by.setdefault(key, [0, 0])
            counts[0] += requests
            counts[1] += items

    def __bool__(self) -> bool:
        return bool(self.by)


@dataclass(frozen=True, slots=True)
class SpoolStats:
    depth: dict[str, int]
    bytes: int
    oldest_ns: int | None
    dead_letters: int


@dataclass(frozen=True, slots=True)
class PollWatermark:
    """The newest call of an agent's last complete poll."""

    call_id: str | None
    start_ns: int | None


@dataclass(frozen=True, slots=True)
class RunningCall:
    """A call listed unfinished: re-read until final."""

    call_id: str
    agent_id: str
    first_seen_ns: int


@dataclass(frozen=True, slots=True)
class BackfillCursor:
    cursor: str | None
    done: bool
    head_id: str | None
    head_start_ns: int | None


# --- the unit of work, by concern ---------------------------------------------------------------
class CallsTx(Protocol):
    def load_call(self, call_id: str) -> CallRow | None: ...
    def save_call(self, call: CallRow) -> None: ...
    def stale_calls(self, silent_since_ns: int, limit: int) -> list[str]:
        """Open calls that heard nothing since ``silent_since_ns``."""
        ...

    def forget_calls_closed_before(self, cutoff_ns: int, limit: int) -> int:
        """Delete calls closed before ``cutoff_ns`` with their ledger and turns; how many."""
        ...

    def open_calls(self) -> int: ...
    def keep_event(self, call_id: str, body: bytes) -> None: ...
    def kept_events(self, call_id: str) -> list[bytes]:
        """The events kept for a call, in the order they were kept."""
        ...

    def drop_kept_events(self, call_id: str) -> None: ...
    def kept_events_with_ids(self, call_id: str) -> list[tuple[int, bytes]]:
        """(id, body) of the events kept for a call, in the order they were kept."""
        ...

    def drop_kept_events_by_id(self, call_id: str, event_ids: Sequence[int]) -> None:
        """Delete some of a call's kept events (a polled copy a newer one supersedes)."""
        ...


class TurnsTx(Protocol):
    def turns(self, call_id: str) -> list[TurnTiming]: ...
    def turns_starting_last_before(self, call_id: str, start_us: int) -> list[TurnTiming]:
        """The call's turns whose start is the latest one before ``start_us``."""
        ...

    def remember_turns(self, call_id: str, turns: Sequence[TurnTiming]) -> None:
        """Add turns; one already known (call, start, role) stays as it is."""
        ...


class DeploymentsTx(Protocol):
    def deployments(self, agent_id: str) -> dict[str, int]:
        """Deployment id -> start of its first call seen."""
        ...

    def set_deployment(self, agent_id: str, deployment_id: str, first_call_ns: int) -> None: ...

    def forget_deployment(self, agent_id: str, deployment_id: str) -> None: ...


class LedgerTx(Protocol):
    def exported(self, call_id: str) -> set[int]:
        """The span ids (unsigned 64-bit) exported for a call."""
        ...

    def newly_exported(self, call_id: str, span_ids: Sequence[int], now_ns: int) -> set[int]:
        """Record ``span_ids`` as exported; those that were not before. One statement for a
        streamed turn's spans (never the call's whole ledger)."""
        ...

    def record_exported(self, call_id: str, span_ids: Sequence[int], now_ns: int) -> None: ...

    def forget_ledger_without_call(
        self, after_call_id: str, exported_before_ns: int, limit: int
    ) -> tuple[int, str | None]:
        """One step of a walk over the ledger's calls in id order: of the next ``limit`` after
        ``after_call_id``, forget the ledger of those with no call row whose last span went out
        before ``exported_before_ns`` (an evaluation's, whose call was never heard of or is
        forgotten). (rows deleted, the last call walked; None once the walk is through.)"""
        ...


class PointsTx(Protocol):
    def add_point(self, point: str) -> int:
        """Store a row of metric points (JSON) until it is in a spooled metrics request; its id
        (increasing)."""
        ...

    def points(self) -> list[tuple[int, str]]: ...
    def forget_points(self, through_id: int) -> None: ...


class SpoolTx(Protocol):
    def spool_add(
        self,
        signal: Signal,
        body: bytes,
        items: int,
        now_ns: int,
        *,
        call_ends: list[int] | None = None,
        epoch: str | None = None,
    ) -> int: ...
    def spool_supersede_metrics(self, epoch: str, newest_id: int) -> int:
        """Delete the unsent metrics requests of ``epoch`` older than ``newest_id``; how many."""
        ...

    def spool_expire(self, created_before_ns: int) -> list[tuple[str, int]]:
        """Delete requests created before the cutoff; (signal, items) of each."""
        ...

    def spool_bytes(self) -> int: ...
    def spool_drop_oldest(self, excess_bytes: int) -> list[tuple[str, int]]:
        """Delete the oldest requests until ``excess_bytes`` are freed; (signal, items) of each."""
        ...

    def spool_take(self, signal: Signal, max_bytes: int, after_id: int = 0) -> list[SpoolEntry]:
        """The oldest requests of ``signal`` past ``after_id``: the first, then more while their
        bodies add up to at most ``max_bytes``."""
        ...

    def spool_delete(self, entry_ids: Sequence[int]) -> None: ...
    def spool_delete_acked(self, acked: Sequence[tuple[int, int]]) -> int:
        """Delete the rows ``(id, created_ns)`` a backend acknowledged; how many were there."""
        ...

    def spool_retried(self, entry_ids: Sequence[int], next_attempt_ns: int) -> None: ...
    def dead_letter(self, entry: SpoolEntry, now_ns: int, status: str, reason: str) -> None:
        """Move a request from the spool to the dead letters."""
        ...

    def purge_dead_letters(self, failed_before_ns: int) -> None: ...
    def spool_stats(self) -> SpoolStats: ...


class CursorsTx(Protocol):
    """Where polling and backfill stand, and small named values."""

    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def poll_watermark(self, agent_id: str) -> PollWatermark: ...
    def save_poll_watermark(
        self, agent_id: str, call_id: str, start_ns: int | None, polled_ns: int
    ) -> None: ...
    def remember_running(self, calls: Sequence[RunningCall]) -> None: ...
    def running_calls(self) -> list[RunningCall]: ...
    def forget_running(self, call_id: str) -> None: ...
    def backfill_cursor(self, agent_id: str, span: str) -> BackfillCursor: ...
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
        """Save a backfill's cursor after a stored page; ``calls`` adds up. The mark (head) is
        set once; a finished catch-up (``new_mark``) moves it."""
        ...


class StateTx(CallsTx, TurnsTx, DeploymentsTx, LedgerTx, PointsTx, SpoolTx, CursorsTx, Protocol):
    """Everything derived from the inbox, changed together: one transaction."""

    def savepoint(self) -> AbstractContextManager[None]:
        """A nested scope: an exception inside undoes only what was done inside (and is
        raised again)."""
        ...


# --- stores ---------------------------------------------------------------------------------------
class StateStore(Protocol):
    def transaction(self) -> AbstractContextManager[StateTx]:
        """One transaction: committed at the end, rolled back on any exception."""
        ...

    def reading(self) -> AbstractContextManager[StateTx]:
        """Reads (a writer connection's reads are the caller's own)."""
        ...

    def probe(self) -> None:
        """A real write, committed: raises StoreWriteError when writing fails."""
        ...

    def close(self) -> None: ...


class InboxStore(Protocol):
    def append(self, rows: Sequence[NewRow], *, trim_through: int | None = None) -> bool:
        """Append rows in one commit, and delete in it the processed rows up to ``trim_through``
        (where the engine trims that way; it may leave some for the next commits, to keep each
        one short); True when none up to ``trim_through`` is left. StoreWriteError when it
        cannot be committed."""
        ...

    def claim(self, tx: StateTx, limit: int, max_bytes: int) -> Claim:
        """Up to ``limit`` unprocessed rows in receipt order, stopping once ``max_bytes`` of
        bodies are read (at least one row), taken inside ``tx``: they are processed when it
        commits, and a row committed late by a concurrent writer is never skipped."""
        ...

    def processed_through(self) -> int | None:
        """The position processing has reached, for trimming from the receiving side; None
        when the engine deletes rows as it claims them (or nothing was processed yet)."""
        ...

    def delete_through(self, last_id: int) -> None:
        """Delete processed rows up to ``last_id`` (nothing where claiming deletes)."""
        ...

    def checkpoint(self) -> None:
        """Move logged writes into the main file where the engine has such a step."""
        ...

    def backlog(self) -> int:
        """Rows received and not yet processed."""
        ...

    def probe(self) -> None: ...
    def close(self) -> None: ...


class AckLog(Protocol):
    """The spool rows a backend acknowledged, recorded the moment the 2xx arrives and before
    the spool row is deleted: a crash in between sends nothing twice."""

    def record(self, acked: Sequence[SpoolEntry], forget: Sequence[int]) -> None:
        """Record ``acked``; forget ``forget`` (since deleted from the spool), in one commit."""
        ...

    def acked(self) -> list[tuple[int, int]]:
        """(spool id, created_ns) of every acknowledgement recorded."""
        ...

    def forget(self, acked: Sequence[tuple[int, int]]) -> None: ...
    def close(self) -> None: ...


class Lease(Protocol):
    """One holder at a time (serve, the pipeline)."""

    def acquire(self, wait_s: float = 0.0) -> bool:
        """Take the lease, waiting up to ``wait_s``; False when another holder keeps it."""
        ...

    def renew(self) -> bool:
        """Keep the lease; False when it was lost (the holder must stop acting on it)."""
        ...

    @property
    def held(self) -> bool: ...
    def release(self) -> None: ...


class Engine(Protocol):
    """One storage engine: opens the stores each component uses."""

    @property
    def name(self) -> str: ...
    @property
    def single_process(self) -> bool:
        """True when one ``serve`` owns the state (a local directory): a second is refused."""
        ...

    def ensure_schema(self) -> int:
        """Create or migrate what the engine keeps; its schema version. Raises
        DatabaseUnreachableError while a database cannot be reached (try again), StoreError when
        it can never work as it is (privileges, a newer schema)."""
        ...

    def state(self, *, fence: Lease | None = None) -> StateStore:
        """The processing side's store; with ``fence``, each transaction first checks that the
        lease is still held (where the engine can lose it while running)."""
        ...

    def state_reader(self) -> StateStore:
        """A second state store for reads that must not queue behind the writer (the sender's)."""
        ...

    def inbox(self, *, receiving: bool = False) -> InboxStore:
        """``receiving``: for the webhook side (every replica), else the processing side."""
        ...

    def acks(self) -> AckLog: ...
    def lease(self, name: str) -> Lease: ...
