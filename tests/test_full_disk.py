"""A full state volume, for real: a small tmpfs (mounted for the test; root, as CI runs) filled
by a file and by webhooks, under a real ``otelbridge serve`` and a real OTLP receiver, and the
pipeline's loops and drain on a volume with no byte left.

What must hold: below ``OTELBRIDGE_MIN_FREE_BYTES`` webhooks get 503 + ``Retry-After`` with a
message naming the problem and ``/readyz`` says why it is not ready; once space returns it is
ready again by itself, with no traffic (a load balancer gating on readiness sends none), and
every acknowledged event is exported. On a volume with no space at all, the log shows SQLite's
own error once with its traceback (not "cannot rollback", not once a second), and the drain
ends cleanly. A batch whose volume fills inside one event fails whole, committing nothing;
processed again once space returns, it spools each span and each point once.
"""

from __future__ import annotations

import copy
import logging
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource

from otelbridge.pipeline import Pipeline, resilient
from otelbridge.settings import load_settings
from otelbridge.store import StoreWriteError, free_bytes, open_inbox, state_path
from tests.support.inbox_events import store_events
from tests.support.otlp_receiver import HttpOtlpReceiver
from tests.support.processing import open_processor
from tests.support.samples import webhook_events
from tests.support.serve_process import (
    SECRET_HEADER,
    Delivery,
    Poster,
    ServeProcess,
    expected_span_ids,
    sample_deliveries,
)
from tests.support.tmpfs import fill, tmpfs
from tests.test_serve import SECRET, Daemons, assert_exactly_once, stop_gracefully, wait_for_every_span

MiB = 1024 * 1024
FLOOR = 8 * MiB
#: the floor is set a few times the body limit, as the default is (64 MiB for 8 MiB bodies)
FLOOR_ENV = {"OTELBRIDGE_MIN_FREE_BYTES": str(FLOOR), "OTELBRIDGE_MAX_BODY_BYTES": str(2 * MiB)}
RECOVERY_S = 10.0


@pytest.fixture
def daemons(tmp_path: Path, receiver: HttpOtlpReceiver) -> Iterator[Daemons]:
    d = Daemons(tmp_path, receiver)
    try:
        yield d
    finally:  # before the volume is unmounted and the receiver stops
        d.close()


@pytest.fixture
def volume(tmp_path: Path, daemons: Daemons) -> Iterator[Path]:
    """A 32 MiB tmpfs; unmounted after the daemons are gone (it depends on them)."""
    with tmpfs(tmp_path / "vol", 32 * MiB) as vol:
        yield vol


@pytest.fixture(scope="module")
def deliveries() -> list[Delivery]:
    return sample_deliveries()


def post_one(daemon: ServeProcess, delivery: Delivery) -> httpx.Response:
    headers = {"Content-Type": "application/json", SECRET_HEADER: SECRET}
    return httpx.post(daemon.webhook_url, content=delivery.body, headers=headers, timeout=10)


def post_fillers(daemon: ServeProcess, template: Delivery, size: int, count: int) -> list[int]:
    """``count`` ``call_started`` of new calls, each with an extra field of ``size`` bytes (the
    schema allows extra fields): calls that stay open, so their events stay on the volume; the
    statuses."""
    headers = {"Content-Type": "application/json", SECRET_HEADER: SECRET}
    statuses = []
    with httpx.Client(timeout=10) as client:
        for n in range(count):
            event = {**template.event, "call_id": f"ac_sid_filler{n:04d}", "padding": "x" * size}
            statuses.append(client.post(daemon.webhook_url, json=event, headers=headers).status_code)
    return statuses


def deliver_until_acked(daemon: ServeProcess, deliveries: list[Delivery], rounds: int = 4) -> None:
    """What Cartesia does: deliver again whatever was not acknowledged, a while later. (Ready
    and taking webhooks may disagree for up to a second: the webhook side reads the volume
    once a second and reports once a second.)"""
    left = deliveries
    for _ in range(rounds):
        poster = Poster(daemon.webhook_url, SECRET)
        poster.post_all(left)
        left = [d for d in left if d.index not in poster.acked]
        if not left:
            return
        assert set(poster.answers.values()) <= {200, 503}, poster.answers
        time.sleep(1.0)
    raise AssertionError(f"{len(left)} deliveries never acknowledged; stderr:\n{daemon.stderr}")


