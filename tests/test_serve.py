"""End to end: a real ``otelbridge serve`` subprocess, real webhooks over HTTP, a real OTLP/HTTP
receiver, ``kill -9`` and SIGTERM.

Every daemon here gets a fresh state directory, free ports on 127.0.0.1, short retry backoffs
(``OTELBRIDGE_RETRY_*``) and a 500 ms metrics interval; its environment starts without any
``OTELBRIDGE_*``/``OTEL_*`` variable of the test process. The sample stream is the 166
deliveries of 12 calls in examples/webhooks.jsonl; the spans it must give
are computed from the events themselves (each call assembled from all its events and mapped),
independently of the daemon.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelbridge.mapping import ids
from tests.support.otlp_receiver import GrpcOtlpReceiver, HttpOtlpReceiver
from tests.support.serve_process import (
    SECRET_HEADER,
    Delivery,
    Poster,
    ServeProcess,
    expected_span_ids,
    free_port,
    post_webhook,
    run_cli,
    sample_deliveries,
    serve_env,
)

SECRET = "whsec_e2e_Q7v4LmZ2pX9tK3rW"
WRONG_SECRET = "whsec_e2e_not_the_one_8HbN"
#: generous: a cold ``python -m otelbridge`` imports the OpenTelemetry SDK, uvicorn and pydantic
READY_TIMEOUT_S = 15.0
#: time for the receiver to hold every span once the daemon has the events
DELIVERY_TIMEOUT_S = 30.0


# --- fixtures and helpers -------------------------------------------------------------------
class Daemons:
    """Starts ``otelbridge serve`` processes for one test and kills what is left at teardown."""

    def __init__(self, workdir: Path, receiver: HttpOtlpReceiver) -> None:
        self.workdir = workdir
        self.receiver = receiver
        self.processes: list[ServeProcess] = []

    def env(
        self, state_dir: Path | None, listen_port: int, admin_port: int, extra: dict[str, str | None]
    ) -> dict[str, str]:
        """The daemon's complete environment; a ``None`` in ``extra`` removes that variable."""
        return serve_env(
            state_dir, listen_port, admin_port, SECRET, self.receiver.env(), extra, metric_interval_ms=500
        )

    def start(
        self,
        state_dir: Path | None,
        *,
        listen_port: int | None = None,
        admin_port: int | None = None,
        args: tuple[str, ...] = (),
        ready: bool = True,
        env: dict[str, str | None] | None = None,
    ) -> ServeProcess:
        """Start a daemon on ``state_dir`` (free ports unless given) and wait until it is ready;
        ``env`` adds variables to :meth:`env` (``None`` removes one)."""
        listen_port = listen_port or free_port()
        admin_port = admin_port or free_port()
        process = ServeProcess(
            self.workdir,
            self.env(state_dir, listen_port, admin_port, env or {}),
            listen_port=listen_port,
            admin_port=admin_port,
            args=args,
        )
        self.processes.append(process)
        process.start()
        if ready:
            process.wait_ready(READY_TIMEOUT_S)
        return process

    def restart(self, previous: ServeProcess, state_dir: Path) -> ServeProcess:
        """A new process on the same state directory and ports (what a supervisor does)."""
        return self.start(state_dir, listen_port=previous.listen_port, admin_port=previous.admin_port)

    def close(self) -> None:
        for process in self.processes:
            process.close()


@pytest.fixture
def daemons(tmp_path: Path, receiver: HttpOtlpReceiver) -> Iterator[Daemons]:
    d = Daemons(tmp_path, receiver)
    try:
        yield d
    finally:  # before the receiver stops (this fixture depends on it)
        d.close()


@pytest.fixture(scope="module")
def deliveries() -> list[Delivery]:
    return sample_deliveries()


@pytest.fixture(scope="module")
def expected(deliveries: list[Delivery]) -> set[str]:
    ids = expected_span_ids(d.event for d in deliveries)
    assert len(ids) > 100  # sanity: 12 calls, their turns and tool calls
    return ids


def recover(receiver: HttpOtlpReceiver) -> None:
    """The backend is healthy again: drop the scripted failures not used yet."""
    receiver.clear_answers()


