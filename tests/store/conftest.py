"""The engines the contract suite runs against: SQLite files in a temporary directory, and a
fresh database on the session's real PostgreSQL server (skipped where PostgreSQL is not
installed; CI installs it and makes the skip a failure)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from otelbridge.store.api import Engine


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        from otelbridge.store.sqlite import SqliteEngine

        yield SqliteEngine(tmp_path / "state")
        return
    url: str = request.getfixturevalue("postgres_url")
    from otelbridge.store.postgres import PostgresEngine

    engine = PostgresEngine(url)
    engine.ensure_schema()
    yield engine
