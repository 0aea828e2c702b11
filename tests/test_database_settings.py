"""OTELBRIDGE_DATABASE_URL(_FILE): read, checked and redacted; ``otelbridge check`` against a
real PostgreSQL names the server and schema, or what is wrong with its fix; the password never
reaches a log."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from otelbridge.settings import SettingsError, load_settings
from tests.support.otlp_receiver import HttpOtlpReceiver
from tests.support.postgres import PostgresServer
from tests.support.serve_process import ServeProcess, clean_env, free_port, run_cli, serve_env

SECRET = "database-settings-secret-0123456789"


def test_unset_means_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTELBRIDGE_DATABASE_URL", raising=False)
    assert load_settings().database_url_value() is None


def test_the_url_from_the_variable_or_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://app:pw@db:5432/otel?sslmode=require"
    monkeypatch.setenv("OTELBRIDGE_DATABASE_URL", url)
    assert load_settings().database_url_value() == url
    monkeypatch.delenv("OTELBRIDGE_DATABASE_URL")
    secret = tmp_path / "uri"
    secret.write_text(url + "\n")
    monkeypatch.setenv("OTELBRIDGE_DATABASE_URL_FILE", str(secret))
    assert load_settings().database_url_value() == url


def test_both_set_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTELBRIDGE_DATABASE_URL", "postgresql://a@b/c")
    monkeypatch.setenv("OTELBRIDGE_DATABASE_URL_FILE", str(tmp_path / "uri"))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert any("OTELBRIDGE_DATABASE_URL_FILE are both set" in p for p in caught.value.problems)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("mysql://app:pw@db/otel", "not a PostgreSQL URI"),
        ("host=db dbname=otel", "not a PostgreSQL URI"),
    ],
)
def test_a_url_that_is_not_postgresql_names_the_fix(
    value: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTELBRIDGE_DATABASE_URL", value)
    with pytest.raises(SettingsError) as caught:
        load_settings().database_url_value()
    (message,) = caught.value.problems
    assert problem in message and "Fix: set it as postgresql://" in message
    assert "pw" not in message


def test_an_unreadable_or_empty_file_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTELBRIDGE_DATABASE_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match=r"OTELBRIDGE_DATABASE_URL_FILE=.*cannot read the file"):
        load_settings().database_url_value()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    monkeypatch.setenv("OTELBRIDGE_DATABASE_URL_FILE", str(empty))
    with pytest.raises(SettingsError, match="the file is empty"):
        load_settings().database_url_value()


def test_serve_refuses_a_bad_url_before_starting(tmp_path: Path) -> None:
    env = clean_env({"OTELBRIDGE_DATABASE_URL": "mysql://u:hunter2@x/y", "OTELBRIDGE_WEBHOOK_SECRET": SECRET})
    result = run_cli(["serve"], env, tmp_path)
    assert result.returncode == 2
    assert "OTELBRIDGE_DATABASE_URL: not a PostgreSQL URI" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def _with_password(url: str, password: str) -> str:
    split = urlsplit(url)
    return urlunsplit(split._replace(netloc=f"{split.username}:{password}@{split.hostname}:{split.port}"))


def test_check_reports_the_server_and_schema_or_what_is_wrong(
    tmp_path: Path, postgres_url: str, receiver: HttpOtlpReceiver
) -> None:
    env = serve_env(
        None, free_port(), free_port(), SECRET, receiver.env(), {"OTELBRIDGE_DATABASE_URL": postgres_url}
    )
    ok = run_cli(["check"], env, tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "database 127.0.0.1:" in ok.stdout and "PostgreSQL 1" in ok.stdout and "no schema yet" in ok.stdout
    assert "state directory" not in ok.stdout  # the database holds the state

    wrong = _with_password(postgres_url, "not-the-password-9431")
    bad = run_cli(["check"], {**env, "OTELBRIDGE_DATABASE_URL": wrong}, tmp_path)
    assert bad.returncode == 1
    assert "database: FAILED" in bad.stdout and "Fix: check the user and password" in bad.stdout
    assert "not-the-password-9431" not in bad.stdout + bad.stderr


def test_serve_on_postgresql_never_logs_the_password(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str, receiver: HttpOtlpReceiver
) -> None:
    password = urlsplit(postgres_url).password
    assert password
    listen, admin = free_port(), free_port()
    env = serve_env(
        tmp_path / "state",
        listen,
        admin,
        SECRET,
        receiver.env(),
        {"OTELBRIDGE_DATABASE_URL": postgres_url, "OTELBRIDGE_LOG_LEVEL": "debug"},
    )
    daemon = ServeProcess(tmp_path, env, listen_port=listen, admin_port=admin).start()
    try:
        daemon.wait_ready(30)
        # a lost connection makes the engine log what psycopg said
        postgres_server.terminate_backends("otelbridge-%")
    finally:
        daemon.terminate()
        daemon.wait(30)
        daemon.close()
    output = daemon.stdout + daemon.stderr
    assert password not in output
    assert postgres_url not in output
