"""The sender loop against scripted transport answers, on a real spool."""

from __future__ import annotations

import contextlib
import itertools
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otelbridge.delivery.environment import Signal
from otelbridge.delivery.meter import MetricRecorder
from otelbridge.delivery.sender import SWEEP_BYTES, Sender
from otelbridge.delivery.spool import Spool
from otelbridge.delivery.telemetry import Gauges, SelfMetrics
from otelbridge.delivery.transport import SendResult
from otelbridge.logs import active_redactor
from otelbridge.store import AckLog, StateStore, acks_path, open_acks, open_state, state_path
from otelbridge.store.sqlite import SqliteState
from tests.support.tmpfs import fill, tmpfs


class ScriptedTransport:
    """Answers from a script (then ``judge``'s answer, then ok), recording what it was sent and
    when."""

    def __init__(
        self, *answers: SendResult, judge: Callable[[bytes], SendResult | None] | None = None
    ) -> None:
        self.answers = list(answers)
        self.judge = judge
        self.sent: list[tuple[Signal, bytes, float]] = []
        self.lock = threading.Lock()

    def send(self, signal: Signal, body: bytes) -> SendResult:
        with self.lock:
            self.sent.append((signal, body, time.monotonic()))
            if self.answers:
                return self.answers.pop(0)
            judged = self.judge(body) if self.judge is not None else None
            return judged or SendResult("ok", "200", "")

    def endpoint(self, signal: Signal) -> str:
        return f"scripted/{signal}"

    def close(self) -> None:
        pass


def _sender(
    state: StateStore,
    transport: ScriptedTransport,
    reader: InMemoryMetricReader,
    *,
    merge: int = 0,
    acks: AckLog | None = None,
    sweep_max_bytes: int = SWEEP_BYTES,
    clock: Callable[[], int] = time.time_ns,
    spool_reader: StateStore | None = None,
) -> Sender:
    """A sender that sends each spooled request alone unless ``merge`` bytes are allowed."""
    provider = MeterProvider(metric_readers=[reader])
    return Sender(
        state,
        transport,
        SelfMetrics(provider, Gauges(), MetricRecorder(provider)),
        initial_backoff_s=0.05,
        max_backoff_s=0.2,
        rng=random.Random(7),
        merge_max_bytes={"traces": merge, "metrics": 0},
        acks=acks,
        sweep_max_bytes=sweep_max_bytes,
        clock=clock,
        reader=spool_reader,
    )


def _fill(state: StateStore, *bodies: bytes) -> None:
    with state.transaction() as tx:
        for body in bodies:
            tx.spool_add("traces", body, 1, 0)


def _counter(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, object], ...], float]:
    """The series of ``name`` that counted something (every known series starts at 0)."""
    return {labels: value for labels, value in _series(reader, name).items() if value}


def _points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    """The data points of metric ``name`` in a collection of ``reader``."""
    data = reader.get_metrics_data()
    if data is None:
        return []
    return [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def _series(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, object], ...], float]:
    return {tuple(sorted((p.attributes or {}).items())): p.value for p in _points(reader, name)}


def _run_until(sender: Sender, condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sender.run, "traces")
            with anyio.fail_after(timeout):
                while not condition():
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(main)


def _depth(state: StateStore) -> int:
    with state.reading() as tx:
        return sum(tx.spool_stats().depth.values())


def _dead(state: SqliteState) -> list[tuple[bytes, str]]:
    """The dead letters really in state.db (the store has no reader of them)."""
    with state.db.reading() as conn:
        rows = conn.execute("SELECT body, status FROM dead_letters ORDER BY id").fetchall()
    return [(bytes(r["body"]), r["status"]) for r in rows]


