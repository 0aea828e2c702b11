"""Data at rest and in logs: the state directory is private (0700, files 0600, whatever the
umask), a directory others can write into and symlinked state files are refused, no body value
is echoed into a 422 answer or a log line, a request value cannot forge a log line, and an OTLP
backend echoing the request's headers leaks the key into neither the log nor ``/readyz``.

Real parts: SQLite files in a temporary directory, real ``otelbridge serve`` subprocesses
(started with umask 000 where the modes matter), a real OTLP/HTTP receiver.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from otelbridge.store import StoreError, ensure_state_dir, open_inbox, open_state
from tests.support.otlp_receiver import HttpOtlpReceiver
from tests.support.serve_process import (
    SECRET_HEADER,
    ServeProcess,
    clean_env,
    free_port,
    post_webhook,
    run_cli,
    sample_deliveries,
)

SECRET = "whsec_at_rest_5tY8qP2mZx"
HONEYCOMB_KEY = "hcaik_01hx7rQ3pW9sTfZ2kLmN4vB8cD6eG0"
EXIT_USAGE = 2


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def modes(state_dir: Path) -> dict[str, int]:
    return {p.name: mode_of(p) for p in sorted(state_dir.iterdir())}


def serve_env(state_dir: Path, receiver: HttpOtlpReceiver, **extra: str) -> dict[str, str]:
    return clean_env(
        {
            "OTELBRIDGE_STATE_DIR": str(state_dir),
            "OTELBRIDGE_WEBHOOK_SECRET": SECRET,
            "OTELBRIDGE_RETRY_INITIAL_BACKOFF": "0.05",
            "OTELBRIDGE_RETRY_MAX_BACKOFF": "0.3",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            **receiver.env(),
            **extra,
        }
    )


class Serves:
    """Real ``otelbridge serve`` processes of one test, killed at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[ServeProcess] = []

    def start(self, env: dict[str, str], *, umask: int | None = None) -> ServeProcess:
        listen_port, admin_port = free_port(), free_port()
        env = {**env, "OTELBRIDGE_LISTEN_PORT": str(listen_port), "OTELBRIDGE_ADMIN_PORT": str(admin_port)}
        process = ServeProcess(self.workdir, env, listen_port=listen_port, admin_port=admin_port)
        if umask is not None:  # the shell sets the umask the daemon (and its pipeline) inherits
            process.argv = ["sh", "-c", f'umask {umask:03o} && exec "$0" -m otelbridge serve', sys.executable]
        self.processes.append(process)
        return process.start().wait_ready(15.0)

    def close(self) -> None:
        for process in self.processes:
            process.close()


@pytest.fixture
def serves(tmp_path: Path, receiver: HttpOtlpReceiver) -> Iterator[Serves]:
    s = Serves(tmp_path)
    try:
        yield s
    finally:
        s.close()


def run_with_umask(code: str, umask: int = 0o000) -> str:
    """``code`` in a fresh interpreter under ``umask`` (never this process's: it is shared);
    its stdout."""
    script = f"import os\nos.umask({umask:#o})\n" + textwrap.dedent(code)
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, timeout=30, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- modes -----------------------------------------------------------------------------------
def test_a_real_serve_under_umask_000_keeps_everything_private(
    serves: Serves, receiver: HttpOtlpReceiver, tmp_path: Path
) -> None:
    state_dir = tmp_path / "new" / "state"
    daemon = serves.start(serve_env(state_dir, receiver), umask=0o000)
    first = sample_deliveries()[0]
    with httpx.Client(timeout=10.0) as client:
        assert post_webhook(client, daemon.webhook_url, first.body, SECRET) == 200
    assert receiver.wait_until(lambda: bool(receiver.trace_requests), 15.0), daemon.stderr
    found = modes(state_dir)
    # the inbox and the state store with their WAL and shared memory, and both lock files
    assert {"inbox.db", "inbox.db-wal", "state.db", "state.db-wal", "serve.lock", "pipeline.lock"} <= set(
        found
    )
    assert found == dict.fromkeys(found, 0o600), found
    assert mode_of(state_dir) == 0o700


