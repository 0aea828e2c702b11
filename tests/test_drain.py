"""``otelbridge drain`` on a real state directory: what a serve received but could not export
(its backend was down, then it was killed) is processed and sent, every span once; a serve still
running keeps it out; a backend still down is said so, with nothing lost."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.support.otlp_receiver import HttpOtlpReceiver
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
