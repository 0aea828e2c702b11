"""``otelbridge drain`` on a real state directory: what a serve received but could not export
(its backend was down, then it was killed) is processed and sent, every span once; a serve still
running keeps it out; a backend still down is said so, with nothing lost."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otelbridge.cartesia.webhooks import parse_webhook_event
from otelbridge.drain import DeadLetters
from otelbridge.store.sqlite import open_inbox, open_state
from tests.support.otlp_receiver import HttpOtlpReceiver
from tests.support.samples import webhook_events
from tests.support.serve_process import (
    Poster,
    ServeProcess,
    expected_span_ids,
    free_port,
    run_cli,
    sample_deliveries,
    serve_env,
)

SECRET = "drain-test-secret-0123456789abcdef"


def _down() -> dict[str, str]:
    """An OTLP endpoint nothing listens on: every export fails and stays spooled."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }


def _serve(tmp_path: Path, state: Path, otel: dict[str, str]) -> ServeProcess:
    listen, admin = free_port(), free_port()
    env = serve_env(state, listen, admin, SECRET, otel, {"OTELBRIDGE_POLL_INTERVAL": "0"})
    return ServeProcess(tmp_path, env, listen_port=listen, admin_port=admin).start()


def test_drain_sends_what_a_killed_serve_left_and_refuses_while_one_runs(
    tmp_path: Path, receiver: HttpOtlpReceiver
) -> None:
    state = tmp_path / "state"
    deliveries = sample_deliveries()
    daemon = _serve(tmp_path, state, _down())
    try:
        daemon.wait_ready(30)
        poster = Poster(daemon.webhook_url, SECRET)
        poster.post_all(deliveries)
        assert len(poster.acked) == len(deliveries)
        drain_env = serve_env(state, free_port(), free_port(), SECRET, receiver.env())
        busy = run_cli(["drain"], drain_env, tmp_path)
        assert busy.returncode == 3, busy.stderr
        assert "in use by a running otelbridge serve" in busy.stderr and "Fix: stop it first" in busy.stderr
    finally:
        daemon.kill()  # unsent exports, and perhaps unprocessed webhooks, stay on the volume
        daemon.close()
    assert receiver.span_ids() == set()

    # the backend still down: said so, nothing lost
    stalled = run_cli(
        ["drain", "--stall", "1"], serve_env(state, free_port(), free_port(), SECRET, _down()), tmp_path
    )
    assert stalled.returncode == 1, stalled.stderr
    assert (
        "not accepted by the backend" in stalled.stderr and "Fix: check the OTLP endpoint" in stalled.stderr
    )

    drained = run_cli(
        ["drain"], serve_env(state, free_port(), free_port(), SECRET, receiver.env()), tmp_path, 120
    )
    assert drained.returncode == 0, drained.stderr
    assert "is empty" in drained.stdout
    expected = expected_span_ids([d.event for d in deliveries])
    counts = Counter(s.span_id.hex() for s in receiver.spans())
    assert set(counts) == expected
    assert max(counts.values()) == 1  # nothing in flight was cut: each span once

    again = run_cli(["drain"], serve_env(state, free_port(), free_port(), SECRET, receiver.env()), tmp_path)
    assert again.returncode == 0 and "0 stored webhook(s) processed" in again.stdout
    assert Counter(s.span_id.hex() for s in receiver.spans()) == counts


# --- calls still open: the volume is being retired ------------------------------------------------
OPEN_CALL = "ac_sid_J71fTquWoGsbeKXgzg2sye"


def _store_open_call(state: Path, received_ns: int) -> None:
    """What a stopped serve left of a call it heard start and speak, but not end: its webhooks
    in inbox.db, received at ``received_ns``."""
    events = [
        e
        for e in webhook_events()
        if parse_webhook_event(e).resolved_call_id == OPEN_CALL
        and e.get("type") in ("call_started", "call_turn")
    ]
    assert len(events) == 5
    inbox = open_inbox(state)
    try:
        inbox.append(
            [(received_ns, parse_webhook_event(e).type, OPEN_CALL, json.dumps(e).encode()) for e in events]
        )
    finally:
        inbox.close()


def _open_calls(state: Path) -> list[str]:
    store = open_state(state)
    try:
        with store.db.reading() as conn:
            return [
                row["call_id"] for row in conn.execute("SELECT call_id FROM calls WHERE closed_ns IS NULL")
            ]
    finally:
        store.close()


def _drain(tmp_path: Path, state: Path, receiver: HttpOtlpReceiver) -> subprocess.CompletedProcess[str]:
    return run_cli(
        ["drain"], serve_env(state, free_port(), free_port(), SECRET, receiver.env()), tmp_path, 120
    )