def test_retries_in_order_then_delivers_everything_once(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    _fill(state, b"1", b"2", b"3")
    transport = ScriptedTransport(
        SendResult("retry", "503", "busy", retry_after=0.0),
        SendResult("retry", "connection error", "refused"),
    )
    reader = InMemoryMetricReader()
    sender = _sender(state, transport, reader)
    _run_until(sender, lambda: _depth(state) == 0)
    bodies = [b for _, b, _ in transport.sent]
    assert bodies == [b"1", b"1", b"1", b"2", b"3"]  # the failed request is retried first; order kept
    attempts = _counter(reader, "otelbridge.export.attempts")
    assert attempts[(("outcome", "retry"), ("signal", "traces"))] == 2
    assert attempts[(("outcome", "ok"), ("signal", "traces"))] == 3
    state.close()


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    _fill(state, b"1")
    transport = ScriptedTransport(SendResult("retry", "429", "slow down", retry_after=0.6))
    sender = _sender(state, transport, InMemoryMetricReader())
    _run_until(sender, lambda: _depth(state) == 0)
    (_, _, first), (_, _, second) = transport.sent
    assert second - first >= 0.55
    state.close()


def test_reject_moves_to_dead_letters_and_goes_on(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    _fill(state, b"bad", b"good")
    transport = ScriptedTransport(SendResult("reject", "400", "invalid span"))
    reader = InMemoryMetricReader()
    sender = _sender(state, transport, reader)
    _run_until(sender, lambda: _depth(state) == 0)
    assert [b for _, b, _ in transport.sent] == [b"bad", b"good"]
    assert _dead(state) == [(b"bad", "400")]
    assert _counter(reader, "otelbridge.export.dead_letters") == {(("signal", "traces"),): 1}
    state.close()


def test_a_dead_letter_reason_is_stored_redacted(tmp_path: Path) -> None:
    """A backend's message may echo an OTLP header value: the stored reason does not keep it."""
    key = "dead-letter-key-9Xq2Wm"
    state = open_state(tmp_path)
    _fill(state, b"bad")
    transport = ScriptedTransport(SendResult("reject", "401", f"unknown api key {key}"))
    active = active_redactor()
    active.set([key])
    try:
        _run_until(_sender(state, transport, InMemoryMetricReader()), lambda: _depth(state) == 0)
    finally:
        active.set([])
    with state.db.reading() as conn:
        (reason,) = [r["reason"] for r in conn.execute("SELECT reason FROM dead_letters")]
    assert reason == "unknown api key [redacted]"
    state.close()


def test_partial_success_is_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = open_state(tmp_path)
    _fill(state, b"1")
    transport = ScriptedTransport(SendResult("ok", "200", "", rejected=3, partial_message="too old"))
    reader = InMemoryMetricReader()
    sender = _sender(state, transport, reader)
    _run_until(sender, lambda: _depth(state) == 0)
    assert _counter(reader, "otelbridge.export.rejected") == {(("signal", "traces"),): 3}
    assert "rejected 3 of 1" in caplog.text and "too old" in caplog.text
    state.close()


def test_backoff_grows_with_jitter_and_is_capped(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    sender = _sender(state, ScriptedTransport(), InMemoryMetricReader())
    delays = [sender.backoff(n) for n in range(1, 8)]
    assert 0.025 <= delays[0] <= 0.05
    assert 0.05 <= delays[1] <= 0.1
    assert all(0.1 <= d <= 0.2 for d in delays[3:])  # capped at retry_max_backoff
    # 2.0**1024 overflows a float: after ~1,000 failures (17 h of outage at 1-60 s) the sender
    # raised instead of waiting, and its restarted loop resent once a second
    assert all(0.1 <= sender.backoff(n) <= 0.2 for n in (1025, 1026, 10**6))
    state.close()


@pytest.mark.parametrize("retry_after", [0.0, None], ids=["retry-after-0", "no-retry-after"])
def test_a_retry_after_of_zero_still_backs_off(tmp_path: Path, retry_after: float | None) -> None:
    """``Retry-After: 0`` (or a date past, which reads 0) is a floor, not the wait: it resent at
    once, 40 requests in 2 s against a backend that kept answering so."""
    state = open_state(tmp_path)
    _fill(state, b"1")
    busy = SendResult("retry", "503", "busy", retry_after=retry_after)
    transport = ScriptedTransport(busy, busy, busy)
    _run_until(_sender(state, transport, InMemoryMetricReader()), lambda: _depth(state) == 0)
    times = [t for _, _, t in transport.sent]
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # backoff(1..3) with initial 0.05 s: at least 0.025, 0.05, 0.1 s (equal jitter: half fixed)
    assert [g >= low for g, low in zip(gaps, (0.025, 0.05, 0.1), strict=True)] == [True] * 3, gaps
    state.close()


def test_a_full_disk_keeps_the_backoff(tmp_path: Path) -> None:
    """Recording when to retry, or moving a refused request to dead letters, fails on a full
    volume: the sender still waits (the backend's Retry-After, its backoff) and goes on, where
    its loop raised and, restarted a second later, resent once a second whatever it was told."""
    with tmpfs(tmp_path / "vol", 8 * 1024 * 1024) as vol:
        state = open_state(vol)
        _fill(state, b"1", b"2")
        refused = SendResult("reject", "400", "invalid")
        transport = ScriptedTransport(
            SendResult("retry", "503", "busy", retry_after=0.3),
            judge=lambda body: refused if body == b"1" else None,
        )
        filler = fill(vol, 0)
        sender = _sender(state, transport, InMemoryMetricReader())

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sender.run, "traces")
                with anyio.fail_after(5):
                    while len(transport.sent) < 3:  # the retry, then refusals it cannot record
                        await anyio.sleep(0.01)
                filler.unlink()
                with anyio.fail_after(5):
                    while _depth(state):
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()

        anyio.run(main)
        times = [t for _, _, t in transport.sent]
        bodies = [b for _, b, _ in transport.sent]
        assert times[1] - times[0] >= 0.28  # Retry-After held though it could not be recorded
        assert all(b - a >= 0.025 for a, b in itertools.pairwise(times[1:-1]))  # the backoff
        assert bodies[-1] == b"2" and set(bodies[:-1]) == {b"1"}
        assert _dead(state) == [(b"1", "400")]  # moved once space came back
        state.close()


def test_the_size_cap_does_not_count_delivered_requests_as_dropped(tmp_path: Path) -> None:
    """Rows the backend acknowledged wait for the sender's delete. The size cap dropped them
    first, as the oldest, and counted them as requests lost ("SPOOL CAP REACHED: dropped N
    unsent"), though nothing unsent was lost: they are deleted now, not counted."""
    state = open_state(tmp_path)
    _fill(state, *[b"x" * 100] * 9, b"last" * 25)
    in_flight, release = threading.Event(), threading.Event()

    def judge(body: bytes) -> SendResult | None:
        if body == b"last" * 25:  # the last one stays in flight: no empty spool, no sweep yet
            in_flight.set()
            release.wait(10)
        return None

    transport = ScriptedTransport(judge=judge)
    sender = _sender(state, transport, InMemoryMetricReader())
    dropped: list[object] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sender.run, "traces")
            await anyio.to_thread.run_sync(in_flight.wait, 10)

            def process() -> None:  # the processor spools one more, then enforces the cap
                with state.transaction() as tx:
                    tx.spool_add("traces", b"y" * 100, 1, 0)
                    spool = Spool(max_bytes=600, max_age_ns=1 << 62, delivered=sender.acknowledged_ids)
                    dropped.append(spool.enforce_caps(tx, time.time_ns()).by)

            await anyio.to_thread.run_sync(process)
            release.set()
            with anyio.fail_after(5):
                while _depth(state):
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert dropped == [{}]  # 9 delivered, 2 unsent (one in flight, one new): 204 bytes, under the cap
    bodies = [b for _, b, _ in transport.sent]
    assert bodies == [b"x" * 100] * 9 + [b"last" * 25, b"y" * 100]  # each once, none dropped
    state.close()


def test_a_backlog_goes_out_merged_up_to_the_byte_cap(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    _fill(state, b"aa", b"bb", b"cc", b"dd", b"ee")
    transport = ScriptedTransport()
    reader = InMemoryMetricReader()
    sender = _sender(state, transport, reader, merge=6)
    _run_until(sender, lambda: _depth(state) == 0)
    assert [b for _, b, _ in transport.sent] == [b"aabbcc", b"ddee"]  # oldest first, <= 6 bytes each
    attempts = _counter(reader, "otelbridge.export.attempts")
    assert attempts == {(("outcome", "ok"), ("signal", "traces")): 2}
    state.close()


def test_a_request_over_the_cap_still_goes_alone(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    _fill(state, b"x" * 10, b"y")
    transport = ScriptedTransport()
    _run_until(_sender(state, transport, InMemoryMetricReader(), merge=4), lambda: _depth(state) == 0)
    assert [b for _, b, _ in transport.sent] == [b"x" * 10, b"y"]
    state.close()


def test_a_merged_request_retried_then_rejected_keeps_each_part(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    _fill(state, b"a", b"b")
    bad = SendResult("reject", "400", "bad span")
    transport = ScriptedTransport(SendResult("retry", "503", "busy", retry_after=0.0), bad, bad, bad)
    reader = InMemoryMetricReader()
    _run_until(_sender(state, transport, reader, merge=100), lambda: _depth(state) == 0)
    assert [b for _, b, _ in transport.sent] == [b"ab", b"ab", b"a", b"b"]  # refused alone too
    assert _dead(state) == [(b"a", "400"), (b"b", "400")]  # one dead letter per spooled request
    assert _counter(reader, "otelbridge.export.dead_letters") == {(("signal", "traces"),): 2}
    state.close()


def test_a_merged_export_refused_as_too_large_is_split_and_every_part_delivered(tmp_path: Path) -> None:
    """A backend with a smaller size limit than the merge's (413): before, every spooled
    request of the export was dead-lettered, though each would pass alone."""
    state = open_state(tmp_path)
    _fill(state, b"aa", b"bb", b"cc", b"dd")
    limit = 4  # the backend's: bodies over 4 bytes are refused
    transport = ScriptedTransport(
        judge=lambda body: SendResult("reject", "413", "too large") if len(body) > limit else None
    )
    reader = InMemoryMetricReader()
    sender = _sender(state, transport, reader, merge=100)
    _run_until(sender, lambda: _depth(state) == 0)
    assert [b for _, b, _ in transport.sent] == [b"aabbccdd", b"aabb", b"ccdd"]
    assert _dead(state) == []
    assert _counter(reader, "otelbridge.export.dead_letters") == {}
    # the signal merges at most half the refused size from then on: no second refusal
    _fill(state, b"ee", b"ff", b"gg")
    _run_until(sender, lambda: _depth(state) == 0)
    assert [b for _, b, _ in transport.sent][3:] == [b"eeff", b"gg"]


def test_a_merged_export_refused_400_dead_letters_only_the_bad_request(tmp_path: Path) -> None:
    """One bad request in a merged export (400): the others are delivered, it alone is dead."""
    state = open_state(tmp_path)
    _fill(state, b"a", b"b", b"X", b"d", b"e")
    transport = ScriptedTransport(
        judge=lambda body: SendResult("reject", "400", "invalid span") if b"X" in body else None
    )
    reader = InMemoryMetricReader()
    _run_until(_sender(state, transport, reader, merge=100), lambda: _depth(state) == 0)
    assert [b for _, b, _ in transport.sent] == [b"abXde", b"ab", b"Xde", b"X", b"de"]
    assert _dead(state) == [(b"X", "400")]
    assert _counter(reader, "otelbridge.export.dead_letters") == {(("signal", "traces"),): 1}
    attempts = _counter(reader, "otelbridge.export.attempts")
    assert attempts == {
        (("outcome", "ok"), ("signal", "traces")): 2,
        (("outcome", "reject"), ("signal", "traces")): 3,
    }


def test_a_part_that_meets_an_outage_waits_in_order(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    _fill(state, b"a", b"b", b"c", b"d")
    transport = ScriptedTransport(
        SendResult("reject", "400", "bad"),  # abcd
        SendResult("ok", "200", ""),  # ab
        SendResult("retry", "503", "busy", retry_after=0.0),  # cd
    )
    _run_until(_sender(state, transport, InMemoryMetricReader(), merge=100), lambda: _depth(state) == 0)
    assert [b for _, b, _ in transport.sent] == [b"abcd", b"ab", b"cd", b"cd"]
    assert _dead(state) == []


def test_a_refusal_that_is_not_about_the_content_is_not_split(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    _fill(state, b"a", b"b")
    transport = ScriptedTransport(SendResult("reject", "401", "bad key"))
    _run_until(_sender(state, transport, InMemoryMetricReader(), merge=100), lambda: _depth(state) == 0)
    assert [b for _, b, _ in transport.sent] == [b"ab"]
    assert _dead(state) == [(b"a", "401"), (b"b", "401")]


def test_an_acknowledged_export_is_recorded_without_waiting_for_state_db(tmp_path: Path) -> None:
    """The processor holds state.db's write lock through a batch (seconds under load): the
    sender's record of a 2xx must not wait behind it, or a kill -9 meanwhile re-sends it."""
    state, acks = open_state(tmp_path), open_acks(tmp_path)
    _fill(state, b"a")
    holder = sqlite3.connect(state_path(tmp_path), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a long write transaction of someone else's
    watcher = sqlite3.connect(acks_path(tmp_path))
    transport = ScriptedTransport()
    sender = _sender(state, transport, InMemoryMetricReader(), acks=acks)
    recorded_while_held = False

    def acked() -> bool:
        return bool(watcher.execute("SELECT COUNT(*) FROM acked").fetchone()[0])

    async def main() -> None:
        nonlocal recorded_while_held
        async with anyio.create_task_group() as tg:
            tg.start_soon(sender.run, "traces")
            with anyio.move_on_after(3):
                while not acked():
                    await anyio.sleep(0.01)
            recorded_while_held = acked()
            holder.execute("ROLLBACK")  # the delete may go on now
            with anyio.fail_after(5):
                while _depth(state):
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        holder.close()
        watcher.close()
    assert [b for _, b, _ in transport.sent] == [b"a"]
    assert recorded_while_held, "the ack waited for state.db's write lock"
    state.close()
    acks.close()


def test_a_start_deletes_what_was_acknowledged_before_a_crash_unsent(tmp_path: Path) -> None:
    state, acks = open_state(tmp_path), open_acks(tmp_path)
    _fill(state, b"acked", b"not acked")
    with state.reading() as tx:
        first, second = tx.spool_take("traces", 1 << 20)
    # what the killed sender had recorded; an ack of a row of another state.db (same id,
    # another time) is not this spool's
    acks.record([first, replace(second, created_ns=second.created_ns + 1)], [])
    transport = ScriptedTransport()
    sender = _sender(state, transport, InMemoryMetricReader(), acks=acks)
    assert sender.recovered == 1
    _run_until(sender, lambda: _depth(state) == 0)
    assert [b for _, b, _ in transport.sent] == [b"not acked"]
    assert acks.acked() == [(second.id, second.created_ns)]  # the new one
    state.close()
    acks.close()


def test_metrics_requests_are_never_merged(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    with state.transaction() as tx:
        for body in (b"m1", b"m2"):
            tx.spool_add("metrics", body, 1, 0)
    transport = ScriptedTransport()
    provider = MeterProvider()
    sender = Sender(
        state,
        transport,
        SelfMetrics(provider, Gauges(), MetricRecorder(provider)),
        initial_backoff_s=0.05,
        max_backoff_s=0.2,
    )  # the default caps

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sender.run, "metrics")
            with anyio.fail_after(5):
                while _depth(state):
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert [b for _, b, _ in transport.sent] == [b"m1", b"m2"]
    state.close()


def test_concatenated_trace_requests_are_one_valid_request() -> None:
    """What merging relies on: protobuf appends the repeated fields of concatenated messages."""

    def request(name: str) -> bytes:
        span = Span(trace_id=bytes(16), span_id=bytes(8), name=name)
        message = ExportTraceServiceRequest(
            resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
        )
        return bytes(message.SerializeToString())

    merged = ExportTraceServiceRequest.FromString(request("turn 1") + request("turn 2"))
    assert [ss.spans[0].name for rs in merged.resource_spans for ss in rs.scope_spans] == ["turn 1", "turn 2"]


def test_every_known_counter_series_is_exported_from_start_at_zero() -> None:
    """``increase()`` alerts need a series before the first failure, and ``absent()`` must
    not fire on a healthy daemon: each counter series with labels known up front starts at 0."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    SelfMetrics(provider, Gauges(), MetricRecorder(provider))
    signals = [(("signal", s),) for s in ("metrics", "traces")]
    assert _series(reader, "otelbridge.export.dead_letters") == dict.fromkeys(signals, 0)
    assert _series(reader, "otelbridge.export.rejected") == dict.fromkeys(signals, 0)
    assert _series(reader, "otelbridge.spool.dropped") == {
        (("reason", r), ("signal", s)): 0 for r in ("age", "size") for s in ("metrics", "traces")
    }
    assert _series(reader, "otelbridge.export.attempts") == {
        (("outcome", o), ("signal", s)): 0 for o in ("ok", "reject", "retry") for s in ("metrics", "traces")
    }
    for name in ("otelbridge.processing.errors", "otelbridge.late_log_items", "otelbridge.spans"):
        assert _series(reader, name) == {(): 0}
    assert set(_series(reader, "otelbridge.events")) == {
        (("type", t),)
        for t in ("call_started", "call_turn", "call_completed", "call_failed", "post_call_analysis")
    }


def _lags(reader: InMemoryMetricReader) -> tuple[int, float]:
    """(count, sum) of the export lag histogram."""
    points = _points(reader, "otelbridge.export.lag")
    if not points:
        return 0, 0.0
    (point,) = points
    return point.count, point.sum


def test_the_lag_of_every_acknowledged_call_is_recorded(tmp_path: Path) -> None:
    """Each call end of an acknowledged export is a lag point, from the call's end to when the
    backend answered (not to when the sender's loop got round to it), all recorded before the
    sender goes idle."""
    second = 1_000_000_000
    now = 100 * second
    state = open_state(tmp_path)
    with state.transaction() as tx:  # three exports ending calls 1 s, 2 s, ... 6 s before now
        for ends in ([now - 1 * second, now - 2 * second], [now - 3 * second], [now - 6 * second] * 3):
            tx.spool_add("traces", b"x", 1, 0, call_ends=ends)
    reader = InMemoryMetricReader()
    clock = [now]

    def judge(body: bytes) -> SendResult | None:
        clock[0] = now  # the answer comes at "now"; the loop's bookkeeping reads a later clock
        return None

    def later() -> int:
        clock[0] += 10 * second
        return clock[0] - 10 * second

    transport = ScriptedTransport(judge=judge)
    sender = _sender(state, transport, reader, clock=later)
    # all six while the sender still runs, idle: not left for a stop to record
    _run_until(sender, lambda: sender.idle() and _lags(reader)[0] == 6)
    assert len(transport.sent) == 3
    assert _lags(reader) == (6, 1 + 2 + 3 + 6 * 3)
    state.close()


def test_a_backlog_is_relayed_each_acknowledgement_recorded_before_the_next_export(tmp_path: Path) -> None:
    """Acknowledged exports are followed by the next at once, from the same worker thread (no
    hop to the event loop between two), each recorded in the ack log before the next goes out;
    a refused one ends the relay, and the rest waits for it."""
    state, acks = open_state(tmp_path), open_acks(tmp_path)
    _fill(state, b"1", b"2", b"3", b"4")
    seen: list[tuple[bytes, int, list[int]]] = []

    def judge(body: bytes) -> SendResult | None:
        seen.append((body, threading.get_ident(), sorted(i for i, _ in acks.acked())))
        if body == b"3" and sum(1 for b, _, _ in seen if b == b"3") == 1:
            return SendResult("retry", "503", "busy")
        return None

    transport = ScriptedTransport(judge=judge)
    sender = _sender(state, transport, InMemoryMetricReader(), acks=acks)
    _run_until(sender, lambda: len(transport.sent) == 5 and sender.idle())
    assert [body for body, _, _ in seen] == [b"1", b"2", b"3", b"3", b"4"]
    first, second, third = seen[0], seen[1], seen[2]
    assert first[1] == second[1] == third[1]  # one relay: one thread
    assert first[2] == [] and second[2] == [1] and third[2] == [1, 2]  # the ack log, as each left
    assert seen[4][2][-1] == 3  # after the retry, 3 was recorded before 4 went out
    assert sender.states["traces"].sent == 4
    state.close()
    acks.close()


class _FlakyReader:
    """The spool's reader, whose ``fail_at``-th read fails."""

    def __init__(self, state: StateStore, fail_at: int) -> None:
        self.state, self.fail_at, self.reads = state, fail_at, 0

    @contextlib.contextmanager
    def reading(self) -> Iterator[Any]:
        self.reads += 1
        if self.reads == self.fail_at:
            raise sqlite3.OperationalError("disk I/O error")
        with self.state.reading() as tx:
            yield tx


def test_a_failed_read_during_a_relay_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    """The read of the next request fails while one is in flight: that one's acknowledgement is
    still accounted for, and the loop reads again (here with success): each sent once."""
    state = open_state(tmp_path)
    _fill(state, b"1", b"2", b"3")
    reader = _FlakyReader(state, fail_at=2)  # the first read-ahead
    transport = ScriptedTransport()
    sender = _sender(state, transport, InMemoryMetricReader(), spool_reader=cast(StateStore, reader))
    _run_until(sender, lambda: len(transport.sent) == 3 and sender.idle())
    assert [b for _, b, _ in transport.sent] == [b"1", b"2", b"3"]
    assert sender.states["traces"].sent == 3 and reader.reads >= 4
    state.close()


def test_acknowledged_rows_are_deleted_in_batches_and_never_sent_twice(tmp_path: Path) -> None:
    """The next request is read past the last acknowledged id; the acknowledged rows are deleted
    many exports at a time (here: when the spool runs dry); a restart sends none again."""
    state, acks = open_state(tmp_path), open_acks(tmp_path)
    _fill(state, b"1", b"2", b"3", b"4")
    depths: list[int] = []

    def judge(body: bytes) -> SendResult | None:
        depths.append(_depth(state))  # rows still in the spool while this one is sent
        return None

    transport = ScriptedTransport(judge=judge)
    sender = _sender(state, transport, InMemoryMetricReader(), acks=acks)
    _run_until(sender, lambda: len(transport.sent) == 4 and sender.idle())
    assert [b for _, b, _ in transport.sent] == [b"1", b"2", b"3", b"4"]  # each once, in order
    assert depths == [4, 4, 4, 4]  # nothing deleted between exports: one commit for all
    assert _depth(state) == 0  # deleted when the spool ran dry
    again = ScriptedTransport()
    restarted = _sender(state, again, InMemoryMetricReader(), acks=acks)
    _run_until(restarted, restarted.idle)
    assert again.sent == []
    state.close()


def test_acknowledged_rows_are_deleted_before_the_spool_runs_dry_once_their_bytes_add_up(
    tmp_path: Path,
) -> None:
    """A long backlog does not keep every acknowledged body until its end: past
    ``sweep_max_bytes`` of them, a delete runs beside the next exports."""
    state, acks = open_state(tmp_path), open_acks(tmp_path)
    _fill(state, b"11", b"22", b"33", b"44", b"55", b"66")
    depths: list[int] = []

    def judge(body: bytes) -> SendResult | None:
        deadline = time.monotonic() + 3.0
        while body == b"66" and _depth(state) == 6 and time.monotonic() < deadline:
            time.sleep(0.01)  # the last export waits for a sweep (or gives up, and the test fails)
        depths.append(_depth(state))
        return None

    transport = ScriptedTransport(judge=judge)
    # past two of these 2-byte bodies
    sender = _sender(state, transport, InMemoryMetricReader(), acks=acks, sweep_max_bytes=4)
    _run_until(sender, lambda: len(transport.sent) == 6 and sender.idle(), timeout=10.0)
    assert [b for _, b, _ in transport.sent] == [b"11", b"22", b"33", b"44", b"55", b"66"]
    assert depths[0] == 6
    assert depths[-1] < 6  # deleted while the spool still had rows to send
    assert _depth(state) == 0
    state.close()