def readyz(daemon: ServeProcess) -> httpx.Response | None:
    try:
        return httpx.get(f"{daemon.admin_url}/readyz", timeout=3)
    except httpx.TransportError:
        return None


def wait_readyz(daemon: ServeProcess, status: int, timeout: float) -> tuple[httpx.Response, float]:
    """Poll /readyz (nothing else is sent) until it answers ``status``; the answer and the
    seconds it took."""
    started = time.monotonic()
    answer = None
    while time.monotonic() - started < timeout:
        answer = readyz(daemon)
        if answer is not None and answer.status_code == status:
            return answer, time.monotonic() - started
        time.sleep(0.1)
    last = "no answer" if answer is None else f"{answer.status_code} {answer.text}"
    raise AssertionError(f"/readyz not {status} within {timeout:g}s (last: {last}); stderr:\n{daemon.stderr}")


def assert_refused_for_space(daemon: ServeProcess, delivery: Delivery) -> None:
    response = post_one(daemon, delivery)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"] == "unavailable"
    assert "OTELBRIDGE_MIN_FREE_BYTES" in response.json()["message"]
    ready = readyz(daemon)
    assert ready is not None and ready.status_code == 503, ready and ready.text
    reason = ready.json()["checks"]["state_store"]["reason"]
    assert reason.startswith("free space ") and f"below OTELBRIDGE_MIN_FREE_BYTES ({FLOOR})" in reason


def test_webhooks_filling_the_volume_get_503_and_readiness_recovers_with_no_traffic(
    daemons: Daemons, receiver: HttpOtlpReceiver, volume: Path, deliveries: list[Delivery]
) -> None:
    daemon = daemons.start(volume / "state", env=dict(FLOOR_ENV))
    half = len(deliveries) // 2
    first = Poster(daemon.webhook_url, SECRET)
    first.post_all(deliveries[:half])
    assert len(first.acked) == half

    filler = fill(volume, FLOOR + 1 * MiB)  # a file, then webhooks take the rest
    time.sleep(1.5)  # the webhook side reads the volume once a second: let it see the file
    call_started = next(d for d in deliveries if d.event["type"] == "call_started")
    answers = post_fillers(daemon, call_started, 64 * 1024, 64)  # 4 MiB into 1 MiB
    assert answers[0] == 200 and 503 in answers and set(answers) == {200, 503}, answers
    assert_refused_for_space(daemon, deliveries[half])

    filler.unlink()
    _, took = wait_readyz(daemon, 200, RECOVERY_S)
    assert took < RECOVERY_S

    deliver_until_acked(daemon, deliveries[half:])
    expected = expected_span_ids(d.event for d in deliveries)  # the filler calls stay open
    wait_for_every_span(receiver, expected, daemon)
    stop_gracefully(daemon)
    assert_exactly_once(receiver, expected)
    stderr = daemon.stderr
    assert "refusing webhooks (503): free space" in stderr and "Fix: free space on the volume" in stderr
    assert "Traceback" not in stderr


def test_a_restart_on_a_full_volume_is_not_ready_and_recovers_by_itself(
    daemons: Daemons, receiver: HttpOtlpReceiver, volume: Path, deliveries: list[Delivery]
) -> None:
    state = volume / "state"
    half = len(deliveries) // 2
    first = daemons.start(state, env=dict(FLOOR_ENV))
    Poster(first.webhook_url, SECRET).post_all(deliveries[:half])
    stop_gracefully(first)

    filler = fill(volume, 512 * 1024)  # below the floor, as a volume that filled while it was down
    second = daemons.start(state, ready=False, env=dict(FLOOR_ENV))
    wait_readyz(second, 503, 15)
    assert_refused_for_space(second, deliveries[half])

    filler.unlink()
    wait_readyz(second, 200, RECOVERY_S)
    deliver_until_acked(second, deliveries[half:])
    expected = expected_span_ids(d.event for d in deliveries)
    wait_for_every_span(receiver, expected, second)
    stop_gracefully(second)
    assert_exactly_once(receiver, expected)
    assert "Traceback" not in second.stderr


