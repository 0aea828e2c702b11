"""The state store on real SQLite files: opening, schema versions, columns added later."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from otelbridge.store import SCHEMA_VERSION, StoreError, open_state, state_path


def test_a_store_from_before_the_backfill_mark_gets_its_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    db = open_state(tmp_path)
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO backfill (agent_id, range, cursor, done, calls) VALUES ('a', '..', 'c', 1, 7)"
        )
        conn.execute("ALTER TABLE backfill DROP COLUMN head_id")
        conn.execute("ALTER TABLE backfill DROP COLUMN head_start_ns")
    db.close()

    db = open_state(tmp_path)
    with db.reading() as conn:
        rows = conn.execute(
            "SELECT agent_id, cursor, done, calls, head_id, head_start_ns FROM backfill"
        ).fetchall()
    db.close()
    assert rows == [("a", "c", 1, 7, None, None)]


def test_a_store_written_by_a_newer_version_is_refused_by_name(tmp_path: Path) -> None:
    open_state(tmp_path).close()
    conn = sqlite3.connect(state_path(tmp_path))
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    newer = rf"written by a newer otelbridge \(schema {SCHEMA_VERSION + 1} > {SCHEMA_VERSION}\)"
    with pytest.raises(StoreError, match=newer):
        open_state(tmp_path)
