"""The daemon in-process: real uvicorn on loopback, real SQLite files, a real OTLP receiver.

(The subprocess tests — kill -9, SIGTERM, startup failures — are in tests/test_serve.py.)
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import httpx
import pytest

from otelbridge.cartesia.webhooks import parse_webhook_event
from otelbridge.daemon import Daemon, Endpoints
from otelbridge.ingest.assembly import CallAssembler
from otelbridge.mapping import conventions as c
from otelbridge.mapping import ids, map_call
from otelbridge.settings import Settings, load_settings
from otelbridge.store import state_path
from tests.support.otlp_receiver import HttpOtlpReceiver
from tests.support.samples import sample_calls, webhook_events

SECRET = "test-secret-0123"


def _events() -> list[dict[str, Any]]:
    return webhook_events()


def _expected(events: list[dict[str, Any]]) -> set[bytes]:
    assembler = CallAssembler()
    for event in events:
        assembler.add(parse_webhook_event(event))
    return {
        s.span_id.to_bytes(8, "big")
        for built in assembler.calls()
        for s in map_call(built.call, fallback_end_ns=built.fallback_end_ns).spans
    }


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("OTELBRIDGE_", "OTEL_")) or name.upper().endswith("_PROXY"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")


def _settings(state_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "state_dir": state_dir,
        "listen_port": 0,
        "admin_port": 0,
        "webhook_secret": SECRET,
        "retry_initial_backoff": 0.05,
        "retry_max_backoff": 0.2,
        "shutdown_timeout": 5.0,
        "service_instance_id": "test-instance",
    }
    values.update(overrides)
    return load_settings(None, **values)


class Running:
    def __init__(
        self, daemon: Daemon, endpoints: Endpoints, portal: anyio.from_thread.BlockingPortal
    ) -> None:
        self.daemon, self.endpoints, self.portal = daemon, endpoints, portal
        self.client = httpx.Client(timeout=10)

    def post(self, event: dict[str, Any] | bytes, **headers: str) -> httpx.Response:
        body = event if isinstance(event, bytes) else json.dumps(event).encode()
        sent = {"content-type": "application/json", "x-webhook-secret": SECRET} | headers
        return self.client.post(self.endpoints.webhook_url, content=body, headers=sent)

    @contextmanager
    def state(self) -> Iterator[sqlite3.Connection]:
        """A read connection to the pipeline's state.db."""
        conn = sqlite3.connect(state_path(self.daemon.settings.state_dir))
        try:
            yield conn
        finally:
            conn.close()

    def admin(self, path: str) -> httpx.Response:
        return self.client.get(self.endpoints.admin_url + path)


@contextmanager
def running(settings: Settings) -> Iterator[Running]:
    with anyio.from_thread.start_blocking_portal() as portal:
        daemon = Daemon(settings, settings.webhook_secrets(), settings.cartesia_api_key_value())
        future, endpoints = portal.start_task(daemon.run)
        run = Running(daemon, endpoints, portal)
        try:
            yield run
        finally:
            run.client.close()
            if not future.done():
                portal.call(daemon.request_stop)
            future.result(timeout=30)


def _post_all(run: Running, events: list[dict[str, Any]], workers: int = 8) -> list[int]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda e: run.post(e).status_code, events))


def _exactly_once(receiver: HttpOtlpReceiver, expected: set[bytes]) -> None:
    counts = Counter(s.span_id for s in receiver.spans())
    assert {k.hex(): n for k, n in counts.items() if n > 1} == {}
    assert set(counts) == expected