def test_with_no_space_left_the_log_names_sqlites_error_once_and_the_drain_ends_cleanly(
    tmp_path: Path,
    clean_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    deliveries: list[Delivery],
) -> None:
    """The processor's loop on a volume with no byte left fails at every attempt: its traceback
    once, with SQLite's own error; the drain logs what it could not do and returns; nothing
    stored is lost once space returns."""
    caplog.set_level(logging.INFO, logger="otelbridge")
    with tmpfs(tmp_path / "vol", 16 * MiB) as vol:
        state = vol / "state"
        settings = load_settings(None, state_dir=state, webhook_secret=SECRET, exporter="none")
        pipeline = Pipeline(settings, Resource({}))
        try:
            inbox = open_inbox(state)
            inbox.append([(time.time_ns(), d.event["type"], d.call_id, d.body) for d in deliveries])
            inbox.close()
            filler = fill(vol, 0)
            attempts = 0

            async def process() -> None:
                nonlocal attempts
                attempts += 1
                await pipeline.process_all()

            async def main() -> None:
                with anyio.move_on_after(1.5):
                    await resilient("processor", process, delay_s=0.02)
                await pipeline.drain(0.2)  # returns: no ExceptionGroup, no traceback

            anyio.run(main)
            assert attempts >= 5  # each one reads and maps the whole inbox before failing
            failures = [r for r in caplog.records if "the processor loop failed" in r.getMessage()]
            assert len([r for r in failures if r.exc_info]) == 1, "one traceback, not one per attempt"
            assert len(failures) == 1  # the short line comes once a minute
            assert "OperationalError: database or disk is full" in failures[0].getMessage()
            assert "cannot rollback" not in caplog.text
            assert (
                "stopping: could not process the stored events (StoreWriteError: the state store cannot "
                "be written (OperationalError: database or disk is full))" in caplog.text
            )
            assert "everything received was exported" not in caplog.text

            filler.unlink()  # space is back: everything stored is still there and processed
            anyio.run(pipeline.process_all)
            assert pipeline.processor.watermark() == len(deliveries)
        finally:
            pipeline.close()


def test_a_loop_failing_the_same_way_logs_one_traceback_then_a_counted_line_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A closed store: every attempt fails alike. One traceback, then one short line per
    ``quiet_s`` counting the failures; a different error gets its traceback again."""
    caplog.set_level(logging.INFO, logger="otelbridge.pipeline")
    inbox = open_inbox(tmp_path)
    inbox.close()
    attempts = 0

    async def loop() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 40:
            raise RuntimeError("something else")
        with inbox.db.transaction():  # sqlite3.ProgrammingError: Cannot operate on a closed database.
            pass

    async def main() -> None:
        with anyio.move_on_after(1.2):
            await resilient("test", loop, delay_s=0.01, quiet_s=0.3)

    anyio.run(main)
    assert attempts > 40
    records = [r for r in caplog.records if "the test loop failed" in r.getMessage()]
    tracebacks = [r.getMessage() for r in records if r.exc_info]
    assert len(tracebacks) == 3, tracebacks  # the first, the different one, the first again
    assert "Cannot operate on a closed database" in tracebacks[0]
    assert "RuntimeError: something else" in tracebacks[1]
    counted = [r.getMessage() for r in records if not r.exc_info]
    assert 1 <= len(counted) <= 6, counted  # about one per 0.3 s, not one per attempt
    assert all(" time(s) in 0.3s (ProgrammingError: " in line for line in counted), counted


# --- a volume that fills inside one event's savepoint ---------------------------------------------
#: the processors' clock: what a run stores must not depend on when it ran
NOW_NS = 1_790_000_000 * 10**9


class Store:
    """``state.db`` and ``inbox.db`` in ``state_dir`` and a Processor on them."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.state, self.inbox, self.processor = open_processor(state_dir, clock=lambda: NOW_NS)

    def run(self) -> None:
        while self.processor.process_batch().events:
            pass

    def close(self) -> None:
        self.state.close()
        self.inbox.close()


@dataclass(frozen=True)
class Committed:
    """What ``state.db`` holds, read from the file by a connection of its own."""

    watermark: int
    rows: dict[str, int]  # per table
    span_ids: list[bytes]  # of every spooled traces request
    points: list[str]  # JSON, not yet in a metrics request


def committed(state_dir: Path) -> Committed:
    conn = sqlite3.connect(f"file:{state_path(state_dir)}?mode=ro", uri=True)
    try:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = {table: conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0] for table in tables}
        found = conn.execute("SELECT value FROM meta WHERE key='inbox_watermark'").fetchone()
        span_ids = []
        for (body,) in conn.execute("SELECT body FROM spool WHERE signal='traces' ORDER BY id"):
            for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
                span_ids += [s.span_id for ss in rs.scope_spans for s in ss.spans]
        points = [point for (point,) in conn.execute("SELECT point FROM points ORDER BY id")]
    finally:
        conn.close()
    return Committed(int(found[0]) if found else 0, rows, span_ids, points)


