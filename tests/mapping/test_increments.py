"""Increments: a call exported piece by piece gives every span and point exactly once."""

from __future__ import annotations

import pytest

from otelbridge.cartesia.models import AgentCall, parse_call
from otelbridge.mapping import conventions as c
from otelbridge.mapping import map_call
from otelbridge.mapping.increments import analysis_span, call_increment, turn_increment
from otelbridge.mapping.latency import TurnTiming, preceding
from otelbridge.mapping.policy import MappingOptions
from otelbridge.mapping.traces import CallContext

OPTIONS = MappingOptions()
START = "2026-11-20T09:00:00Z"


def _call(status: str = "completed", *, with_logs: bool = True) -> AgentCall:
    transcript: list[dict[str, object]] = [
        {"role": "user", "text": "hi", "start_timestamp": 0.5, "end_timestamp": 1.5, "stt_ttfb": 0.1},
        {
            "role": "assistant",
            "text": "hello",
            "start_timestamp": 2.0,
            "end_timestamp": 4.0,
            "tts_ttfb": 0.2,
            "tool_calls": [{"id": "t1", "name": "lookup", "arguments": {}, "result": "ok"}],
        },
    ]
    if with_logs:
        transcript += [
            {"role": "system", "start_timestamp": 2.5, "log_metric": {"name": "llm_ms", "value": 42}},
            {"role": "system", "start_timestamp": 5.0, "log_event": {"event": "handoff", "metadata": {}}},
        ]
    return parse_call(
        {
            "id": "call_1",
            "agent_id": "agent_1",
            "status": status,
            "start_time": START,
            "end_time": "2026-11-20T09:00:06Z",
            "transcript": transcript,
        }
    )


def _ctx(call: AgentCall) -> CallContext:
    assert call.start_time is not None
    return CallContext(call.id, call.agent_id, call.agent_name, call.start_time, OPTIONS)


@pytest.mark.parametrize("timing_given", [False, True], ids=["timing-computed", "timing-given"])
def test_streamed_turns_then_completion_equal_the_whole_call(timing_given: bool) -> None:
    """Also with each turn's timing handed in, as the processor does (it has it already)."""
    call = _call()
    whole = map_call(call, OPTIONS)
    exported: set[int] = set()
    spans, points = [], []
    received: list[TurnTiming] = []
    for item in call.transcript:
        if item.is_system:
            continue
        timing = TurnTiming.of(item)
        previous = preceding(received, timing.start_us)
        inc = turn_increment(_ctx(call), item, exported, previous, timing if timing_given else None)
        received.append(timing)
        exported |= {s.span_id for s in inc.spans}
        spans += inc.spans
        points += inc.points
    final = call_increment(call, OPTIONS, exported, with_root=True)
    spans += final.spans
    points += final.points
    ids = [s.span_id for s in spans]
    assert sorted(ids) == sorted(s.span_id for s in whole.spans)
    assert len(ids) == len(set(ids))
    # the completion adds only the root: the turns and the tool were out already
    assert [s.key for s in final.spans] == ["root"]
    # every point of the whole call, once (log metric point now on the root)
    assert sorted(p.instrument for p in points) == sorted(p.instrument for p in whole.points)
    # the assistant turn answered 0.5 s after the caller stopped, streamed or whole
    streamed = next(p for p in points if p.instrument == c.METRIC_RESPONSE_LATENCY)
    assert streamed == next(p for p in whole.points if p.instrument == c.METRIC_RESPONSE_LATENCY)
    assert streamed.value == 0.5
    log_point = next(p for p in points if p.instrument.startswith(c.METRIC_LOG_METRIC_PREFIX))
    assert log_point.span_id == final.spans[0].span_id
    # the log items went onto the root, as its events
    root_events = {e.name for e in final.spans[0].events}
    assert {c.EVENT_LOG_METRIC, "handoff"} <= root_events


