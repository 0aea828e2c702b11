"""The daemon's durable state behind one seam.

:mod:`otelbridge.store.api` says what the rest of the code asks of storage (typed Protocols
and rows); :mod:`otelbridge.store.sqlite` is the embedded engine (SQLite files in
``OTELBRIDGE_STATE_DIR``); :mod:`otelbridge.store.files` keeps that directory private and
watches its free space; :mod:`otelbridge.store.lease` gives one process at a time a role.
No SQL and no database driver outside this package.
"""

import logging
from pathlib import Path
from urllib.parse import unquote, urlsplit

from otelbridge.store.api import (
    DROP_REASONS,
    AckLog,
    BackfillCursor,
    CallRow,
    Claim,
    Dropped,
    DropReason,
    Engine,
    InboxRow,
    InboxStore,
    Lease,
    NewRow,
    PollWatermark,
    RunningCall,
    SpoolEntry,
    SpoolStats,
    StateStore,
    StateTx,
    StoreWriteError,
)
from otelbridge.store.files import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    STATE_FILES,
    DatabaseUnreachableError,
    FreeSpace,
    StoreError,
    ensure_state_dir,
    free_bytes,
    open_private,
)
from otelbridge.store.lease import FileLease
from otelbridge.store.sqlite import (
    WEBHOOK_SIDE_AUTOCHECKPOINT_PAGES,
    SqliteEngine,
    acks_path,
    inbox_path,
    open_acks,
    open_inbox,
    open_state,
    open_state_reader,
    read_inbox_watermark,
    state_path,
)

__all__ = [
    "DROP_REASONS",
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "STATE_FILES",
    "WEBHOOK_SIDE_AUTOCHECKPOINT_PAGES",
    "AckLog",
    "BackfillCursor",
    "CallRow",
    "Claim",
    "DatabaseUnreachableError",
    "DropReason",
    "Dropped",
    "Engine",
    "FileLease",
    "FreeSpace",
    "InboxRow",
    "InboxStore",
    "Lease",
    "NewRow",
    "PollWatermark",
    "RunningCall",
    "SpoolEntry",
    "SpoolStats",
    "SqliteEngine",
    "StateStore",
    "StateTx",
    "StoreError",
    "StoreWriteError",
    "acks_path",
    "database_secrets",
    "ensure_state_dir",
    "free_bytes",
    "inbox_path",
    "open_acks",
    "open_engine",
    "open_inbox",
    "open_private",
    "open_state",
    "open_state_reader",
    "read_inbox_watermark",
    "state_path",
]


def open_engine(state_dir: Path, database_url: str | None = None, *, role: str = "otelbridge") -> Engine:
    """SQLite in ``state_dir``, or PostgreSQL at ``database_url`` (migrated on the way): a
    StoreError naming the fix when the driver is missing or the database cannot be used."""
    if not database_url:
        return SqliteEngine(state_dir)
    try:
        from otelbridge.store.postgres import PostgresEngine
    except ImportError:
        raise StoreError(
            "OTELBRIDGE_DATABASE_URL is set but the PostgreSQL driver is not installed. "
            "Fix: pip install 'otelbridge[postgres]' (the container image has it)"
        ) from None
    engine = PostgresEngine(database_url, role=role)
    try:
        engine.ensure_schema()
    except DatabaseUnreachableError as exc:  # start anyway: 503 and not ready until it answers
        logging.getLogger("otelbridge.store").warning("%s; the schema is checked once it answers", exc)
    return engine


def database_secrets(database_url: str | None) -> list[str]:
    """What of a database URI must never be logged: its password (as written and decoded) and
    the whole URI."""
    if not database_url:
        return []
    try:
        password = urlsplit(database_url).password
    except ValueError:
        password = None
    found = [database_url]
    if password:
        found += [password, unquote(password)]
    return sorted(set(found), key=len, reverse=True)