def test_store_files_are_0600_and_the_directory_0700_whatever_the_umask(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    out = run_with_umask(
        f"""
        import json, os, stat
        from pathlib import Path
        from otelbridge.store import open_inbox, open_private, open_state
        state_dir = Path({str(state_dir)!r})
        stores = [open_inbox(state_dir), open_state(state_dir)]
        for store in stores:
            with store.db.transaction() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
                conn.execute("INSERT INTO t VALUES (1)")
        open_private(state_dir / "serve.lock").close()
        # read while the connections are open: closing the last one removes the WAL files
        print(json.dumps({{p.name: stat.S_IMODE(p.stat().st_mode) for p in state_dir.iterdir()}}))
        """
    )
    found = json.loads(out)
    assert {"inbox.db", "inbox.db-wal", "inbox.db-shm", "state.db", "state.db-wal", "serve.lock"} <= set(
        found
    )
    assert found == dict.fromkeys(found, 0o600), found
    assert mode_of(state_dir) == 0o700


def test_a_state_directory_of_an_older_version_is_tightened(tmp_path: Path) -> None:
    """0755 and 0644 (what the umask gave before): ours, so made private rather than refused."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    state_dir.chmod(0o755)
    conn = sqlite3.connect(state_dir / "inbox.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    (state_dir / "serve.lock").touch()
    for path in state_dir.iterdir():
        path.chmod(0o644)
    try:
        db = open_inbox(state_dir)
        db.close()
    finally:
        conn.close()
    assert mode_of(state_dir) == 0o700
    assert modes(state_dir) == dict.fromkeys(modes(state_dir), 0o600)


# --- refused ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "words"), [(0o770, "writable by group"), (0o777, "world-writable")])
def test_serve_refuses_a_state_directory_others_can_write(
    tmp_path: Path, receiver: HttpOtlpReceiver, mode: int, words: str
) -> None:
    state_dir = tmp_path / "group-volume"
    state_dir.mkdir()
    state_dir.chmod(mode)
    env = serve_env(state_dir, receiver, OTELBRIDGE_LISTEN_PORT=str(free_port()))
    result = run_cli(["serve"], env, tmp_path)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert f"refusing OTELBRIDGE_STATE_DIR {state_dir}: it is {words}" in result.stderr
    assert f"Fix: chmod 0700 {state_dir}" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(state_dir.iterdir()) == [] and mode_of(state_dir) == mode  # nothing written


def test_world_writable_is_refused_even_with_setgid_and_our_group(tmp_path: Path) -> None:
    state_dir = tmp_path / "group-volume"
    state_dir.mkdir()
    os.chown(state_dir, -1, os.getegid())
    state_dir.chmod(0o2777)
    with pytest.raises(StoreError, match="world-writable"):
        ensure_state_dir(state_dir)


def test_a_kubernetes_fsgroup_volume_root_is_accepted_as_it_is(tmp_path: Path) -> None:
    """``drwxrwsr-x`` with this process's group, as the kubelet makes a volume under fsGroup
    (the chart's 10001, the pod's runAsGroup): used, and left unchanged."""
    state_dir = tmp_path / "volume"
    state_dir.mkdir()
    os.chown(state_dir, -1, os.getegid())
    state_dir.chmod(0o2775)
    db = open_state(state_dir)
    db.close()
    assert mode_of(state_dir) == 0o2775
    assert mode_of(state_dir / "state.db") == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another group needs root")
def test_a_setgid_volume_of_another_group_is_refused(tmp_path: Path) -> None:
    state_dir = tmp_path / "volume"
    state_dir.mkdir()
    other = os.getegid() + 4242
    os.chown(state_dir, -1, other)
    state_dir.chmod(0o2775)
    with pytest.raises(StoreError, match=f"writable by group {other}"):
        ensure_state_dir(state_dir)


@pytest.mark.parametrize("name", ["inbox.db", "state.db-wal", "serve.lock", "pipeline.lock"])
def test_serve_refuses_a_symlinked_state_file(tmp_path: Path, receiver: HttpOtlpReceiver, name: str) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere" / name
    elsewhere.parent.mkdir()
    (state_dir / name).symlink_to(elsewhere)  # dangling: following it would create the file
    env = serve_env(state_dir, receiver, OTELBRIDGE_LISTEN_PORT=str(free_port()))
    result = run_cli(["serve"], env, tmp_path)
    assert result.returncode == EXIT_USAGE, result.stderr
    path = state_dir / name
    assert f"refusing {path}: it is a symbolic link" in result.stderr
    assert f"Fix: remove {path}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not elsewhere.exists()


# --- in logs and answers ---------------------------------------------------------------------
def test_a_4_mib_timestamp_gets_a_short_422_without_the_value(
    serves: Serves, receiver: HttpOtlpReceiver, tmp_path: Path
) -> None:
    daemon = serves.start(serve_env(tmp_path / "state", receiver))
    event = dict(sample_deliveries()[0].event)
    phone = "+14155550123"
    event["timestamp"] = (phone + " ") * (4 * 1024 * 1024 // (len(phone) + 1))
    body = json.dumps(event).encode()
    assert len(body) > 4 * 1024 * 1024
    with httpx.Client(timeout=30.0) as client:
        answer = client.post(
            daemon.webhook_url,
            content=body,
            headers={"Content-Type": "application/json", SECRET_HEADER: SECRET},
        )
    assert answer.status_code == 422
    assert len(answer.content) < 400, answer.content[:500]
    message = answer.json()["message"]
    assert message.startswith("timestamp: not an RFC 3339 timestamp"), message
    assert phone not in message
    log = daemon.stderr
    assert "webhook invalid (422)" in log
    assert phone not in log
    assert max(len(line) for line in log.splitlines()) < 600


def test_a_newline_in_call_id_cannot_forge_a_log_line(
    serves: Serves, receiver: HttpOtlpReceiver, tmp_path: Path
) -> None:
    daemon = serves.start(serve_env(tmp_path / "state", receiver, OTELBRIDGE_LOG_LEVEL="debug"))
    forged = "2026-12-03T10:00:00.000Z ERROR otelbridge.sender: traces export refused (forged)"
    event = dict(sample_deliveries()[0].event)
    event["call_id"] = f"ac_forge\n{forged}"
    event["call"] = {**event["call"], "id": event["call_id"]}
    with httpx.Client(timeout=10.0) as client:
        assert post_webhook(client, daemon.webhook_url, json.dumps(event).encode(), SECRET) == 200
    assert receiver.wait_until(lambda: "ac_forge\\n" + forged in daemon.stderr, 10.0), daemon.stderr
    lines = daemon.stderr.splitlines()
    assert not [line for line in lines if line.startswith(forged[:30])]


def test_a_backend_echoing_the_honeycomb_key_leaks_it_nowhere(
    serves: Serves, receiver: HttpOtlpReceiver, tmp_path: Path
) -> None:
    echo = f"invalid request; you sent headers x-honeycomb-team: {HONEYCOMB_KEY}"
    for _ in range(20):  # the start-up probe and the exports alike
        receiver.reject_next(400, echo, path="/v1/traces")
    env = serve_env(
        tmp_path / "state", receiver, OTEL_EXPORTER_OTLP_HEADERS=f"x-honeycomb-team={HONEYCOMB_KEY}"
    )
    daemon = serves.start(env)
    deliveries = sample_deliveries()
    with httpx.Client(timeout=10.0) as client:
        for d in deliveries:
            if d.call_id == deliveries[0].call_id:  # one whole call: its root goes out
                assert post_webhook(client, daemon.webhook_url, d.body, SECRET) == 200

        def refused() -> bool:
            error = client.get(f"{daemon.admin_url}/readyz").json()["checks"]["delivery"]["traces"][
                "last_error"
            ]
            return error is not None and "invalid request" in error

        assert receiver.wait_until(refused, 15.0), daemon.stderr
        readyz = client.get(f"{daemon.admin_url}/readyz").text
    assert receiver.requests[0].headers["x-honeycomb-team"] == HONEYCOMB_KEY  # it was sent
    assert HONEYCOMB_KEY not in readyz and "x-honeycomb-team: [redacted]" in readyz
    assert "refused" in daemon.stderr and "x-honeycomb-team: [redacted]" in daemon.stderr
    assert HONEYCOMB_KEY not in daemon.stderr


def test_a_deleted_webhook_body_does_not_stay_readable_in_the_inbox_file(tmp_path: Path) -> None:
    """The inbox deletes bodies once processed: their bytes are zeroed, not left in the page."""
    inbox = open_inbox(tmp_path)
    marker = b"+14155550123 transcript: my card number is 4111"
    inbox.append([(0, "t", "c", marker + str(n).encode()) for n in range(3)])
    inbox.delete_through(2)
    with inbox.db.reading() as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    data = (tmp_path / "inbox.db").read_bytes()
    inbox.close()
    assert marker + b"2" in data  # the row kept is there
    assert marker + b"0" not in data and marker + b"1" not in data