def _roots(receiver: HttpOtlpReceiver) -> list[str]:
    return [s.span_id.hex() for s in receiver.spans() if not s.parent_span_id]


def test_drain_exports_a_call_silent_past_the_call_timeout_as_it_stands(
    tmp_path: Path, receiver: HttpOtlpReceiver
) -> None:
    """Serve would have exported it on its next sweep (every 30 s); drain returned before any."""
    state = tmp_path / "state"
    _store_open_call(state, time.time_ns() - 5 * 3600 * 10**9)  # OTELBRIDGE_CALL_TIMEOUT is 4 h
    drained = _drain(tmp_path, state, receiver)
    assert drained.returncode == 0, drained.stderr
    assert len(_roots(receiver)) == 1  # the root, with the call's end
    assert _open_calls(state) == []
    assert "1 open call(s) exported as they stand" in drained.stdout


def test_drain_exports_a_call_still_within_the_call_timeout_as_it_stands(
    tmp_path: Path, receiver: HttpOtlpReceiver
) -> None:
    """A call that was in progress when serve stopped: the volume is being retired, and nothing
    else would ever export its root (or the events it keeps), so the drain does, as it stands."""
    state = tmp_path / "state"
    _store_open_call(state, time.time_ns() - 60 * 10**9)
    drained = _drain(tmp_path, state, receiver)
    assert drained.returncode == 0, drained.stderr
    assert len(_roots(receiver)) == 1
    assert _open_calls(state) == []
    assert "1 open call(s) exported as they stand" in drained.stdout
    again = _drain(tmp_path, state, receiver)
    assert again.returncode == 0 and "0 open call(s)" in again.stdout
    assert len(_roots(receiver)) == 1


def test_drain_fails_while_a_call_is_dated_after_its_clock(
    tmp_path: Path, receiver: HttpOtlpReceiver
) -> None:
    """A call last heard of later than the drain's clock says (serve ran on a host whose clock was
    ahead) cannot be exported yet: said so, and not 0, so the volume is not retired with it."""
    state = tmp_path / "state"
    _store_open_call(state, time.time_ns() + 3600 * 10**9)
    drained = _drain(tmp_path, state, receiver)
    assert drained.returncode == 1, drained.stderr
    assert "1 call(s)" in drained.stderr and "still open" in drained.stderr
    assert "every export accepted" not in drained.stdout
    assert _open_calls(state) == [OPEN_CALL]


# --- requests the backend refused for good ---------------------------------------------------------
def test_drain_fails_when_the_backend_refused_requests_for_good(
    tmp_path: Path, receiver: HttpOtlpReceiver
) -> None:
    """Dead letters stay in the volume: the drain says how many and why (never their bodies), and
    does not exit 0, so that nobody deletes the volume unaware; a second drain says so again."""
    state = tmp_path / "state"
    marker = "body-marker-7f3a"
    body = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[Span(name=marker)])])]
    ).SerializeToString()
    store = open_state(state)
    try:
        with store.transaction() as tx:
            for _ in range(2):
                tx.spool_add("traces", body, 1, time.time_ns())
    finally:
        store.close()
    for _ in range(3):  # the two merged, then each alone
        receiver.reject_next(400, "invalid span", path="/v1/traces")
    drained = _drain(tmp_path, state, receiver)
    assert drained.returncode == 1, drained.stderr
    assert "every export accepted" not in drained.stdout
    assert "2 request(s)" in drained.stderr and "refused for good" in drained.stderr
    assert "2 during this drain" in drained.stderr
    assert (
        "dead_letters" in drained.stderr
        and "traces 400" in drained.stderr
        and "invalid span" in drained.stderr
    )
    summary = drained.stdout + drained.stderr.split("otelbridge drain:", 1)[1]
    assert marker not in summary

    again = _drain(tmp_path, state, receiver)
    assert again.returncode == 1, again.stderr
    assert "2 request(s)" in again.stderr and "0 during this drain" in again.stderr


def test_a_dead_letter_summary_is_short_one_line_and_bounded() -> None:
    dead = DeadLetters(
        requests=7,
        kinds=[("traces", "400", "bad\nline\x1b[2J" + "x" * 1000, 2)]
        + [("metrics", str(400 + i), f"reason {i}", 1) for i in range(5)],
    )
    summary = dead.summary()
    assert "\n" not in summary and "\x1b" not in summary
    assert 'traces 400 "bad\\nline' in summary and len(summary) < 600
    assert "reason 3" in summary and "reason 4" not in summary and summary.endswith("; 1 other kind(s)")