def test_concurrent_interleaved_calls_arrive_once_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _events()
    expected = _expected(events)
    with HttpOtlpReceiver() as receiver:
        for key, value in receiver.env().items():
            monkeypatch.setenv(key, value)
        with running(_settings(tmp_path / "state")) as run:
            assert set(_post_all(run, events)) == {200}
            assert receiver.wait_until(
                lambda: len({s.span_id for s in receiver.spans()}) >= len(expected), 15
            )
            # metrics: TTFB histograms with exemplars pointing at turn spans
            assert receiver.wait_until(lambda: c.METRIC_TTS_TTFB in receiver.metric_names(), 10)
        _exactly_once(receiver, expected)
        turn_ids = {
            s.span_id for s in receiver.spans() if s.name in (c.SPAN_USER_TURN, c.SPAN_ASSISTANT_TURN)
        }
        exemplar_ids = {
            e.span_id
            for m in receiver.metrics_by_name()[c.METRIC_TTS_TTFB]
            for p in m.histogram.data_points
            for e in p.exemplars
        }
        assert exemplar_ids and exemplar_ids <= turn_ids
        # response latency: exemplars point at the assistant turns that carry the value
        answered = {
            s.span_id: kv.value.double_value
            for s in receiver.spans()
            for kv in s.attributes
            if kv.key == c.TURN_RESPONSE_LATENCY
        }
        latency_exemplars = {
            e.span_id: e.as_double
            for m in receiver.metrics_by_name()[c.METRIC_RESPONSE_LATENCY]
            for p in m.histogram.data_points
            for e in p.exemplars
        }
        assert latency_exemplars and all(answered[k] == v for k, v in latency_exemplars.items())
        # resource and self-metrics over OTLP
        assert receiver.trace_resources()[0]["service.instance.id"] == "test-instance"
        assert c.SELF_WEBHOOKS in receiver.metric_names()


def test_backend_outage_then_recovery_loses_and_doubles_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _events()
    expected = _expected(events)
    with HttpOtlpReceiver() as receiver:
        for key, value in receiver.env().items():
            monkeypatch.setenv(key, value)
        receiver.fail_next(8, status=503, retry_after_s=0)
        with running(_settings(tmp_path / "state")) as run:
            assert set(_post_all(run, events)) == {200}
            assert receiver.wait_until(
                lambda: len({s.span_id for s in receiver.spans()}) >= len(expected), 20
            )
            metrics = run.admin("/metrics").text
        _exactly_once(receiver, expected)
        assert receiver.pending_answers == 0
        assert "otelbridge_export_attempts_total{" in metrics and 'outcome="retry"' in metrics


