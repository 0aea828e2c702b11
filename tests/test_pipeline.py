"""The pipeline's bounds on what listed calls may cost, on real SQLite files and a real OTLP
receiver: the points table is collected early once it holds many points, and listed calls wait
for a spool that holds too much (until it stops shrinking)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourceProto
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans
from opentelemetry.sdk.resources import Resource

from otelbridge import pipeline as pipeline_module
from otelbridge.ingest.processor import load_unexported_points
from otelbridge.pipeline import Pipeline
from otelbridge.settings import load_settings
from tests.support.cartesia_api import make_call
from tests.support.otlp_receiver import HttpAnswer, HttpOtlpReceiver

SECRET = "a-webhook-secret-of-32-characters!"


def _pipeline(state_dir: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "3600000")  # no collection on the clock
    settings = load_settings(None, state_dir=state_dir, webhook_secret=SECRET)
    pipeline = Pipeline(settings, Resource({"service.name": "test"}))
    assert pipeline.lease.acquire(0.0)
    return pipeline


def _calls(n: int) -> list[dict[str, Any]]:
    return [make_call("agent_p", k, turns=6) for k in range(n)]


def _lead(pipeline: Pipeline, work: Callable[[], Awaitable[None]]) -> None:
    """Run ``work`` while ``pipeline`` leads (processes, sends, collects), then close it."""

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await pipeline.run_loops(tg)
            await work()
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        pipeline.close()


def _points(pipeline: Pipeline) -> int:
    return len(load_unexported_points(pipeline.state))


def test_points_are_collected_early_once_many_wait(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    receiver = HttpOtlpReceiver().start()
    clean_env.setattr(pipeline_module, "POINTS_PER_COLLECTION", 300)
    pipeline = _pipeline(tmp_path / "state", receiver.url, clean_env)
    most: list[int] = []

    async def work() -> None:
        for page in range(4):
            calls = _calls(100)[page * 25 : page * 25 + 25]
            stored = await pipeline.take_calls(calls, "backfill", True, time.time_ns())
            assert stored.calls == 25
            await anyio.sleep(0.3)  # the metrics loop's turn
            most.append(await anyio.to_thread.run_sync(_points, pipeline))
        sent = await anyio.to_thread.run_sync(receiver.wait_until, lambda: bool(receiver.metric_requests))
        assert sent

    try:
        _lead(pipeline, work)
    finally:
        receiver.stop()
    # 25 six-turn calls make some 300 points: each take is followed by a collection that takes
    # them out of the table, long before the hour-long interval
    assert max(most) < 300, most
    assert any(name.startswith("cartesia.") for name in receiver.metric_names())


def test_listed_calls_wait_for_a_full_spool_then_go_on_once_it_stops_shrinking(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_env.setattr(pipeline_module, "LISTED_SPOOL_HIGH_BYTES", 20_000)
    clean_env.setattr(pipeline_module, "LISTED_STALL_S", 1.0)
    # nobody listens there: every export fails and the spool cannot shrink
    pipeline = _pipeline(tmp_path / "state", "http://127.0.0.1:9", clean_env)
    waited: list[float] = []
    held: list[int] = []

    async def work() -> None:
        for _ in range(3):
            started = time.monotonic()
            await pipeline.take_calls(_calls(25), "backfill", True, time.time_ns())
            waited.append(time.monotonic() - started)
        held.append(await anyio.to_thread.run_sync(pipeline._spool_bytes))

    caplog.set_level(logging.WARNING, logger="otelbridge.pipeline")
    _lead(pipeline, work)
    # the first take found an empty spool; the second waited for it to shrink, then went on;
    # the third did not wait again, the spool still not shrinking
    assert waited[0] < 1.0 and 1.0 <= waited[1] < 10.0 and waited[2] < 1.0, waited
    gave_up = [r.getMessage() for r in caplog.records if "has not shrunk for 1 s" in r.getMessage()]
    assert len(gave_up) == 1, caplog.text
    assert held[0] > 20_000  # all three takes are in it: nothing was dropped


def test_listed_calls_wait_while_the_sender_empties_the_spool(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    receiver = HttpOtlpReceiver().start()
    clean_env.setattr(pipeline_module, "LISTED_SPOOL_HIGH_BYTES", 20_000)
    pipeline = _pipeline(tmp_path / "state", receiver.url, clean_env)
    held: list[int] = []
    original = pipeline._spool_bytes

    def spool_bytes() -> int:
        held.append(original())
        return held[-1]

    clean_env.setattr(pipeline, "_spool_bytes", spool_bytes)

    async def work() -> None:
        await pipeline.take_calls(_calls(100), "backfill", True, time.time_ns())

    try:
        _lead(pipeline, work)
    finally:
        receiver.stop()
    # each of the four 25-call takes looked at the spool first; past the mark it looked again
    # until the sender had taken the spool below it
    assert held[0] == 0 and any(b > 20_000 for b in held), held
    assert len(held) > 4 and held[-1] <= 20_000, held
    assert receiver.span_ids()  # the sender ran meanwhile


def test_acknowledged_rows_waiting_for_their_delete_do_not_count_as_held(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """The sender deletes acknowledged rows in batches: until then they are in the spool's bytes,
    but listed calls wait only for what the backend has not taken."""
    receiver = HttpOtlpReceiver().start()
    # two exports taken, then the backend fails: the third row is retried, the first two wait
    # for a delete (the spool has not run dry)
    receiver.enqueue(*[HttpAnswer(200, path="/v1/traces")] * 2, *[HttpAnswer(503, path="/v1/traces")] * 50)
    pipeline = _pipeline(tmp_path / "state", receiver.url, clean_env)
    # over 1 MiB each: no two go out merged
    bodies = [_trace_request(letter * (1 << 20)) for letter in "abc"]
    with pipeline.state.transaction() as tx:
        for body in bodies:
            tx.spool_add("traces", body, 1, time.time_ns())
    seen: dict[str, int] = {}

    async def work() -> None:
        pipeline.sender.notify()
        assert await anyio.to_thread.run_sync(receiver.wait_until, lambda: len(receiver.requests) >= 3)

        def retrying() -> bool:  # the sender's account of its relay: two acknowledged, then a 503
            return pipeline.sender.states["traces"].failures > 0

        assert await anyio.to_thread.run_sync(receiver.wait_until, retrying)
        seen["held"] = await anyio.to_thread.run_sync(pipeline._spool_bytes)
        with pipeline.state.reading() as tx:
            seen["spool"] = tx.spool_bytes()

    try:
        _lead(pipeline, work)
    finally:
        receiver.stop()
    assert seen == {"held": len(bodies[2]), "spool": sum(map(len, bodies))}


def _trace_request(service: str) -> bytes:
    resource = ResourceSpans(
        resource=ResourceProto(attributes=[KeyValue(key="s", value=AnyValue(string_value=service))])
    )
    return bytes(ExportTraceServiceRequest(resource_spans=[resource]).SerializeToString())


def test_no_metrics_collection_follows_the_final_one(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    """A stop's drain (or a one-shot command's flush) makes the last collection and waits for
    the spool to empty: a periodic collection landing after it would be left unsent."""
    receiver = HttpOtlpReceiver().start()
    pipeline = _pipeline(tmp_path / "state", receiver.url, clean_env)
    sent: list[int] = []

    async def work() -> None:
        await pipeline.take_calls(_calls(2), "backfill", True, time.time_ns())
        await pipeline.collect_metrics(final=True)
        assert await anyio.to_thread.run_sync(receiver.wait_until, lambda: len(receiver.metric_requests) == 1)
        pipeline._collect_early.set()  # the metrics loop's turn, as its interval would give it
        await pipeline.collect_metrics()  # and anyone else's
        await anyio.sleep(0.5)
        sent.append(len(receiver.metric_requests))

    try:
        _lead(pipeline, work)
    finally:
        receiver.stop()
    assert sent == [1]