def test_completion_first_places_log_items_on_their_turn() -> None:
    call = _call()
    inc = call_increment(call, OPTIONS, set(), with_root=True)
    whole = map_call(call, OPTIONS)
    assert [(s.span_id, len(s.events)) for s in inc.spans] == [
        (s.span_id, len(s.events)) for s in whole.spans
    ]
    assert inc.late_log_items == 0
    # and a turn webhook arriving afterwards adds nothing
    exported = {s.span_id for s in inc.spans}
    again = turn_increment(_ctx(call), call.transcript[1], exported)
    assert not again


def test_without_root_log_items_wait_for_the_end() -> None:
    call = _call(status="started")
    inc = call_increment(call, OPTIONS, set(), with_root=False)
    assert all(s.parent_span_id is not None for s in inc.spans)
    assert not any(e.name == c.EVENT_LOG_METRIC for s in inc.spans for e in s.events)
    assert not any(p.instrument.startswith(c.METRIC_LOG_METRIC_PREFIX) for p in inc.points)
    assert not any(p.instrument == c.METRIC_CALLS for p in inc.points)
    rest = call_increment(_call(), OPTIONS, {s.span_id for s in inc.spans}, with_root=True)
    assert [s.key for s in rest.spans] == ["root"]
    assert {c.EVENT_LOG_METRIC, "handoff"} <= {e.name for e in rest.spans[0].events}
    assert any(p.instrument == c.METRIC_CALLS for p in rest.points)


def test_a_repeated_completion_adds_nothing_and_its_log_items_are_not_late() -> None:
    """The log items went out with the root: the ledger names them (their ids beside the span
    ids), and a second copy of the call counts none of them late."""
    call = _call()
    first = call_increment(call, OPTIONS, set(), with_root=True)
    assert first.late_log_items == 0 and len(set(first.log_items)) == 2
    exported = {s.span_id for s in first.spans} | set(first.log_items)
    assert len(exported) == len(first.spans) + 2  # no span's id among them
    second = call_increment(call, OPTIONS, exported, with_root=True)
    assert not second.spans and not second.points
    assert second.late_log_items == 0 and second.log_items == []


def test_log_items_the_root_went_out_without_are_late_once() -> None:
    """A root exported before the call's log items were known (a timeout, an end without them):
    the items that come later cannot be placed; each is counted late once, however many
    copies of the call follow."""
    first = call_increment(_call(with_logs=False), OPTIONS, set(), with_root=True)
    assert first.log_items == []
    exported = {s.span_id for s in first.spans}
    later = call_increment(_call(), OPTIONS, exported, with_root=True)
    assert not later.spans and not later.points
    assert later.late_log_items == 2 and len(set(later.log_items)) == 2
    again = call_increment(_call(), OPTIONS, exported | set(later.log_items), with_root=True)
    assert again.late_log_items == 0 and again.log_items == []


def test_the_ids_of_log_items_are_their_own() -> None:
    """A log item's id is made of what it is (kind, name, start), not of its place in the
    transcript: the assembled call and the API's copy order items differently."""
    call = _call()
    ids_first = call_increment(call, OPTIONS, set(), with_root=True).log_items
    reordered = call.model_copy(update={"transcript": list(reversed(call.transcript))})
    assert sorted(call_increment(reordered, OPTIONS, set(), with_root=True).log_items) == sorted(ids_first)
    # without the root nothing is settled: the items wait for the end
    assert call_increment(call, OPTIONS, set(), with_root=False).log_items == []
    other = call.model_copy(update={"id": "call_2"})  # per call, as span ids are
    assert not set(call_increment(other, OPTIONS, set(), with_root=True).log_items) & set(ids_first)


def test_analysis_span_is_a_child_of_the_root() -> None:
    call = _call()
    span = analysis_span(_ctx(call), "The caller was happy.", 123)
    whole = map_call(call, OPTIONS)
    root = next(s for s in whole.spans if s.parent_span_id is None)
    assert span.trace_id == root.trace_id and span.parent_span_id == root.span_id
    assert span.attributes[c.CALL_SUMMARY] == "The caller was happy."
    assert span.span_id not in {s.span_id for s in whole.spans}