def call_started(call_id: str) -> dict[str, Any]:
    """The samples' first ``call_started`` (with its call), for ``call_id``."""
    sample = next(e for e in webhook_events() if e["type"] == "call_started" and e.get("call"))
    started = copy.deepcopy(sample)
    started["call_id"] = started["call"]["id"] = call_id
    return started


def small_call() -> list[dict[str, Any]]:
    """``call_started`` and four turns of one call (left open): a few kB to store."""
    turn = next(e for e in webhook_events() if e["type"] == "call_turn")
    turns = []
    for n in range(4):
        t = copy.deepcopy(turn)
        t["call_id"] = "ac_sid_small"
        t["turn"]["role"] = "user" if n % 2 else "assistant"
        t["turn"]["start_timestamp"], t["turn"]["end_timestamp"] = 0.5 + 3 * n, 2.5 + 3 * n
        turns.append(t)
    return [call_started("ac_sid_small"), *turns]


def big_event(size: int) -> dict[str, Any]:
    """``call_started`` of another call with ``size`` bytes more (kept in ``call_events``)."""
    return {**call_started("ac_sid_big"), "padding": "x" * size}


def cache_bytes(conn: sqlite3.Connection) -> int:
    """SQLite's page cache of ``conn``: a transaction writing more spills to the WAL before
    its COMMIT."""
    size = int(conn.execute("PRAGMA cache_size").fetchone()[0])
    return -size * 1024 if size < 0 else size * int(conn.execute("PRAGMA page_size").fetchone()[0])


def test_a_volume_filling_inside_one_big_event_fails_the_whole_batch_and_spools_each_span_once(
    tmp_path: Path,
) -> None:
    """One batch: a small call, then an event too big for the space left, which SQLite spills
    to the WAL inside the event's savepoint; SQLITE_FULL rolls the whole transaction back.
    The batch must fail whole (before the fix the event was skipped as a bug and the rest of
    the batch committed statement by statement, without the watermark: processed again once
    space came back, its spans and points were spooled twice)."""
    small = small_call()
    with tmpfs(tmp_path / "vol", 32 * MiB) as vol:
        # what the small call takes on this volume: processed alone, on a store of its own
        probe = Store(vol / "probe")
        try:
            store_events(probe.inbox, small)
            free = free_bytes(vol)
            probe.run()
            need = free - free_bytes(vol)
            cache = cache_bytes(probe.state.db.conn)
        finally:
            probe.close()
        shutil.rmtree(vol / "probe")
        assert need > 0
        leave = 2 * need  # room for the small call, twice over
        events = [*small, big_event(2 * cache + 4 * leave)]  # spills far more than `leave`

        store = Store(vol / "state")
        try:
            store_events(store.inbox, events)
            filler = fill(vol, leave)
            assert need < free_bytes(vol) <= leave
            before = committed(store.state_dir)
            with pytest.raises(StoreWriteError) as raised:
                store.processor.process_batch()
            after = committed(store.state_dir)
            assert (after.span_ids, after.points, after.watermark) == ([], [], 0)
            assert after == before  # nothing committed, in any table
            assert "database or disk is full" in str(raised.value) and raised.value.full

            filler.unlink()  # space is back: the same inbox, processed again
            store.run()
            recovered = committed(store.state_dir)
        finally:
            store.close()

    roomy_store = Store(tmp_path / "roomy")  # the same events where space never runs out
    try:
        store_events(roomy_store.inbox, events)
        roomy_store.run()
    finally:
        roomy_store.close()
    roomy = committed(tmp_path / "roomy")
    assert roomy.span_ids and roomy.points
    assert len(set(roomy.span_ids)) == len(roomy.span_ids) and len(set(roomy.points)) == len(roomy.points)

    assert recovered.watermark == roomy.watermark == len(events)
    assert len(set(recovered.span_ids)) == len(recovered.span_ids) == len(roomy.span_ids)  # each once
    assert set(recovered.span_ids) == set(roomy.span_ids)
    assert Counter(recovered.points) == Counter(roomy.points)  # each point once