def test_restart_during_an_outage_sends_the_spool_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _events()
    expected = _expected(events)
    with HttpOtlpReceiver() as receiver:
        for key, value in receiver.env().items():
            monkeypatch.setenv(key, value)
        receiver.fail_next(10_000, status=503, retry_after_s=0)
        with running(_settings(tmp_path / "state", shutdown_timeout=0.5)) as run:
            assert set(_post_all(run, events)) == {200}
            deadline = time.monotonic() + 10
            while (ready := run.admin("/readyz").json())["checks"]["delivery"]["traces"]["failures"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert ready["status"] == "ready"  # an outage alone: webhooks are still stored
        assert receiver.span_ids() == set()
        receiver.clear_answers()  # the backend recovers
        with running(_settings(tmp_path / "state")):
            assert receiver.wait_until(
                lambda: len({s.span_id for s in receiver.spans()}) >= len(expected), 20
            )
        _exactly_once(receiver, expected)


def test_rejected_requests_go_to_dead_letters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = _events()
    with HttpOtlpReceiver() as receiver:
        for key, value in receiver.env().items():
            monkeypatch.setenv(key, value)
        with running(_settings(tmp_path / "state")) as run:
            # the start-up probe's empty export comes first; the refusal is for the spans
            assert receiver.wait_until(lambda: any(r.path == "/v1/traces" for r in receiver.requests), 10)
            receiver.reject_next(400, "bad span", path="/v1/traces")
            first = next(e for e in events if e["type"] == "call_started")
            turn = next(e for e in events if e["type"] == "call_turn" and e["call_id"] == first["call_id"])
            assert run.post(first).status_code == 200
            assert run.post(turn).status_code == 200
            assert receiver.wait_until(lambda: receiver.pending_answers == 0, 10)
            time.sleep(0.3)
            with run.state() as conn:
                dead = conn.execute("SELECT status, reason FROM dead_letters").fetchall()
            assert dead and dead[0][0] == "400" and "bad span" in dead[0][1]
            deadline = time.monotonic() + 5
            while "otelbridge_export_dead_letters_total" not in (text := run.admin("/metrics").text):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert "otelbridge_export_dead_letters_total{" in text
            assert run.admin("/readyz").status_code == 200


def test_partial_success_is_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = _events()
    with HttpOtlpReceiver() as receiver:
        for key, value in receiver.env().items():
            monkeypatch.setenv(key, value)
        receiver.partial_success_next(1, "span too old", path="/v1/traces")
        with running(_settings(tmp_path / "state")) as run:
            first = next(e for e in events if e["type"] == "call_started")
            turn = next(e for e in events if e["type"] == "call_turn" and e["call_id"] == first["call_id"])
            run.post(first)
            run.post(turn)
            deadline = time.monotonic() + 5
            while "otelbridge_export_rejected_total" not in (text := run.admin("/metrics").text):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert "otelbridge_export_rejected_total{" in text


def test_admin_endpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = _events()
    with HttpOtlpReceiver() as receiver:
        for key, value in receiver.env().items():
            monkeypatch.setenv(key, value)
        with running(_settings(tmp_path / "state")) as run:
            assert run.admin("/healthz").json() == {"status": "ok"}
            ready = run.admin("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "ready"
            _post_all(run, events[:60])
            assert run.post(events[0], **{"x-webhook-secret": "wrong"}).status_code == 401
            assert run.post({"type": "call_transferred", "call_id": "x", "agent_id": "a"}).json()[
                "status"
            ] == ("ignored")
            deadline = time.monotonic() + 5
            wanted = ("cartesia_tts_ttfb_seconds_bucket", 'outcome="unauthorized"', 'outcome="ignored"')
            while not all(w in (text := run.admin("/metrics").text) for w in wanted):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert "otelbridge_webhooks_total{" in text
            assert 'outcome="unauthorized"' in text and 'outcome="ignored"' in text
            assert "otelbridge_spool_depth" in text
            assert run.admin("/nope").status_code == 404
            assert run.client.post(run.endpoints.admin_url + "/metrics").status_code == 405


def test_graceful_stop_drains_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = _events()
    expected = _expected(events)
    with HttpOtlpReceiver() as receiver:
        for key, value in receiver.env().items():
            monkeypatch.setenv(key, value)
        with running(_settings(tmp_path / "state")) as run:
            assert set(_post_all(run, events)) == {200}
        # the context exit stopped the daemon: everything already at the receiver
        _exactly_once(receiver, expected)
        assert c.METRIC_TURNS in receiver.metric_names()


def test_a_webhook_in_flight_at_a_stop_gets_the_json_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop while a webhook waits for a slow store: the receiver's own answer (503, JSON,
    Retry-After) once its store timeout passes. uvicorn's graceful stop (5 s) cancelled it
    first, before the store's timeout (10 s): a text/plain 500 and a traceback in the log."""
    from otelbridge import daemon as daemon_module

    monkeypatch.setattr(daemon_module, "DEFAULT_STORE_TIMEOUT_S", 1.0)
    settings = _settings(tmp_path / "state")
    with running(settings) as run:
        locker = sqlite3.connect(settings.state_dir / "inbox.db", isolation_level=None, timeout=10)
        locker.execute("BEGIN IMMEDIATE")  # the store cannot commit
        try:
            with ThreadPoolExecutor(1) as pool:
                answer = pool.submit(run.post, _events()[0])
                time.sleep(0.3)  # in flight, waiting for the commit
                run.portal.call(run.daemon.request_stop)
                response = answer.result(timeout=20)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert "retry-after" in response.headers
    assert response.json()["error"] == "unavailable"


def test_metric_points_are_exported_once_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Delta temporality: the sum of cartesia.turns over every export equals the turns sent."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    events = _events()
    assembler = CallAssembler()
    for event in events:
        assembler.add(parse_webhook_event(event))
    turns = sum(
        int(p.value)
        for built in assembler.calls()
        for p in map_call(built.call, fallback_end_ns=built.fallback_end_ns).points
        if p.instrument == c.METRIC_TURNS
    )
    with HttpOtlpReceiver() as receiver:
        for key, value in receiver.env().items():
            monkeypatch.setenv(key, value)
        with running(_settings(tmp_path / "state")) as run:
            _post_all(run, events[:80])
        with running(_settings(tmp_path / "state")) as run:
            _post_all(run, events[80:])
        total = sum(
            p.as_int for m in receiver.metrics_by_name().get(c.METRIC_TURNS, []) for p in m.sum.data_points
        )
        assert total == turns


def _copies(events: list[dict[str, Any]], copies: int) -> list[dict[str, Any]]:
    """The sample calls ``copies`` times over under new call ids, every delivery shuffled in."""
    out = []
    for k in range(copies):
        for event in events:
            text = json.dumps(event)
            for call_id in {event[key] for key in ("call_id", "request_id") if key in event}:
                text = text.replace(f'"{call_id}"', f'"{call_id}-{k}"')
            out.append(json.loads(text))
    random.Random(5).shuffle(out)
    return out


def test_many_concurrent_calls_in_any_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """48 calls, 664 deliveries in random order from 16 connections: each span exactly once."""
    events = _copies(_events(), 4)
    expected = _expected(events)
    assert len(expected) > 600
    with HttpOtlpReceiver() as receiver:
        for key, value in receiver.env().items():
            monkeypatch.setenv(key, value)
        with running(_settings(tmp_path / "state")) as run:
            assert set(_post_all(run, events, workers=16)) == {200}
            assert receiver.wait_until(
                lambda: len({s.span_id for s in receiver.spans()}) >= len(expected), 30
            )
            with run.state() as conn:
                assert conn.execute("SELECT COUNT(*) FROM calls WHERE closed_ns IS NULL").fetchone()[0] == 0
        _exactly_once(receiver, expected)
        assert len(receiver.spans_by_trace()) == 48


def test_webhooks_and_polling_on_the_same_calls_each_span_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sample calls reach the daemon both ways — List Calls polling and webhooks, in
    parallel — and each span arrives once at the OTLP receiver."""
    from tests.support.cartesia_api import CartesiaStandIn

    calls = sample_calls()
    events = _events()
    expected = _expected(events)
    with HttpOtlpReceiver() as receiver, CartesiaStandIn() as api:
        for key, value in receiver.env().items():
            monkeypatch.setenv(key, value)
        api.add_calls(calls)
        settings = _settings(
            tmp_path / "state",
            cartesia_api_key=api.api_key,
            cartesia_base_url=api.url,
            agent_ids=",".join(sorted({c["agent_id"] for c in calls})),
            poll_interval=0.3,
        )
        with running(settings) as run:
            assert set(_post_all(run, events)) == {200}
            assert receiver.wait_until(
                lambda: len({s.span_id for s in receiver.spans()}) >= len(expected), 20
            )
            # the webhooks alone may have brought every span before both agents were polled
            assert receiver.wait_until(lambda: api.count("/agents/calls") >= 2, 10)
            time.sleep(1.0)  # more polls: still nothing twice
            ready = run.admin("/readyz").json()
            assert ready["checks"]["polling"]["reason"] == "polling"
        # A call whose webhook end lacks the summary its listed copy has: where the end went out
        # first, the summary read later is a call_analysis span of its own (else on the root)
        ended = {parse_webhook_event(e).resolved_call_id: e for e in events
                 if e["type"] in ("call_completed", "call_failed")}  # fmt: skip
        late = {
            ids.span_id(call["id"], ids.analysis_key()).to_bytes(8, "big")
            for call in calls
            if call.get("summary") and not (ended.get(call["id"], {}).get("call") or {}).get("summary")
        }
        counts = Counter(s.span_id for s in receiver.spans())
        assert {k.hex(): n for k, n in counts.items() if n > 1} == {}
        assert expected <= set(counts) <= expected | late