def span_counts(receiver: HttpOtlpReceiver) -> Counter[str]:
    return Counter(span.span_id.hex() for span in receiver.spans())


def request_span_ids(request: ExportTraceServiceRequest) -> set[str]:
    return {span.span_id.hex() for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans}


def wait_for_every_span(receiver: HttpOtlpReceiver, expected: set[str], daemon: ServeProcess) -> None:
    if not receiver.wait_until(lambda: expected <= receiver.span_ids(), DELIVERY_TIMEOUT_S):
        missing = expected - receiver.span_ids()
        raise AssertionError(
            f"{len(missing)} of {len(expected)} spans never arrived; daemon stderr:\n{daemon.stderr}"
        )


def assert_exactly_once(receiver: HttpOtlpReceiver, expected: set[str]) -> None:
    counts = span_counts(receiver)
    assert {sid: n for sid, n in counts.items() if n > 1} == {}, "spans received more than once"
    assert set(counts) == expected


def stop_gracefully(daemon: ServeProcess, timeout: float = 20.0) -> float:
    """SIGTERM; assert exit code 0; the seconds it took."""
    started = time.monotonic()
    daemon.terminate()
    code = daemon.wait(timeout)
    assert code == 0, f"exit code {code}; stderr:\n{daemon.stderr}"
    return time.monotonic() - started


