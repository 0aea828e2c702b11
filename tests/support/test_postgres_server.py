"""The throwaway PostgreSQL server of tests/support/postgres.py, against the real thing: what the
tests built on it take for granted (a non-superuser role, separate databases, committed data
surviving a crash, disconnects on demand)."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.postgres import PostgresServer, require_postgres_bin


def test_url_connects_and_queries(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.url) as conn:
        row = conn.execute("SELECT current_user, current_database(), 1 + 1").fetchone()
    assert row == ("otelbridge", "otelbridge", 2)
    assert postgres_server.url.startswith("postgresql://otelbridge:")
    assert f"@127.0.0.1:{postgres_server.port}/otelbridge" in postgres_server.url


def test_role_is_not_a_superuser(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, False, False)
        # ...but owns its database: it can create tables in it
        conn.execute("CREATE TABLE t (x int)")


def test_create_database_gives_separate_databases(postgres_server: PostgresServer) -> None:
    first = postgres_server.create_database("separate_a")
    second = postgres_server.create_database("separate_b")
    try:
        assert first != second
        with psycopg.connect(first) as conn:
            conn.execute("CREATE TABLE only_in_a (x int)")
        with psycopg.connect(second) as conn:
            assert conn.execute("SELECT to_regclass('only_in_a')").fetchone() == (None,)
            owner = conn.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
            ).fetchone()
            assert owner == ("otelbridge",)
    finally:
        postgres_server.drop_database("separate_a")
        postgres_server.drop_database("separate_b")


def test_postgres_url_is_fresh_per_test(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables == (0,)


def test_stop_immediate_then_start_keeps_committed_data() -> None:
    # A server of its own: the session's must keep running for the other tests.
    with PostgresServer(require_postgres_bin()) as server:
        url, port = server.url, server.port
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        server.stop_immediate()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)
        server.start()
        assert (server.url, server.port) == (url, port)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]
        assert "not properly shut down" in server.log_file.read_text()  # it was a crash
        base = server.base
    assert not base.exists()


def test_terminate_backends_kills_an_open_connection(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    victim = psycopg.connect(postgres_url, application_name="otelbridge-victim", autocommit=True)
    bystander = psycopg.connect(postgres_url, application_name="bystander", autocommit=True)
    try:
        assert postgres_server.terminate_backends("otelbridge-%") == 1
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        assert bystander.execute("SELECT 1").fetchone() == (1,)
        assert postgres_server.terminate_backends(None) >= 1
        with pytest.raises(psycopg.OperationalError):
            bystander.execute("SELECT 1")
    finally:
        victim.close()
        bystander.close()
