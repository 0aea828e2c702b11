"""The processor on real SQLite files: webhook streams in any order -> each span exactly once."""

from __future__ import annotations

import copy
import json
import logging
import random
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.cartesia.models import parse_call
from otelbridge.cartesia.webhooks import parse_webhook_event, synthetic_body, synthetic_event
from otelbridge.delivery.resource import build_resource
from otelbridge.ingest import processor as processor_module
from otelbridge.ingest.assembly import CallAssembler
from otelbridge.ingest.processor import load_unexported_points, points_from_json, points_to_json
from otelbridge.mapping import conventions as c
from otelbridge.mapping import deployments, ids, map_call
from otelbridge.mapping.records import InstrumentKind, MetricPoint
from tests.support.inbox_events import store_events
from tests.support.otlp_receiver import attributes
from tests.support.processing import encode_spans, open_processor
from tests.support.samples import webhook_events

RESOURCE = build_resource("test", "i-1")
#: more than the spool of any test holds: a take of it reads every request of its signal
EVERYTHING = 1 << 62


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
    def __init__(
        self, state_dir: Path, clock: list[int] | None = None, *, deployments_per_agent: int = 20
    ) -> None:
        self.state_dir = state_dir
        self.clock = clock
        self.deployments_per_agent = deployments_per_agent
        self.open()

    def open(self) -> None:
        clock = self.clock
        self.state, self.inbox, self.processor = open_processor(
            self.state_dir,
            clock=(lambda: clock[0]) if clock is not None else time.time_ns,
            deployments_per_agent=self.deployments_per_agent,
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
        with self.state.reading() as tx:
            bodies = [e.body for e in tx.spool_take("traces", EVERYTHING)]  # oldest first
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
    with harness.state.reading() as tx:
        assert tx.open_calls() == 0
        # of every call, whatever its id (the store reads kept events one call at a time)
        assert harness.state.db.conn.execute("SELECT COUNT(*) FROM call_events").fetchone()[0] == 0
    assert harness.inbox.depth(0) == 0  # every row deleted


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


def test_a_turn_after_the_call_row_learns_its_agent_name_carries_it(harness: Harness) -> None:
    """The processor keeps a call's mapping context between its events: a turn after an event
    that named the agent and its deployment carries them; the turn before does not."""
    events = _events()
    call_id = next(e["call_id"] for e in events if e.get("type") == "call_turn")
    mine = [e for e in events if e.get("call_id") == call_id]
    started = next(e for e in mine if e["type"] == "call_started")
    first, second = [e for e in mine if e["type"] == "call_turn"][:2]
    anonymous = {
        **started,
        "call": {k: v for k, v in started["call"].items() if k not in ("agent_name", "deployment_id")},
    }
    harness.put(anonymous, first)
    harness.run()
    harness.put(started, second)  # delivered again, now with the name and the deployment
    harness.run()
    by_start = sorted(harness.spans(), key=lambda s: s.start_time_unix_nano)
    names = [attributes(s.attributes).get(c.GEN_AI_AGENT_NAME) for s in by_start]
    assert names == [None, started["call"]["agent_name"]]
    assert by_start[0].trace_id == by_start[1].trace_id


def test_a_call_first_heard_of_without_its_agent_takes_the_agent_named_later(harness: Harness) -> None:
    """A call_turn may come without agent_id: a call first heard of through one is the agent
    ``unknown``'s until an event names the agent; every span and point after that carries it
    (the turn that waited for the anchor included)."""
    events = _events()
    call_id = next(e["call_id"] for e in events if e.get("type") == "call_turn")
    mine = [e for e in events if e.get("call_id") == call_id]
    started = next(e for e in mine if e["type"] == "call_started")
    agent = started["agent_id"]
    first, second = [
        {k: v for k, v in e.items() if k != "agent_id"} for e in mine if e["type"] == "call_turn"
    ][:2]
    harness.put(first)
    harness.run()  # waits: no anchor yet
    harness.put(started, second)
    harness.run()
    spans = harness.spans()
    assert len(spans) >= 2
    assert {attributes(s.attributes).get(c.GEN_AI_AGENT_ID) for s in spans} == {agent}
    points = [p for _, p in load_unexported_points(harness.state)]
    assert points and {p.attributes.get(c.METRIC_ATTR_AGENT_ID) for p in points} == {agent}
    with harness.state.reading() as tx:
        call = tx.load_call(call_id)
    assert call is not None and call.agent_id == agent


def test_the_contexts_kept_between_events_are_bounded(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many calls stream at once, at most CONTEXTS_KEPT contexts are kept (the least
    recently used go first), and a call whose context went is mapped as before."""
    monkeypatch.setattr(processor_module, "CONTEXTS_KEPT", 2)
    harness.close()
    harness.open()  # a processor made with that bound
    events = _events()
    harness.put(*events)
    harness.run()
    assert harness.processor._contexts.cache_info().currsize <= 2
    _assert_exactly_once(harness.spans(), _expected_span_ids(events))


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


def test_a_summary_read_after_the_root_went_out_becomes_a_span(harness: Harness) -> None:
    """The webhook end came without the summary (Cartesia makes it later); the List Calls copy
    read afterwards has it. It was dropped; it becomes the call's analysis span, as a late
    post_call_analysis does, once."""
    events = _events()
    analysis = next(e for e in events if e.get("type") == "post_call_analysis")
    mine = [e for e in events if e.get("call_id") == analysis["call_id"] and e is not analysis]
    end = next(e for e in mine if e["type"] in ("call_completed", "call_failed"))
    listed = copy.deepcopy(end["call"])
    listed["summary"] = "Read from List Calls."
    end["call"].pop("summary", None)
    harness.put(*mine)
    harness.run()
    root = next(s for s in harness.spans() if not s.parent_span_id)
    for _ in range(2):  # polled again: nothing more
        harness.processor.take_calls([(parse_call(listed), listed)], "poll", [], time.time_ns())
    spans = [s for s in harness.spans() if s.name == c.SPAN_CALL_ANALYSIS]
    assert len(spans) == 1
    assert spans[0].parent_span_id == root.span_id
    assert attributes(spans[0].attributes)[c.CALL_SUMMARY] == "Read from List Calls."


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
    with h.inbox.db.transaction() as conn:  # the engine's own counter: no API resets it
        conn.execute("DELETE FROM sqlite_sequence WHERE name='inbox'")
    h.put(*events)  # they get the ids they had (1, 2, ...): at or below the watermark, skipped
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


@pytest.mark.parametrize("ending", ["end_without_transcript", "sweep"])
def test_the_root_counts_and_covers_the_streamed_turns(tmp_path: Path, ending: str) -> None:
    """Streamed turns go out at once and are not kept: the root, built from the kept events and
    the end's own transcript, left them out when the end carried none (the 2025 shape, ``body:
    []``) or when no end came (the timeout's sweep): a turn count of 0, and a root of no length
    with its turns outside it. It counts and covers them now, as replay of the same events does."""
    base = {"request_id": "ac_streamed", "agent_id": "agent_1"}
    events: list[dict[str, Any]] = [
        {**base, "type": "call_started", "timestamp": "2026-11-20T09:00:00Z", "body": []},
        {**base, "type": "call_turn", "timestamp": "2026-11-20T09:00:02Z",
         "body": {"role": "user", "start_timestamp": 1.0, "end_timestamp": 2.0, "text": "hello there"}},
        {**base, "type": "call_turn", "timestamp": "2026-11-20T09:00:40Z",
         "body": {"role": "assistant", "start_timestamp": 2.5, "end_timestamp": 40.0, "text": "hi"}},
    ]  # fmt: skip
    if ending == "end_without_transcript":
        events.append({**base, "type": "call_completed", "timestamp": "2026-11-20T09:00:10Z", "body": []})
    clock = [time.time_ns()]
    h = Harness(tmp_path / "state", clock)
    try:
        h.put(*events)
        h.run()
        if ending == "sweep":
            clock[0] += 3601 * 10**9
            assert h.processor.sweep().calls_closed == 1
        spans = h.spans()
    finally:
        h.close()
    assembler = CallAssembler()
    for event in events:
        assembler.add(parse_webhook_event(event))
    (built,) = assembler.calls()
    replayed = map_call(built.call, fallback_end_ns=built.fallback_end_ns).root
    assert replayed is not None
    (root,) = [s for s in spans if not s.parent_span_id]
    assert (root.start_time_unix_nano, root.end_time_unix_nano) == (replayed.start_ns, replayed.end_ns)
    assert attributes(root.attributes)[c.CALL_TURN_COUNT] == replayed.attributes[c.CALL_TURN_COUNT] == 2
    children = [s for s in spans if s.parent_span_id]
    assert len(children) == 2
    assert all(root.start_time_unix_nano <= s.start_time_unix_nano <= s.end_time_unix_nano
               <= root.end_time_unix_nano for s in children)  # fmt: skip


def _turn_starts(spans: list[Span], start_ns: int) -> dict[str, float]:
    """Turn text -> seconds from ``start_ns`` to its span's start."""
    out = {}
    for span in spans:
        text = attributes(span.attributes).get(c.TURN_TEXT)
        if isinstance(text, str):
            out[text] = (span.start_time_unix_nano - start_ns) / 1e9
    return out


def test_a_turn_released_by_call_started_keeps_the_calls_anchor(tmp_path: Path) -> None:
    """A listed copy read while the call was 'created' (no start_time) is the first call_started
    kept; a turn then waits for the start, which call_started brings. The turn was released with
    a start derived anew from the kept copies (at -1 s), while the call's other spans used the
    start call_started gave; every span uses that one now."""
    start = "2026-11-20T09:00:00Z"
    start_ns = 1_795_165_200 * 10**9
    call: dict[str, Any] = {"id": "ac_anchor", "agent_id": "agent_1", "status": "created", "transcript": []}
    started = {"type": "call_started", "call_id": "ac_anchor", "agent_id": "agent_1", "timestamp": start,
               "call": {**call, "status": "started", "start_time": start}}  # fmt: skip

    def turn(role: str, at: float, text: str) -> dict[str, Any]:
        spoken = {"role": role, "start_timestamp": at, "end_timestamp": at + 1, "text": text}
        return {"type": "call_turn", "call_id": "ac_anchor", "agent_id": "agent_1", "timestamp": start,
                "turn": spoken}  # fmt: skip

    h = Harness(tmp_path / "state")
    try:
        h.put(_listed(call, "poll"), turn("user", 1.0, "first"))
        h.run()  # the turn waits: no start yet
        h.put(started, turn("assistant", 2.5, "second"))
        h.run()
        assert _turn_starts(h.spans(), start_ns) == {"first": 1.0, "second": 2.5}
    finally:
        h.close()


def test_an_end_after_the_sweep_places_its_turns_at_the_calls_anchor(tmp_path: Path) -> None:
    """A 2025 call closed by the timeout's sweep, then its end with a turn the stream missed: the
    end, assembled alone, derived the start from its own timestamp (the turn at 99 s, not 5 s)."""
    base = {"request_id": "ac_late", "agent_id": "agent_1"}
    user = {"role": "user", "start_timestamp": 1.0, "end_timestamp": 2.0, "text": "a"}
    assistant = {"role": "assistant", "start_timestamp": 5.0, "end_timestamp": 6.0, "text": "b"}
    clock = [time.time_ns()]
    h = Harness(tmp_path / "state", clock)
    try:
        h.put({**base, "type": "call_started", "timestamp": "2026-11-20T09:00:00Z", "body": []},
              {**base, "type": "call_turn", "timestamp": "2026-11-20T09:00:02Z", "body": user})  # fmt: skip
        h.run()
        clock[0] += 3601 * 10**9
        assert h.processor.sweep().calls_closed == 1
        h.put(
            {**base, "type": "call_completed", "timestamp": "2026-11-20T09:01:40Z", "body": [user, assistant]}
        )
        h.run()
        assert _turn_starts(h.spans(), 1_795_165_200 * 10**9) == {"a": 1.0, "b": 5.0}
    finally:
        h.close()


def _listed(call: dict[str, Any], source: str) -> dict[str, Any]:
    """A listed call as the poller stores it in the inbox."""
    return json.loads(synthetic_body(synthetic_event(parse_call(call), source), call))  # type: ignore[no-any-return]


def _evaluation(call_id: str, evaluation_id: str) -> dict[str, Any]:
    raw = {"id": evaluation_id, "metricName": "m", "agentId": "agent_1", "callId": call_id, "value": 1,
           "createdAt": "2026-11-21T10:05:00Z"}  # fmt: skip
    return {
        "type": processor_module.EVALUATION_EVENT,
        "call_id": call_id,
        "agent_id": "agent_1",
        "evaluation": raw,
    }


def test_the_ledger_of_evaluations_whose_call_has_no_row_is_forgotten_after_the_retention(
    tmp_path: Path,
) -> None:
    """An evaluation of a call the processor never heard of (or forgot) leaves ledger rows no
    call row owns: the sweep forgets them once they are older than the retention, as it forgets
    closed calls; an evaluation of a call it keeps goes with that call."""
    clock = [time.time_ns()]
    h = Harness(tmp_path / "state", clock)
    events = _events()
    call_id = next(e["call_id"] for e in events if e.get("type") == "call_started")
    h.put(next(e for e in events if e.get("call_id") == call_id and e["type"] == "call_started"))
    h.put(_evaluation("ac_never_seen", "ev_1"), _evaluation(call_id, "ev_2"))
    h.run()
    ledger = "SELECT call_id, COUNT(*) FROM ledger GROUP BY call_id"
    assert dict(map(tuple, h.state.db.conn.execute(ledger))) == {"ac_never_seen": 1, call_id: 1}
    clock[0] += 8 * 86400 * 10**9  # past the week's retention; the open call times out meanwhile
    h.processor.sweep()
    assert dict(map(tuple, h.state.db.conn.execute(ledger))) == {call_id: 2}  # + its root, now
    h.put(_evaluation("ac_never_seen", "ev_1"))  # read again after the retention: a new export
    h.run()
    assert len([s for s in h.spans() if s.name.startswith(c.SPAN_EVALUATION)]) == 3
    h.close()


def test_processed_inbox_rows_are_deleted_in_bulk_or_when_the_inbox_runs_dry(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting rows is a write on inbox.db, which the webhook side needs for every commit:
    it happens every INBOX_TRIM_ROWS rows while rows keep coming, and once they stop."""
    monkeypatch.setattr(processor_module, "INBOX_TRIM_ROWS", 10)

    def inbox_rows() -> int:
        return harness.inbox.depth(0)  # every row in inbox.db, processed or not

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
    harness.inbox.db.conn.execute("PRAGMA wal_autocheckpoint=0")  # as the webhook process nearly does
    database_file = harness.state_dir / "inbox.db"
    harness.put(*_events()[:40])
    before = database_file.stat().st_size  # the rows are in the WAL only
    assert harness.processor.process_batch(limit=5).events == 5
    assert database_file.stat().st_size == before  # 5 rows taken: not yet
    assert harness.processor.process_batch(limit=5).events == 5
    assert database_file.stat().st_size > before + 10_000  # copied back into the database file


# --- response latency and deployments (contract 2.1.0) -----------------------------------


def _latency_points(points: list[MetricPoint]) -> set[tuple[int, float, str]]:
    return {
        (p.span_id, float(p.value), str(p.attributes[c.DEPLOYMENT_ID]))
        for p in points
        if p.instrument == c.METRIC_RESPONSE_LATENCY
    }


def _span_latencies(spans: list[Span]) -> dict[int, float]:
    out = {}
    for span in spans:
        for kv in span.attributes:
            if kv.key == c.TURN_RESPONSE_LATENCY:
                out[int.from_bytes(span.span_id, "big")] = kv.value.double_value
    return out


def _whole(events: list[dict[str, Any]]) -> tuple[dict[int, float], set[tuple[int, float, str]]]:
    """Response latencies (span attribute, histogram points) of the whole calls of ``events``."""
    assembler = CallAssembler()
    for event in events:
        assembler.add(parse_webhook_event(event))
    latencies: dict[int, float] = {}
    points: list[MetricPoint] = []
    for built in assembler.calls():
        mapped = map_call(built.call, fallback_end_ns=built.fallback_end_ns)
        for span in mapped.spans:
            if c.TURN_RESPONSE_LATENCY in span.attributes:
                latencies[span.span_id] = float(span.attributes[c.TURN_RESPONSE_LATENCY])  # type: ignore[arg-type]
        points += mapped.points
    return latencies, _latency_points(points)


def test_sample_stream_gives_the_response_latencies_and_deployments_of_the_whole_calls(
    harness: Harness,
) -> None:
    events = _events()
    harness.put(*events)
    harness.run()
    latencies, points = _whole(events)
    assert len(latencies) >= 10  # the samples answer callers: the test has something to compare
    assert _span_latencies(harness.spans()) == latencies
    stored = [p for _, p in load_unexported_points(harness.state)]
    assert _latency_points(stored) == points
    # every TTFB, latency, turn-duration and call point names its deployment; the samples have two
    deployments = {
        p.attributes[c.DEPLOYMENT_ID]
        for p in stored
        if p.instrument
        in (c.METRIC_TTS_TTFB, c.METRIC_RESPONSE_LATENCY, c.METRIC_TURN_DURATION, c.METRIC_CALLS)
    }
    assert {"dep_tjfIZ4SOcMz9", "dep_L1mHoOsFaQfD"} <= deployments
    assert all(c.DEPLOYMENT_ID not in p.attributes for p in stored if p.instrument == c.METRIC_TURNS)


def _call_events(
    call_id: str, turns: list[dict[str, Any]], deployment: str | None
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    base = {"call_id": call_id, "agent_id": "agent_lat", "webhook_id": "wh"}
    call: dict[str, Any] = {
        "id": call_id,
        "agent_id": "agent_lat",
        "start_time": "2026-11-21T10:00:00Z",
        "status": "started",
        "deployment_id": deployment,
        "transcript": [],
    }
    started = {**base, "type": "call_started", "timestamp": "2026-11-21T10:00:00Z", "call": call}
    turn_events = [
        {**base, "type": "call_turn", "timestamp": "2026-11-21T10:00:30Z", "turn": t} for t in turns
    ]
    final = {**call, "status": "completed", "end_time": "2026-11-21T10:01:00Z", "transcript": turns}
    completed = {**base, "type": "call_completed", "timestamp": "2026-11-21T10:01:00Z", "call": final}
    return started, turn_events, completed


_turn_strategy = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "user", "assistant", "agent2"]),
        # whole milliseconds plus Cartesia's float noise
        "start_timestamp": st.builds(
            lambda ms, noise: ms / 1000 + noise,
            st.integers(0, 40_000),
            st.sampled_from([0.0, 1e-15, -1e-15, 4e-7]),
        ),
        "length": st.one_of(st.none(), st.floats(-0.5, 6.0, allow_nan=False)),
        "tts_ttfb": st.floats(0.05, 1.0),
    }
)


def _turns(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turns in start order, one per (role, start millisecond), as a transcript holds them."""
    seen, out = set(), []
    for t in sorted(raw, key=lambda t: t["start_timestamp"]):
        key = (t["role"], round(t["start_timestamp"] * 1000))
        if key in seen:
            continue
        seen.add(key)
        turn: dict[str, Any] = {"role": t["role"], "start_timestamp": t["start_timestamp"], "text": "x"}
        if t["length"] is not None:
            turn["end_timestamp"] = t["start_timestamp"] + t["length"]
        if t["role"] == "assistant":
            turn["tts_ttfb"] = t["tts_ttfb"]
        out.append(turn)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=st.lists(_turn_strategy, min_size=1, max_size=12),
    plan=st.lists(st.sampled_from(["send", "send", "twice", "restart"]), min_size=12, max_size=12),
    streamed=st.integers(0, 12),
    deployment=st.sampled_from(["dep_A", None]),
)
def test_streamed_turns_with_restarts_give_the_whole_calls_response_latencies(
    raw: list[dict[str, Any]], plan: list[str], streamed: int, deployment: str | None
) -> None:
    """Turns streamed in start order (some twice, the processor restarted between two of them,
    the stream cut short so the last ones arrive only in the completion) give each assistant
    turn the response latency, span attribute and histogram point, of the whole call."""
    turns = _turns(raw)
    started, turn_events, completed = _call_events("ac_latency", turns, deployment)
    with tempfile.TemporaryDirectory() as tmp:
        harness = Harness(Path(tmp) / "state")
        try:
            harness.put(started)
            harness.run()
            for event, step in zip(turn_events[:streamed], plan, strict=False):
                if step == "restart":
                    harness.close()
                    harness.open()
                harness.put(*([event] * (2 if step == "twice" else 1)))
                harness.run()
            harness.put(completed)
            harness.run()
            latencies, points = _whole([started, completed])
            assert _span_latencies(harness.spans()) == latencies
            stored = [p for _, p in load_unexported_points(harness.state)]
            assert _latency_points(stored) == points
        finally:
            harness.close()


def test_a_turn_delivered_after_a_later_assistant_turn_cannot_change_what_it_exported(
    harness: Harness,
) -> None:
    """The documented limit of streaming (docs/conventions.md 5.1): the caller's turn arrives
    after the assistant turn that answered it, which went out with the latency it could know."""
    turns = [
        {"role": "user", "start_timestamp": 1.0, "end_timestamp": 2.0, "text": "hi"},
        {"role": "user", "start_timestamp": 3.0, "end_timestamp": 4.5, "text": "are you there?"},
        {"role": "assistant", "start_timestamp": 5.0, "end_timestamp": 6.0, "text": "yes"},
    ]
    started, turn_events, completed = _call_events("ac_reordered", turns, None)
    harness.put(started, turn_events[0], turn_events[2], turn_events[1], completed)
    harness.run()
    assert list(_span_latencies(harness.spans()).values()) == [3.0]  # from 2.0, not from 4.5
    assert list(_whole([started, completed])[0].values()) == [0.5]


def test_a_turn_streamed_after_the_completion_takes_its_predecessor_from_the_state_store(
    harness: Harness,
) -> None:
    turns = [
        {"role": "user", "start_timestamp": 1.0, "end_timestamp": 2.5, "text": "hi"},
        {"role": "assistant", "start_timestamp": 3.25, "end_timestamp": 4.0, "text": "hello"},
    ]
    started, turn_events, completed = _call_events("ac_late_turn", turns[:1], "dep_A")
    harness.put(started, completed)  # the completion knows only the caller's turn
    harness.run()
    harness.close()
    harness.open()  # and the daemon restarted since
    harness.put({**turn_events[0], "turn": turns[1]})
    harness.run()
    assert list(_span_latencies(harness.spans()).values()) == [0.75]


def _deployment_call(call_id: str, deployment: str, minute: int) -> dict[str, Any]:
    start = f"2026-11-21T10:{minute:02d}:00Z"
    call = {
        "id": call_id,
        "agent_id": "agent_dep",
        "start_time": start,
        "end_time": f"2026-11-21T10:{minute:02d}:30Z",
        "status": "completed",
        "deployment_id": deployment,
        "transcript": [{"role": "assistant", "start_timestamp": 0.5, "end_timestamp": 1.0, "tts_ttfb": 0.2}],
    }
    return {
        "type": "call_completed",
        "call_id": call_id,
        "agent_id": "agent_dep",
        "timestamp": start,
        "call": call,
    }


def test_deployments_past_the_bound_read_other_and_the_ranking_survives_a_restart(tmp_path: Path) -> None:
    harness = Harness(tmp_path / "state", deployments_per_agent=2)
    harness.put(_deployment_call("ac_1", "dep_1", 1), _deployment_call("ac_2", "dep_2", 2))
    harness.run()
    harness.close()
    harness.open()
    # dep_3 went live after both: it pushes dep_1 out, whose later calls (of any start) read other
    harness.put(_deployment_call("ac_3", "dep_3", 3), _deployment_call("ac_4", "dep_1", 4))
    result = harness.processor.process_batch()
    assert result.deployments_folded == 5  # ac_4's call counter, call and turn duration, TTFB, barge-in
    harness.put(_deployment_call("ac_5", "dep_2", 5), _deployment_call("ac_6", "dep_4", 6))
    harness.put(_deployment_call("ac_7", "dep_2", 7), _deployment_call("ac_8", "dep_1", 0))
    harness.run()
    labels = {
        p.span_id: p.attributes[c.DEPLOYMENT_ID]
        for _, p in load_unexported_points(harness.state)
        if p.instrument == c.METRIC_CALLS
    }
    by_call = {call: labels[ids.root_span_id(f"ac_{call}")] for call in range(1, 9)}
    other = c.DEPLOYMENT_OTHER
    # ac_6: dep_4 went live, dep_2 is now the third most recent; ac_8: an older call of dep_1
    assert by_call == {
        1: "dep_1", 2: "dep_2", 3: "dep_3", 4: other, 5: "dep_2", 6: "dep_4", 7: other, 8: other
    }  # fmt: skip
    with harness.state.reading() as tx:
        first = tx.deployments("agent_dep")
    assert sorted(first, key=first.__getitem__) == ["dep_1", "dep_2", "dep_3", "dep_4"]
    harness.close()


def test_absurd_turn_offsets_are_remembered_without_failing_the_event(harness: Harness) -> None:
    """Found by tests/fuzz: an offset like 1e300 is 1e306 microseconds, past SQLite's integers."""
    turns = [
        {"role": "user", "start_timestamp": 1e300, "end_timestamp": 1e301, "text": "?"},
        {"role": "assistant", "start_timestamp": 2e300, "end_timestamp": 3e300, "text": "!"},
    ]
    started, turn_events, completed = _call_events("ac_absurd", turns, "dep_A")
    harness.put(started, *turn_events, completed)
    result = harness.processor.process_batch()
    assert result.failed_events == 0 and result.events == 4
    assert len(harness.spans()) == 3 and _span_latencies(harness.spans()) == {}


# --- turns of one millisecond, delivered in any order (issue 18) ------------------------------


def _comparable(spans: list[Span]) -> dict[bytes, Any]:
    """Span id -> everything the backend sees of it, but the response latency, which a stream
    out of start order cannot know (the documented limit above)."""
    out: dict[bytes, Any] = {}
    for span in spans:
        attributes = sorted(
            (kv.key, kv.value.SerializeToString(deterministic=True))
            for kv in span.attributes
            if kv.key != c.TURN_RESPONSE_LATENCY
        )
        events = [(e.name, e.time_unix_nano, e.SerializeToString(deterministic=True)) for e in span.events]
        out[span.span_id] = (
            span.name,
            span.parent_span_id,
            span.start_time_unix_nano,
            span.end_time_unix_nano,
            attributes,
            events,
        )
    return out


def _replayed(events: list[dict[str, Any]]) -> list[Span]:
    assembler = CallAssembler()
    for event in events:
        assembler.add(parse_webhook_event(event))
    (built,) = assembler.calls()
    mapped = map_call(built.call, fallback_end_ns=built.fallback_end_ns)
    request = ExportTraceServiceRequest.FromString(encode_spans(mapped.spans))
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


_same_ms_turn = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant"]),
        # few milliseconds, several microseconds in each: turns of one millisecond are common
        "ms": st.integers(4_998, 5_002),
        "us": st.integers(0, 999),
        "length": st.one_of(st.none(), st.floats(0.0, 3.0, allow_nan=False)),
        "text": st.text(min_size=1, max_size=6),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=st.lists(_same_ms_turn, min_size=2, max_size=8),
    order=st.randoms(use_true_random=False),
    twice=st.sets(st.integers(0, 7)),
    restart_at=st.integers(0, 8),
)
def test_turns_of_one_millisecond_streamed_in_any_order_give_the_spans_of_replay(
    raw: list[dict[str, Any]], order: random.Random, twice: set[int], restart_at: int
) -> None:
    """Any permutation of a call's ``call_turn`` deliveries, some twice, with a restart between
    two of them, gives exactly the spans replay gives of the same stream (the repro: a long
    turn at 5.0001 s and a short one at 5.0003 s, the short one delivered first)."""
    transcript, seen = [], set()
    for t in sorted(raw, key=lambda t: (t["ms"], t["us"])):
        start = round(t["ms"] / 1000 + t["us"] / 1e6, 6)
        if (t["role"], start) in seen:  # one speaker cannot start two turns in one microsecond
            continue
        seen.add((t["role"], start))
        turn: dict[str, Any] = {"role": t["role"], "start_timestamp": start, "text": t["text"]}
        if t["length"] is not None:
            turn["end_timestamp"] = round(start + t["length"], 6)
        transcript.append(turn)
    started, turn_events, completed = _call_events("ac_same_ms", transcript, "dep_A")
    deliveries = list(turn_events)
    order.shuffle(deliveries)
    with tempfile.TemporaryDirectory() as tmp:
        harness = Harness(Path(tmp) / "state")
        try:
            harness.put(started)
            for index, event in enumerate(deliveries):
                if index == restart_at:
                    harness.close()
                    harness.open()
                harness.put(*([event] * (2 if index in twice else 1)))
                harness.run()
            harness.put(completed)
            harness.run()
            streamed = harness.spans()
        finally:
            harness.close()
    assert sorted(Counter(s.span_id for s in streamed).values())[-1] == 1  # each span once
    assert _comparable(streamed) == _comparable(_replayed([started, *deliveries, completed]))
    assert len(streamed) == len(transcript) + 1  # every turn and the root


def test_the_reported_repro_keeps_both_turns(harness: Harness) -> None:
    long = {"role": "user", "start_timestamp": 5.0001, "end_timestamp": 9.0, "text": "a long question"}
    short = {"role": "user", "start_timestamp": 5.0003, "end_timestamp": 5.2, "text": "hm"}
    started, (long_event, short_event), completed = _call_events("ac_repro", [long, short], None)
    harness.put(started, short_event)
    harness.run()
    harness.put(long_event)  # after the short one, streamed at once: not held until the end
    harness.run()
    assert len(harness.spans()) == 2
    harness.put(completed)
    harness.run()
    texts = Counter(
        kv.value.string_value for s in harness.spans() for kv in s.attributes if kv.key == c.TURN_TEXT
    )
    assert texts == {"a long question": 1, "hm": 1}


# --- OpenInference: a streamed root is the replayed one (contract 3.0.0, section 10) ----------

_OPENINFERENCE = frozenset({
    c.OI_SPAN_KIND, c.OI_INPUT_VALUE, c.OI_INPUT_MIME_TYPE, c.OI_OUTPUT_VALUE, c.OI_OUTPUT_MIME_TYPE,
    c.OI_SESSION_ID, c.OI_USER_ID, c.OI_METADATA, c.DEPLOYMENT_ID, c.TRUNCATED,
})  # fmt: skip


def _openinference(spans: list[Span]) -> dict[bytes, dict[str, bytes]]:
    """Span id -> its OpenInference attributes (and deployment, and what was cut), as exported."""
    return {
        s.span_id: {
            kv.key: kv.value.SerializeToString(deterministic=True)
            for kv in s.attributes
            if kv.key in _OPENINFERENCE
        }
        for s in spans
    }


def _replayed_calls(events: list[dict[str, Any]]) -> list[Span]:
    assembler = CallAssembler()
    for event in events:
        assembler.add(parse_webhook_event(event))
    out: list[Span] = []
    for built in assembler.calls():
        request = ExportTraceServiceRequest.FromString(
            encode_spans(map_call(built.call, fallback_end_ns=built.fallback_end_ns).spans)
        )
        out += [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    return out


def _string(span: Span, key: str) -> str | None:
    return next((kv.value.string_value for kv in span.attributes if kv.key == key), None)


@pytest.mark.parametrize("seed", [None, 1, 2])
def test_streamed_and_replayed_calls_carry_the_same_openinference_attributes(
    harness: Harness, seed: int | None
) -> None:
    """The root is built from the whole call on both paths: its first words, summary, session,
    user and metadata come out of the daemon's stream (in order, or shuffled with repeats) as
    replay gives them, and so do every turn's and tool's input and output."""
    events = _events()
    delivered = list(events)
    if seed is not None:
        delivered += random.Random(seed).sample(events, len(events) // 3)
        random.Random(seed).shuffle(delivered)
    harness.put(*delivered)
    harness.run()
    streamed = harness.spans()
    replayed = _replayed_calls(events)
    assert _openinference(streamed) == _openinference(replayed)
    roots = [s for s in streamed if not s.parent_span_id]
    assert len(roots) == 12
    # the samples exercise what is compared: first words, summaries, masked callers, metadata
    assert sum(_string(r, c.OI_INPUT_VALUE) is not None for r in roots) >= 9
    assert sum(_string(r, c.OI_OUTPUT_VALUE) is not None for r in roots) >= 8
    assert sum(_string(r, c.OI_METADATA) is not None for r in roots) >= 10
    users = [u for u in (_string(r, c.OI_USER_ID) for r in roots) if u is not None]
    assert len(users) >= 8 and all(u.count("*") >= 7 for u in users)
    for root in roots:
        assert _string(root, c.OI_SESSION_ID) == _string(root, c.CALL_ID)


def test_streamed_root_attributes_are_the_replayed_roots(harness: Harness) -> None:
    """In delivery order, every attribute of every streamed root is the replayed root's (its
    events differ: log items of turns already streamed go on the root, section 6)."""
    events = _events()
    harness.put(*events)
    harness.run()

    def roots(spans: list[Span]) -> dict[bytes, Any]:
        return {k: v[:5] for k, v in _comparable([s for s in spans if not s.parent_span_id]).items()}

    streamed = roots(harness.spans())
    assert len(streamed) == 12
    assert streamed == roots(_replayed_calls(events))


def test_a_summary_after_the_root_is_the_output_of_call_analysis(harness: Harness) -> None:
    """A summary that arrives after the root went out: the root has no output.value, the
    call_analysis span carries it (the one difference from replay, which has it on the root)."""
    events = _events()
    analysis = next(e for e in events if e.get("type") == "post_call_analysis")
    mine = [e for e in events if e.get("call_id") == analysis["call_id"]]
    for event in mine:
        if event.get("call"):
            event["call"].pop("summary", None)
    harness.put(*[e for e in mine if e is not analysis])
    harness.run()
    (root,) = [s for s in harness.spans() if not s.parent_span_id]
    assert _string(root, c.OI_OUTPUT_VALUE) is None and _string(root, c.OI_INPUT_VALUE)
    harness.put(analysis)
    harness.run()
    (late,) = [s for s in harness.spans() if s.name == c.SPAN_CALL_ANALYSIS]
    assert _string(late, c.OI_OUTPUT_VALUE) == analysis["analysis"]["summary"]
    assert _string(late, c.OI_OUTPUT_MIME_TYPE) == "text/plain"
    assert _string(late, c.OI_SPAN_KIND) == "CHAIN"
    (replayed_root,) = [s for s in _replayed_calls(mine) if not s.parent_span_id]
    assert _string(replayed_root, c.OI_OUTPUT_VALUE) == analysis["analysis"]["summary"]


def test_points_stored_by_earlier_versions_are_still_loaded(tmp_path: Path) -> None:
    """A batch's points are one row, each attribute set and span named once; rows of versions
    that stored a row per point (an object each), or a batch with every point in full, wait in
    the same table after an upgrade and are recorded as they were."""
    state, inbox, _ = open_processor(tmp_path)
    old = MetricPoint("cartesia.tts.ttfb", InstrumentKind.HISTOGRAM, "s", "TTS", 0.25,
                      {"cartesia.agent.id": "a"}, "turn:1", 7, 8)  # fmt: skip
    new = [MetricPoint("cartesia.calls", InstrumentKind.COUNTER, "{call}", "calls", 1,
                       {"cartesia.agent.id": "b", "ok": True}, "root", 1 << 100, 1 << 63)]  # fmt: skip
    row = (
        '{"instrument": "cartesia.tts.ttfb", "kind": "histogram", "unit": "s", "description": "TTS", '
        '"value": 0.25, "attributes": {"cartesia.agent.id": "a"}, "span_key": "turn:1", "trace_id": 7, '
        '"span_id": 8}'
    )
    in_full = (
        '{"instruments": [["cartesia.tts.ttfb", "histogram", "s", "TTS"]], '
        '"points": [[0, 0.25, {"cartesia.agent.id": "a"}, "turn:1", 7, 8]]}'
    )
    with state.transaction() as tx:
        first = tx.add_point(row)
        second = tx.add_point(in_full)
        third = tx.add_point(points_to_json(new * 2))
    assert load_unexported_points(state) == [(first, old), (second, old), (third, new[0]), (third, new[0])]
    state.close()
    inbox.close()


_LABELS = st.sampled_from(["cartesia.agent.id", "ok", "n"])
_VALUES = st.one_of(st.booleans(), st.integers(-2, 2), st.sampled_from(["a", "b", "1", "True"]))


#: an instrument has one kind, unit and description
_INSTRUMENTS = st.sampled_from(
    [
        ("cartesia.calls", InstrumentKind.COUNTER, "{call}", "Calls by outcome"),
        ("cartesia.tts.ttfb", InstrumentKind.HISTOGRAM, "s", "TTS"),
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.builds(
            lambda instrument, value, attributes, span: MetricPoint(
                instrument[0],
                instrument[1],
                instrument[2],
                instrument[3],
                value,
                attributes,
                span[0],
                span[1],
                span[2],
            ),
            _INSTRUMENTS,
            st.one_of(st.integers(0, 3), st.floats(0, 10)),
            st.dictionaries(_LABELS, _VALUES, max_size=3),
            st.sampled_from([("root", 1 << 100, 1 << 63), ("turn:1", 1 << 100, 5), ("root", 1, 1)]),
        ),
        max_size=12,
    )
)
def test_a_points_row_gives_back_its_points(points: list[MetricPoint]) -> None:
    """Stored and read again, a batch's points are the same, each attribute of its own type
    (True and 1 are equal in Python, and a set is stored once), in their own dicts."""
    loaded = points_from_json(points_to_json(points))
    assert loaded == points
    assert [[type(v) for v in p.attributes.values()] for p in loaded] == [
        [type(v) for v in p.attributes.values()] for p in points
    ]
    assert len({id(p.attributes) for p in loaded}) == len(loaded)


def test_a_redelivered_turn_whose_tool_calls_share_an_id_exports_each_span_once(harness: Harness) -> None:
    """Two tool calls of one id in a turn are two spans (the second's key counts it); the turn
    delivered again must find both in the ledger, not only the first."""
    events = _events()
    call_id = next(e["call_id"] for e in events if e.get("type") == "call_turn")
    started = next(e for e in events if e.get("call_id") == call_id and e["type"] == "call_started")
    turn = copy.deepcopy(next(e for e in events if e.get("call_id") == call_id and e["type"] == "call_turn"))
    call = {"id": "tc_1", "name": "lookup", "arguments": {"q": 1}}
    turn["turn"]["tool_calls"] = [call, {**call, "arguments": {"q": 2}}]
    harness.put(started, turn)
    harness.run()
    first = harness.spans()
    assert len([s for s in first if s.parent_span_id == first[0].span_id]) == 2  # both tool spans
    harness.put(turn)
    harness.run()
    _assert_exactly_once(harness.spans(), {s.span_id for s in first})


def test_an_event_that_fails_is_skipped_alone_and_the_rest_of_its_batch_goes_out_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch runs first without a savepoint per event; an event that fails rolls it back and
    it runs again with them: that event is skipped (and logged) once, every other span goes out
    once, nothing of the first run remains."""
    events = _events()
    turns = [e for e in events if e.get("type") == "call_turn"]
    bad = turns[len(turns) // 2]["turn"]
    bad_key = ids.turn_key(bad["role"], bad["start_timestamp"])

    def failing(points: list[MetricPoint], label: Any) -> list[MetricPoint]:
        # the streamed turn's points only (not the call's at its end), after its span ids went
        # into the ledger: only a rollback takes them out, so that the call's end exports it
        if points and all(p.span_key.startswith(bad_key) for p in points):
            raise RuntimeError("a bug in the labels")
        return deployments.fold(points, label)

    monkeypatch.setattr(processor_module, "fold", failing)
    harness.put(*events)
    failed = 0
    with caplog.at_level(logging.ERROR, logger="otelbridge.processor"):
        while (result := harness.processor.process_batch(limit=7)).events:
            failed += result.failed_events
    assert failed == 1
    assert len([r for r in caplog.records if "could not be processed" in r.getMessage()]) == 1
    # the whole calls' ends export what the skipped turn would have: each span once, all there
    _assert_exactly_once(harness.spans(), _expected_span_ids(events))
    assert harness.processor.watermark() == len(events)


# --- log items (system transcript entries) go out with the root, or are late once ----------------


def _logged_call(call_id: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """call_started, call_completed (two log items in its transcript) and the final call."""
    turns = [{"role": "user", "start_timestamp": 1.0, "end_timestamp": 2.0, "text": "a"}]
    started, _, completed = _call_events(call_id, turns, None)
    completed["call"]["transcript"] += [
        {"role": "system", "start_timestamp": 1.5, "log_event": {"event": "tool_log", "metadata": {}}},
        {"role": "system", "start_timestamp": 5.0, "log_metric": {"name": "m", "value": 1}},
    ]
    return started, completed, completed["call"]


def _late_log_items(harness: Harness) -> int:
    late = 0
    while (result := harness.processor.process_batch(limit=7)).events:
        late += result.late_log_items
    return late


def test_log_items_exported_with_the_root_are_not_late_when_the_call_comes_again(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The same completion delivered twice, then the final call read by the poller: the log
    items went out with the first copy (events of the root), none of them is late."""
    started, completed, final = _logged_call("ac_logs_again")
    harness.put(started, completed)
    assert _late_log_items(harness) == 0
    first = harness.spans()
    assert sum(len(s.events) for s in first) == 2
    with caplog.at_level(logging.INFO, logger="otelbridge.processor"):
        harness.put(completed)
        assert _late_log_items(harness) == 0
        result = harness.processor.take_calls([(parse_call(final), final)], "poll", [], time.time_ns())
        assert result.late_log_items == 0 and result.spans == 0
    assert not [r for r in caplog.records if "log item" in r.getMessage()]
    assert len(harness.spans()) == len(first)


def test_log_items_known_only_after_the_root_went_out_are_late_once(tmp_path: Path) -> None:
    """A call exported as it stood at its timeout, then its completion with two log items: they
    cannot be placed any more and are counted late; a second copy of the completion counts
    them no more."""
    clock = [time.time_ns()]
    h = Harness(tmp_path / "state", clock)
    started, completed, _ = _logged_call("ac_logs_late")
    h.put(started)
    h.run()
    clock[0] += 3601 * 10**9
    assert h.processor.sweep().calls_closed == 1
    h.put(completed)
    assert _late_log_items(h) == 2
    h.put(completed)
    assert _late_log_items(h) == 0
    h.close()


# --- a running call read again by every poll ------------------------------------------------------


def _assembled(bodies: list[bytes]) -> Any:
    assembler = CallAssembler()
    for body in bodies:
        assembler.add(parse_webhook_event(json.loads(body)))
    (built,) = assembler.calls()
    return built


@pytest.mark.parametrize("webhook_first", [True, False], ids=["webhook-first", "poll-first"])
def test_a_running_call_read_by_every_poll_keeps_one_polled_copy_and_assembles_the_same(
    harness: Harness, webhook_first: bool
) -> None:
    """The poller re-reads a running call every interval; each read holds everything the one
    before did. Only the newest polled copy is kept beside the webhooks' events (and the copy
    the assembler takes, the first call_started kept, whichever it is): the kept rows no longer
    grow with every poll, and the call they assemble is the one every copy assembled."""
    call_id = "ac_running"
    agent = {"id": call_id, "agent_id": "agent_1", "status": "created", "transcript": []}
    start = "2026-11-21T10:00:00Z"
    started = {"type": "call_started", "call_id": call_id, "agent_id": "agent_1", "timestamp": start,
               "call": {**agent, "status": "started", "start_time": start, "agent_name": "bot"}}  # fmt: skip
    turn = {"role": "user", "start_timestamp": 0.5, "end_timestamp": 0.9, "text": "hi"}
    waiting = {"type": "call_turn", "call_id": call_id, "agent_id": "agent_1", "turn": turn}
    every: list[bytes] = []  # what was kept before: every copy

    def poll(raw: dict[str, Any]) -> None:
        listed = parse_call(raw)
        every.append(synthetic_body(synthetic_event(listed, "poll"), raw))
        harness.processor.take_calls([(listed, raw)], "poll", [], time.time_ns())

    def webhook(event: dict[str, Any]) -> None:
        every.append(json.dumps(event).encode())
        harness.put(event)
        harness.run()

    if webhook_first:
        webhook(started)
    else:  # listed before it started: no start time, the turn that comes waits for one
        poll(agent)
        webhook(waiting)
        poll(agent)
        webhook(started)
    transcript: list[dict[str, Any]] = []
    for k in range(30):
        transcript.append({"role": "assistant" if k % 2 else "user", "start_timestamp": 1.0 + 3 * k,
                           "end_timestamp": 3.0 + 3 * k, "text": "x" * 200})  # fmt: skip
        poll({**agent, "status": "started", "start_time": start, "transcript": list(transcript)})
    with harness.state.reading() as tx:
        kept = tx.kept_events(call_id)
    sources = [json.loads(body).get("source") for body in kept]
    assert sources.count("poll") == (1 if webhook_first else 2)  # the newest (and the first kept)
    assert json.loads(kept[-1]) == json.loads(every[-1])
    assert len(kept) == len(every) - 29 - (0 if webhook_first else 1)  # every webhook event kept
    assert _assembled(kept) == _assembled(every)