def kill_mid_stream(daemon: ServeProcess, receiver: HttpOtlpReceiver, deliveries: list[Delivery]) -> set[int]:
    """Post the stream from 4 threads; ``kill -9`` once half of it was acknowledged and a trace
    export was attempted (so that spooled spans exist at the kill, not only inbox rows). The
    indices of the acknowledged deliveries (the posts after the kill fail: not acknowledged)."""
    # ~1.7 s of posting: acknowledging is fast enough that an unpaced stream ends before the
    # first export attempt
    poster = Poster(daemon.webhook_url, SECRET, threads=4, pace_s=0.04)
    half = poster.reached(len(deliveries) // 2)
    posting = poster.start(deliveries)
    assert half.wait(30), f"half of the stream was never acknowledged; stderr:\n{daemon.stderr}"
    tried = receiver.wait_until(lambda: any(r.signal == "traces" for r in receiver.requests), 10)
    assert daemon.kill() == -9
    posting.join(60)
    assert not posting.is_alive()
    assert tried, f"no trace export was attempted before the kill; stderr:\n{daemon.stderr}"
    acked = set(poster.acked)
    # really mid-stream: the kill came before the end of the stream
    assert len(deliveries) // 2 <= len(acked) < len(deliveries)
    return acked


def repost(daemon: ServeProcess, deliveries: list[Delivery], acked: set[int]) -> None:
    """What Cartesia does: deliver again whatever was not acknowledged."""
    retry = [d for d in deliveries if d.index not in acked]
    poster = Poster(daemon.webhook_url, SECRET, threads=4)
    poster.post_all(retry)
    assert poster.acked == {d.index for d in retry}, f"not acknowledged: {poster.answers}"


# --- 1. kill -9 mid-stream -----------------------------------------------------------------
def test_kill_9_mid_stream_with_backend_down_then_restart_exports_each_span_exactly_once(
    daemons: Daemons,
    receiver: HttpOtlpReceiver,
    deliveries: list[Delivery],
    expected: set[str],
    tmp_path: Path,
) -> None:
    """Acknowledged deliveries survive ``kill -9`` (inbox and spool are on disk); the ones that
    were not are delivered again; every span reaches the backend exactly once."""
    state = tmp_path / "state"
    # The backend answers 503 for as long as the first process lives, so no export can
    # succeed before the kill: there is no request whose 2xx is on its way back while the
    # process dies (the one window — backend accepted, spool row not yet deleted — where a
    # re-send after restart is unavoidable). With that window closed, "exactly once" is
    # deterministic and asserted strictly; the healthy-backend variant is the next test.
    receiver.fail_next(100_000, status=503)
    first = daemons.start(state)
    acked = kill_mid_stream(first, receiver, deliveries)
    assert receiver.span_ids() == set()  # the outage held until the kill

    recover(receiver)
    second = daemons.restart(first, state)
    repost(second, deliveries, acked)
    wait_for_every_span(receiver, expected, second)
    stop_gracefully(second)  # whatever could still be sent has been sent
    assert_exactly_once(receiver, expected)


def test_kill_9_mid_stream_with_healthy_backend_loses_nothing(
    daemons: Daemons,
    receiver: HttpOtlpReceiver,
    deliveries: list[Delivery],
    expected: set[str],
    tmp_path: Path,
) -> None:
    """The same kill with the backend accepting everything: nothing is lost, and at most one
    request is received twice.

    The sender deletes a spooled request only after the backend's 2xx, so a ``kill -9`` that
    lands between the 2xx and the delete re-sends that request after the restart (backends
    such as Tempo de-duplicate by span id). One trace request is in flight at a time, so the
    duplicates, if any, are exactly the spans of one request, each received twice."""
    state = tmp_path / "state"
    first = daemons.start(state)
    acked = kill_mid_stream(first, receiver, deliveries)

    second = daemons.restart(first, state)
    repost(second, deliveries, acked)
    wait_for_every_span(receiver, expected, second)
    stop_gracefully(second)

    counts = span_counts(receiver)
    assert set(counts) == expected  # nothing lost, nothing extra
    duplicated = {sid for sid, n in counts.items() if n > 1}
    assert all(counts[sid] == 2 for sid in duplicated)
    if duplicated:
        requests = [request_span_ids(r) for r in receiver.trace_requests]
        assert duplicated in requests, "duplicates are not the spans of one re-sent request"


# --- 2. backend outage across a restart -----------------------------------------------------
def test_backend_outage_sigterm_keeps_the_spool_and_the_next_start_sends_it(
    daemons: Daemons,
    receiver: HttpOtlpReceiver,
    deliveries: list[Delivery],
    expected: set[str],
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    receiver.fail_next(50_000, status=503, retry_after_s=0)  # far more than this test sends
    first = daemons.start(state, env={"OTELBRIDGE_SHUTDOWN_TIMEOUT": "1"})
    poster = Poster(first.webhook_url, SECRET)
    poster.post_all(deliveries)
    assert len(poster.acked) == len(deliveries)
    assert receiver.wait_until(lambda: any(r.signal == "traces" for r in receiver.requests), 10)

    took = stop_gracefully(first)
    assert took < 1 + 6, f"SIGTERM took {took:.1f}s with OTELBRIDGE_SHUTDOWN_TIMEOUT=1"
    assert receiver.pending_answers > 0  # still failing when it stopped
    assert receiver.span_ids() == set()
    assert "unsent" in first.stderr and "sent at the next start" in first.stderr
    assert "Traceback" not in first.stderr
    with contextlib.closing(sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True)) as conn:
        spooled = conn.execute("SELECT COUNT(*), SUM(items) FROM spool WHERE signal='traces'").fetchone()
    assert spooled[0] >= 1 and spooled[1] == len(expected), spooled  # every span waits on disk

    recover(receiver)
    second = daemons.restart(first, state)
    wait_for_every_span(receiver, expected, second)
    stop_gracefully(second)
    assert_exactly_once(receiver, expected)


# --- 3. graceful SIGTERM ----------------------------------------------------------------------
def test_sigterm_drains_everything_before_exiting(
    daemons: Daemons,
    receiver: HttpOtlpReceiver,
    deliveries: list[Delivery],
    expected: set[str],
    tmp_path: Path,
) -> None:
    daemon = daemons.start(tmp_path / "state")
    poster = Poster(daemon.webhook_url, SECRET)
    poster.post_all(deliveries)
    assert len(poster.acked) == len(deliveries)
    stop_gracefully(daemon)  # right away: no waiting for the exports
    # after the exit, with nothing more to come: everything is already at the backend
    assert_exactly_once(receiver, expected)
    assert "stopped: everything received was exported" in daemon.stderr
    # the last metrics collection went out too
    assert any(name.startswith("cartesia.") for name in receiver.metric_names())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_process_group_still_drains(
    daemons: Daemons,
    receiver: HttpOtlpReceiver,
    deliveries: list[Delivery],
    expected: set[str],
    tmp_path: Path,
    signum: int,
) -> None:
    """Ctrl-C in a terminal and systemd's stop signal the pipeline process as well as the daemon:
    the pipeline leaves stopping to the daemon, so the drain still happens."""
    daemon = daemons.start(tmp_path / "state")
    Poster(daemon.webhook_url, SECRET).post_all(deliveries)
    daemon.signal_group(signum)
    code = daemon.wait(20)
    assert code == 0, f"exit code {code}; stderr:\n{daemon.stderr}"
    assert_exactly_once(receiver, expected)
    assert "stopped: everything received was exported" in daemon.stderr
    assert "the pipeline process exited" not in daemon.stderr


# --- 4. startup failures -----------------------------------------------------------------------
def _assert_clean_failure(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 2, f"exit code {result.returncode}; stderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr


def test_serve_without_a_webhook_secret_refuses_to_start(daemons: Daemons, tmp_path: Path) -> None:
    env = daemons.env(tmp_path / "state", free_port(), free_port(), {"OTELBRIDGE_WEBHOOK_SECRET": None})
    result = run_cli(["serve"], env, tmp_path)
    _assert_clean_failure(result)
    assert "OTELBRIDGE_WEBHOOK_SECRET" in result.stderr
    assert "--allow-unauthenticated" in result.stderr


def test_serve_lists_every_invalid_setting_at_once(daemons: Daemons, tmp_path: Path) -> None:
    env = daemons.env(
        tmp_path / "state",
        free_port(),
        free_port(),
        {"OTELBRIDGE_LISTEN_PORT": "99999", "OTELBRIDGE_LOG_FORMAT": "xml", "OTELBRIDGE_FOO": "1"},
    )
    result = run_cli(["serve"], env, tmp_path)
    _assert_clean_failure(result)
    assert "3 problems" in result.stderr
    for needle in ("OTELBRIDGE_LISTEN_PORT", "99999", "OTELBRIDGE_LOG_FORMAT", "xml", "OTELBRIDGE_FOO"):
        assert needle in result.stderr
    assert not (tmp_path / "state").exists()  # nothing was created


@pytest.mark.parametrize("which", ["listen", "admin"])
def test_serve_names_a_port_in_use_and_the_fix(daemons: Daemons, tmp_path: Path, which: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = int(taken.getsockname()[1])
        ports = {"listen": free_port(), "admin": free_port(), which: port}
        env = daemons.env(tmp_path / "state", ports["listen"], ports["admin"], {})
        result = run_cli(["serve"], env, tmp_path)
    # its own exit status (3), not the one of invalid settings (2)
    assert result.returncode == 3, f"exit code {result.returncode}; stderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert f"OTELBRIDGE_{which.upper()}_HOST/PORT" in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "in use by another process" in result.stderr
    assert "Fix: stop what listens there" in result.stderr and "choose a free port" in result.stderr


def test_allow_unauthenticated_accepts_webhooks_without_the_header(
    daemons: Daemons, deliveries: list[Delivery], tmp_path: Path
) -> None:
    daemon = daemons.start(
        tmp_path / "state", args=("--allow-unauthenticated",), env={"OTELBRIDGE_WEBHOOK_SECRET": None}
    )
    with httpx.Client(timeout=10) as client:
        assert post_webhook(client, daemon.webhook_url, deliveries[0].body, None) == 200
    stop_gracefully(daemon)
    assert "webhook authentication is OFF" in daemon.stderr


# --- 5. --config ---------------------------------------------------------------------------------
def test_config_file_sets_ports_and_state_dir_and_the_environment_wins(
    daemons: Daemons, deliveries: list[Delivery], tmp_path: Path
) -> None:
    listen, file_admin, env_admin = free_port(), free_port(), free_port()
    state = tmp_path / "from-file-state"
    config = tmp_path / "otelbridge.toml"
    config.write_text(
        f'listen_port = {listen}\nadmin_port = {file_admin}\nstate_dir = "{state}"\n', encoding="utf-8"
    )
    daemon = daemons.start(
        None,
        listen_port=listen,
        admin_port=env_admin,
        args=("--config", str(config)),
        env={
            "OTELBRIDGE_LISTEN_PORT": None,  # from the file
            "OTELBRIDGE_ADMIN_PORT": str(env_admin),  # the environment wins over the file
        },
    )
    assert "OTELBRIDGE_LISTEN_PORT" not in daemon.env and "OTELBRIDGE_STATE_DIR" not in daemon.env
    with httpx.Client(timeout=5) as client:
        assert post_webhook(client, daemon.webhook_url, deliveries[0].body, SECRET) == 200
        with pytest.raises(httpx.ConnectError):
            client.get(f"http://127.0.0.1:{file_admin}/healthz")
    assert (state / "state.db").exists() and (state / "inbox.db").exists()
    assert not (tmp_path / "otelbridge-state").exists()  # not the default
    stop_gracefully(daemon)


def test_config_file_with_an_unknown_key_is_reported(daemons: Daemons, tmp_path: Path) -> None:
    config = tmp_path / "otelbridge.toml"
    config.write_text("[otelbridge]\nlisten_prot = 8081\n", encoding="utf-8")
    env = daemons.env(tmp_path / "state", free_port(), free_port(), {})
    result = run_cli(["serve", "--config", str(config)], env, tmp_path)
    _assert_clean_failure(result)
    assert "'listen_prot'" in result.stderr
    assert "did you mean listen_port?" in result.stderr
    assert str(config) in result.stderr


# --- 6. otelbridge check -------------------------------------------------------------------------
def test_check_against_a_running_receiver(
    daemons: Daemons, receiver: HttpOtlpReceiver, tmp_path: Path
) -> None:
    env = daemons.env(tmp_path / "state", free_port(), free_port(), {})
    result = run_cli(["check"], env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OTLP traces endpoint {receiver.url}/v1/traces: ok" in result.stdout
    assert f"OTLP metrics endpoint {receiver.url}/v1/metrics: ok" in result.stdout
    assert sorted(r.path for r in receiver.requests) == ["/v1/metrics", "/v1/traces"]


def test_check_against_a_closed_port_fails_and_names_the_endpoint(daemons: Daemons, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    env = daemons.env(tmp_path / "state", free_port(), free_port(), {"OTEL_EXPORTER_OTLP_ENDPOINT": closed})
    result = run_cli(["check"], env, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"OTLP traces endpoint {closed}/v1/traces: FAILED" in result.stdout
    assert f"OTLP metrics endpoint {closed}/v1/metrics: FAILED" in result.stdout
    assert "Traceback" not in result.stderr


def test_check_with_invalid_settings_exits_2(daemons: Daemons, tmp_path: Path) -> None:
    env = daemons.env(tmp_path / "state", free_port(), free_port(), {"OTELBRIDGE_LOG_LEVEL": "loud"})
    result = run_cli(["check"], env, tmp_path)
    _assert_clean_failure(result)
    assert "OTELBRIDGE_LOG_LEVEL" in result.stderr and "'loud'" in result.stderr
    assert "ok" not in result.stdout


def test_check_takes_allow_unauthenticated_as_its_own_message_says(
    daemons: Daemons, receiver: HttpOtlpReceiver, tmp_path: Path
) -> None:
    env = daemons.env(tmp_path / "state", free_port(), free_port(), {"OTELBRIDGE_WEBHOOK_SECRET": None})
    refused = run_cli(["check"], env, tmp_path)
    _assert_clean_failure(refused)
    assert "--allow-unauthenticated" in refused.stderr
    result = run_cli(["check", "--allow-unauthenticated"], env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "settings: ok" in result.stdout


def test_check_names_the_absolute_state_dir_and_the_fix(daemons: Daemons, tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where the state directory's parent should be")
    env = daemons.env(None, free_port(), free_port(), {"OTELBRIDGE_STATE_DIR": "blocker/state"})
    result = run_cli(["check"], env, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("state directory")]
    assert f"OTELBRIDGE_STATE_DIR='blocker/state' ({tmp_path / 'blocker' / 'state'})" in line
    assert "Fix: make" in line and "writable by this user" in line


def test_check_probes_only_the_signals_that_go_over_otlp(
    daemons: Daemons, receiver: HttpOtlpReceiver, tmp_path: Path
) -> None:
    env = daemons.env(tmp_path / "state", free_port(), free_port(), {"OTEL_METRICS_EXPORTER": "none"})
    result = run_cli(["check"], env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OTLP traces endpoint {receiver.url}/v1/traces: ok" in result.stdout
    assert "metrics: exporter none (no OTLP endpoint to probe)" in result.stdout
    assert [r.path for r in receiver.requests] == ["/v1/traces"]


def test_help_lists_every_setting_with_its_default(daemons: Daemons, tmp_path: Path) -> None:
    from otelbridge.settings import Settings, env_name

    result = run_cli(["serve", "--help"], daemons.env(None, free_port(), free_port(), {}), tmp_path)
    assert result.returncode == 0
    assert "README" not in result.stdout
    for field in Settings.model_fields:
        assert f"  {env_name(field)}  (default " in result.stdout
    assert "OTELBRIDGE_LISTEN_PORT  (default 8080)" in result.stdout


# --- 7. JSON logs, no secret ------------------------------------------------------------------
def test_json_logs_are_json_and_never_show_the_secret(
    daemons: Daemons, receiver: HttpOtlpReceiver, deliveries: list[Delivery], tmp_path: Path
) -> None:
    daemon = daemons.start(
        tmp_path / "state", env={"OTELBRIDGE_LOG_FORMAT": "json", "OTELBRIDGE_LOG_LEVEL": "debug"}
    )
    body = deliveries[0].body
    one_call = [d for d in deliveries if d.call_id == deliveries[0].call_id]
    with httpx.Client(timeout=10) as client:
        assert post_webhook(client, daemon.webhook_url, body, WRONG_SECRET) == 401
        for d in one_call:
            assert post_webhook(client, daemon.webhook_url, d.body, SECRET) == 200
        assert post_webhook(client, daemon.webhook_url, b"{not json", SECRET) == 400
        assert post_webhook(client, daemon.webhook_url, b'{"type": "call_turn"}', SECRET) == 422
        # the secret in other headers and in the path must not be echoed either
        response = client.post(
            f"{daemon.webhook_url}/{SECRET}",
            content=body,
            headers={SECRET_HEADER: SECRET, "Content-Type": "application/json", "X-Other": SECRET},
        )
        assert response.status_code == 404
        assert SECRET not in response.text
    assert receiver.wait_for_spans(1, timeout=10)
    stop_gracefully(daemon)

    lines = [line for line in daemon.stderr.splitlines() if line.strip()]
    assert lines
    records = []
    for line in lines:
        record = json.loads(line)  # every line, not only ours
        assert isinstance(record, dict), line
        assert {"level", "logger", "message"} <= record.keys(), line
        records.append(record)
    assert any(r["logger"] == "otelbridge.receiver" and r["level"] == "warning" for r in records)
    assert any("401" in r["message"] for r in records)
    assert SECRET not in daemon.stderr
    assert WRONG_SECRET not in daemon.stderr


# --- 8. admin endpoints ---------------------------------------------------------------------------
def _accepted(metrics_text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("otelbridge_webhooks_total{") and 'outcome="accepted"' in line
    )


def test_metrics_and_health_on_the_admin_port(
    daemons: Daemons,
    receiver: HttpOtlpReceiver,
    deliveries: list[Delivery],
    expected: set[str],
    tmp_path: Path,
) -> None:
    daemon = daemons.start(tmp_path / "state")
    poster = Poster(daemon.webhook_url, SECRET)
    poster.post_all(deliveries)
    wait_for_every_span(receiver, expected, daemon)
    with httpx.Client(timeout=5) as client:
        assert client.get(f"{daemon.admin_url}/healthz").status_code == 200
        ready = client.get(f"{daemon.admin_url}/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        # webhook counts reach the admin side (the pipeline process) within a second or two
        deadline = time.monotonic() + 5
        while True:
            text = client.get(f"{daemon.admin_url}/metrics").text
            if _accepted(text) == len(deliveries) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    for name in (
        "otelbridge_webhooks_total",
        "cartesia_tts_ttfb_seconds_bucket",
        "otelbridge_export_attempts_total",
    ):
        assert name in text, f"{name} missing from /metrics:\n{text[:3000]}"
    assert _accepted(text) == len(deliveries)
    stop_gracefully(daemon)


# --- 9. first-hour surprises ----------------------------------------------------------------------
def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_an_unreachable_otlp_endpoint_gets_one_warning_at_start(daemons: Daemons, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    daemon = daemons.start(tmp_path / "state", env={"OTEL_EXPORTER_OTLP_ENDPOINT": closed})
    with httpx.Client(timeout=5) as client:  # ready at once: the probe delays nothing
        assert client.get(f"{daemon.admin_url}/readyz").status_code == 200
    assert _wait_for(lambda: f"{closed}/v1/metrics does not take exports" in daemon.stderr)
    warnings = [line for line in daemon.stderr.splitlines() if "does not take exports" in line]
    assert [w.count("WARNING") for w in warnings] == [1, 1]
    assert f"{closed}/v1/traces" in warnings[0] and "Fix:" in warnings[0]
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in warnings[0]
    stop_gracefully(daemon)


def test_http_to_a_grpc_listener_gets_a_warning_naming_the_protocol(daemons: Daemons, tmp_path: Path) -> None:
    """OTLP/HTTP (the default) sent to a real gRPC server: the probe's Fix is the protocol, not
    "start the Collector" (it is running)."""
    with GrpcOtlpReceiver() as grpc_receiver:
        daemon = daemons.start(tmp_path / "state", env={"OTEL_EXPORTER_OTLP_ENDPOINT": grpc_receiver.url})
        assert _wait_for(lambda: "/v1/metrics does not take exports" in daemon.stderr)
        stop_gracefully(daemon)
    warnings = [line for line in daemon.stderr.splitlines() if "does not take exports" in line]
    assert len(warnings) == 2
    for warning in warnings:
        fix = warning.split("Fix:", 1)[1]
        assert "OTEL_EXPORTER_OTLP_PROTOCOL=grpc" in fix and "start the Collector" not in fix, warning


def test_a_reachable_endpoint_gets_no_warning(
    daemons: Daemons, receiver: HttpOtlpReceiver, tmp_path: Path
) -> None:
    daemon = daemons.start(tmp_path / "state")
    assert _wait_for(lambda: len([r for r in receiver.requests if r.path == "/v1/traces"]) >= 1)
    stop_gracefully(daemon)
    assert "does not take exports" not in daemon.stderr


def test_console_exporter_prints_a_tree_per_call_as_its_root_leaves(
    daemons: Daemons, deliveries: list[Delivery], tmp_path: Path
) -> None:
    daemon = daemons.start(tmp_path / "state", env={"OTELBRIDGE_EXPORTER": "console"})
    Poster(daemon.webhook_url, SECRET).post_all(deliveries)
    calls = {d.call_id for d in deliveries}
    assert _wait_for(lambda: all(f"call {c}  trace {ids.trace_id_hex(c)}" in daemon.stdout for c in calls))
    stop_gracefully(daemon)
    out = daemon.stdout
    assert not any(line.lstrip().startswith("{") for line in out.splitlines())  # no JSON lines
    for call_id in calls:
        (head,) = [line for line in out.splitlines() if line.startswith(f"call {call_id}  trace ")]
        assert "agent " in head
    assert any(line.startswith(("├─ user_turn", "└─ user_turn")) for line in out.splitlines())
    assert "metric cartesia.tts.ttfb (histogram): " in out


def test_metrics_exporter_none_sends_no_metrics_and_logs_no_error(
    daemons: Daemons,
    receiver: HttpOtlpReceiver,
    deliveries: list[Delivery],
    expected: set[str],
    tmp_path: Path,
) -> None:
    daemon = daemons.start(tmp_path / "state", env={"OTEL_METRICS_EXPORTER": "none"})
    Poster(daemon.webhook_url, SECRET).post_all(deliveries)
    wait_for_every_span(receiver, expected, daemon)
    time.sleep(1.0)  # two metric intervals
    with httpx.Client(timeout=5) as client:
        ready = client.get(f"{daemon.admin_url}/readyz").json()
        text = client.get(f"{daemon.admin_url}/metrics").text
    stop_gracefully(daemon)
    assert not [r for r in receiver.requests if r.path == "/v1/metrics"]
    assert ready["checks"]["delivery"]["metrics"]["failures"] == 0
    assert "cartesia_tts_ttfb_seconds_bucket" in text  # Prometheus still has them
    assert "ERROR" not in daemon.stderr
