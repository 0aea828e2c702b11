"""The processor on real SQLite files: webhook streams in any order -> each span exactly once."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.cartesia.webhooks import parse_webhook_event
from otelbridge.delivery.sdk import build_resource, encode_trace_request, to_readable_spans
from otelbridge.delivery.spool import Spool
from otelbridge.ingest import processor as processor_module
from otelbridge.ingest.assembly import CallAssembler
from otelbridge.ingest.processor import Processor, load_unexported_points
from otelbridge.mapping import conventions as c
from otelbridge.mapping import map_call
from otelbridge.mapping.policy import MappingOptions
from otelbridge.mapping.records import SpanRecord
from otelbridge.store import Database, open_inbox, open_state
from tests.support.inbox_events import store_events
from tests.support.samples import webhook_events

RESOURCE = build_resource("test", "i-1")


def _encode(spans: list[SpanRecord]) -> bytes:
    return bytes(encode_trace_request(to_readable_spans(spans, RESOURCE)).SerializeToString())


def _events() -> list[dict[str, Any]]:
    return webhook_events()


def _expected_span_ids(events: list[dict[str, Any]]) -> set[bytes]:
    assembler = CallAssembler()
    for event in events:
        assembler.add(parse_webhook_event(event))
    ids = set()
    for built in assembler.calls():
        for span in map_call(built.call, fallback_end_ns=built.fallback_end_ns).spans:
            ids.add(span.span_id.to_bytes(8, "big"))
    return ids


class Harness:
    def __init__(self, state_dir: Path, clock: list[int] | None = None) -> None:
        self.state_dir = state_dir
        self.clock = clock
        self.open()

    def open(self) -> None:
        self.state: Database = open_state(self.state_dir)
        self.inbox: Database = open_inbox(self.state_dir)
        clock = self.clock
        self.processor = Processor(
            self.state,
            self.inbox,
            Spool(max_bytes=1 << 30, max_age_ns=1 << 62),
            MappingOptions(),
            _encode,
            call_timeout_ns=3600 * 10**9,
            retention_ns=7 * 86400 * 10**9,
            clock=(lambda: clock[0]) if clock is not None else time.time_ns,
        )

    def close(self) -> None:
        self.state.close()
        self.inbox.close()

    def put(self, *events: dict[str, Any]) -> None:
        store_events(self.inbox, events)

    def run(self) -> None:
        while self.processor.process_batch(limit=7).events:
            pass

    def spans(self) -> list[Span]:
        with self.state.reading() as conn:
            bodies = [r[0] for r in conn.execute("SELECT body FROM spool WHERE signal='traces' ORDER BY id")]
        out: list[Span] = []
        for body in bodies:
            request = ExportTraceServiceRequest.FromString(body)
            out += [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        return out


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path / "state")
    yield h
    h.close()


def _assert_exactly_once(spans: list[Span], expected: set[bytes]) -> None:
    counts = Counter(s.span_id for s in spans)
    assert [sid.hex() for sid, n in counts.items() if n > 1] == []
    assert set(counts) == expected


def test_sample_stream_gives_the_same_spans_as_replay(harness: Harness) -> None:
    events = _events()
    harness.put(*events)
    harness.run()
    spans = harness.spans()
    _assert_exactly_once(spans, _expected_span_ids(events))
    # turn spans carry their parent root, in the call's trace
    roots = {s.trace_id: s.span_id for s in spans if not s.parent_span_id}
    known = {x.span_id for x in spans}
    assert all(s.parent_span_id in known for s in spans if s.parent_span_id)
    assert all(roots[s.trace_id] for s in spans)
    # nothing waits: every call closed, no kept events
    with harness.state.reading() as conn:
        assert conn.execute("SELECT COUNT(*) FROM calls WHERE closed_ns IS NULL").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM call_events").fetchone()[0] == 0
    with harness.inbox.reading() as conn:
        assert conn.execute("SELECT COUNT(*) FROM inbox").fetchone()[0] == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shuffled_and_duplicated_deliveries_still_give_each_span_once(harness: Harness, seed: int) -> None:
    events = _events()
    delivered = events + random.Random(seed).sample(events, len(events) // 2)
    random.Random(seed).shuffle(delivered)
    harness.put(*delivered)
    harness.run()
    _assert_exactly_once(harness.spans(), _expected_span_ids(events))


def test_turns_are_exported_as_they_arrive(harness: Harness) -> None:
    events = _events()
    call_id = next(e["call_id"] for e in events if e.get("type") == "call_turn")
    mine = [e for e in events if e.get("call_id") == call_id]
    started = next(e for e in mine if e["type"] == "call_started")
    turns = [e for e in mine if e["type"] == "call_turn"]
    harness.put(started)
    harness.run()
    assert harness.spans() == []  # nothing to show before a turn
    harness.put(turns[0])
    harness.run()
    spans = harness.spans()
    assert len(spans) >= 1 and spans[0].name in (c.SPAN_USER_TURN, c.SPAN_ASSISTANT_TURN)
    assert spans[0].parent_span_id  # child of the (future) root
    # its TTFB points are stored for the meter
    points = [p for _, p in load_unexported_points(harness.state)]
    assert {p.instrument for p in points} & {c.METRIC_TTS_TTFB, c.METRIC_STT_TTFB, c.METRIC_TURN_DURATION}


def test_turns_before_call_started_wait_for_the_anchor(harness: Harness) -> None:
    events = _events()
    call_id = next(e["call_id"] for e in events if e.get("type") == "call_turn")
    mine = [e for e in events if e.get("call_id") == call_id]
    turns = [e for e in mine if e["type"] == "call_turn"]
    harness.put(*turns)
    harness.run()
    assert harness.spans() == []
    harness.put(next(e for e in mine if e["type"] == "call_started"))
    harness.run()
    assert len(harness.spans()) >= len(turns)
    assert not any(not s.parent_span_id for s in harness.spans())  # no root before the end
    harness.put(*[e for e in mine if e["type"] not in ("call_turn", "call_started")])
    harness.run()
    _assert_exactly_once(harness.spans(), _expected_span_ids(mine))


def test_completion_before_turns_and_turns_after_completion(harness: Harness) -> None:
    events = _events()
    call_id = next(e["call_id"] for e in events if e.get("type") == "call_completed" and e.get("call"))
    mine = [e for e in events if e.get("call_id") == call_id]
    ends = [e for e in mine if e["type"] in ("call_completed", "call_failed")]
    harness.put(*ends)
    harness.run()
    first = len(harness.spans())
    assert first >= 1
    harness.put(*[e for e in mine if e["type"] not in ("call_completed", "call_failed")])
    harness.put(*ends)  # and the end once more
    harness.run()
    _assert_exactly_once(harness.spans(), _expected_span_ids(mine))


def test_post_call_analysis_after_the_root_becomes_a_span(harness: Harness) -> None:
    events = _events()
    analysis = next(e for e in events if e.get("type") == "post_call_analysis")
    mine = [e for e in events if e.get("call_id") == analysis["call_id"]]
    for event in mine:
        if event.get("call"):
            event["call"].pop("summary", None)  # the summary is not known when the call ends
    harness.put(*[e for e in mine if e is not analysis])
    harness.run()
    root = next(s for s in harness.spans() if not s.parent_span_id)
    assert all(a.key != c.CALL_SUMMARY for a in root.attributes)
    harness.put(analysis, analysis)
    harness.run()
    spans = [s for s in harness.spans() if s.name == c.SPAN_CALL_ANALYSIS]
    assert len(spans) == 1
    assert spans[0].parent_span_id == root.span_id
    summary = next(a.value.string_value for a in spans[0].attributes if a.key == c.CALL_SUMMARY)
    assert summary == analysis["analysis"]["summary"]


def test_post_call_analysis_adds_nothing_when_the_root_had_the_summary(harness: Harness) -> None:
    events = _events()
    analysis = next(e for e in events if e.get("type") == "post_call_analysis")
    mine = [e for e in events if e.get("call_id") == analysis["call_id"]]
    end = next(e for e in mine if e["type"] in ("call_completed", "call_failed"))
    end["call"]["summary"] = "Known at the end."
    harness.put(*[e for e in mine if e is not analysis])
    harness.run()
    before = len(harness.spans())
    harness.put(analysis)
    harness.run()
    assert len(harness.spans()) == before


def test_post_call_analysis_before_the_end_lands_on_the_root(harness: Harness) -> None:
    events = _events()
    analysis = next(e for e in events if e.get("type") == "post_call_analysis")
    mine = [e for e in events if e.get("call_id") == analysis["call_id"]]
    harness.put(analysis, *[e for e in mine if e is not analysis])
    harness.run()
    root = next(s for s in harness.spans() if not s.parent_span_id)
    assert any(a.key == c.CALL_SUMMARY for a in root.attributes)
    assert not [s for s in harness.spans() if s.name == c.SPAN_CALL_ANALYSIS]


def test_legacy_shape_only(harness: Harness) -> None:
    events = [e for e in _events() if "request_id" in e]
    assert events
    harness.put(*events)
    harness.run()
    _assert_exactly_once(harness.spans(), _expected_span_ids(events))


def test_reopening_after_a_crash_processes_nothing_twice(tmp_path: Path) -> None:
    events = _events()
    h = Harness(tmp_path / "state")
    h.put(*events[:80])
    h.processor.process_batch(limit=30)
    h.close()  # as if killed: what was committed stays, nothing else
    h = Harness(tmp_path / "state")
    h.put(*events[80:])
    h.run()
    _assert_exactly_once(h.spans(), _expected_span_ids(events))
    h.close()


def test_watermark_survives_an_inbox_delete_that_never_happened(tmp_path: Path) -> None:
    """Crash between the state commit and the inbox delete: the rows are skipped, not redone."""
    events = _events()[:40]
    h = Harness(tmp_path / "state")
    h.put(*events)
    watermark = h.processor.watermark()
    h.run()
    assert h.processor.watermark() > watermark
    before = len(h.spans())
    # put the processed rows back, as if their delete had been lost
    with h.inbox.transaction() as conn:
        conn.execute("DELETE FROM sqlite_sequence WHERE name='inbox'")
    h.put(*events)  # ids continue after the old ones: a real re-delivery, deduplicated by the ledger
    h.run()
    assert len(h.spans()) == before
    h.close()


def test_silent_call_is_exported_as_it_stands_after_the_timeout(tmp_path: Path) -> None:
    events = _events()
    call_id = next(e["call_id"] for e in events if e.get("type") == "call_turn")
    mine = [e for e in events if e.get("call_id") == call_id and e["type"] in ("call_started", "call_turn")]
    clock = [time.time_ns()]
    h = Harness(tmp_path / "state", clock)
    h.put(*mine)
    h.run()
    assert not any(not s.parent_span_id for s in h.spans())
    clock[0] += 3601 * 10**9
    result = h.processor.sweep()
    assert result.calls_closed == 1
    roots = [s for s in h.spans() if not s.parent_span_id]
    assert len(roots) == 1
    status = next(a.value.string_value for a in roots[0].attributes if a.key == c.CALL_STATUS)
    assert status == "started"
    h.close()


def test_processed_inbox_rows_are_deleted_in_bulk_or_when_the_inbox_runs_dry(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting rows is a write on inbox.db, which the webhook side needs for every commit:
    it happens every INBOX_TRIM_ROWS rows while rows keep coming, and once they stop."""
    monkeypatch.setattr(processor_module, "INBOX_TRIM_ROWS", 10)

    def inbox_rows() -> int:
        with harness.inbox.reading() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM inbox").fetchone()[0])

    harness.put(*_events()[:25])
    assert harness.processor.process_batch(limit=4).events == 4
    assert inbox_rows() == 25  # processed (the watermark moved) but not yet deleted
    assert harness.processor.process_batch(limit=8).events == 8
    assert inbox_rows() == 13  # 12 processed >= 10: deleted together
    assert harness.processor.process_batch(limit=5).events == 5
    assert inbox_rows() == 13
    assert harness.processor.process_batch(limit=8).events == 8
    assert inbox_rows() == 0
    harness.put(*_events()[25:28])
    assert harness.processor.process_batch().events == 3
    assert inbox_rows() == 3
    assert harness.processor.process_batch().events == 0  # dry: what the watermark passed goes
    assert inbox_rows() == 0
    assert harness.processor.watermark() > 0


def test_the_processor_checkpoints_the_inbox_wal_so_the_webhook_side_need_not(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processor_module, "INBOX_CHECKPOINT_ROWS", 10)
    harness.inbox.conn.execute("PRAGMA wal_autocheckpoint=0")  # as the webhook process nearly does
    database_file = harness.state_dir / "inbox.db"
    harness.put(*_events()[:40])
    before = database_file.stat().st_size  # the rows are in the WAL only
    assert harness.processor.process_batch(limit=5).events == 5
    assert database_file.stat().st_size == before  # 5 rows taken: not yet
    assert harness.processor.process_batch(limit=5).events == 5
    assert database_file.stat().st_size > before + 10_000  # copied back into the database file
