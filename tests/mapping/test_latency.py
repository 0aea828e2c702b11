"""Response latency (docs/conventions.md, "5.1 Response latency"): examples worked out by hand
from the definition, and properties tying the streamed computation (one turn at a time, given
the turns received before it) to the whole-transcript one and to the real mapping."""

from __future__ import annotations

from typing import Any, Final

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otelbridge.cartesia.models import AgentCall, TranscriptItem, parse_call
from otelbridge.mapping import conventions as c
from otelbridge.mapping import ids, map_call
from otelbridge.mapping.increments import turn_increment
from otelbridge.mapping.latency import (
    TurnTiming,
    latency_after,
    micros,
    preceding,
    response_latencies,
    spoken_timings,
)
from otelbridge.mapping.policy import MappingOptions
from otelbridge.mapping.records import MetricPoint, SpanRecord
from otelbridge.mapping.traces import CallContext

OPTIONS: Final = MappingOptions()
START: Final = "2026-11-20T09:00:00Z"
LATENCY_SETTINGS: Final = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _turn(role: str, start: float, end: float | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"role": role, "text": "-", "start_timestamp": start}
    if end is not None:
        item["end_timestamp"] = end
    return item


def _log_metric(at: float) -> dict[str, Any]:
    return {"role": "system", "start_timestamp": at, "log_metric": {"name": "llm_ms", "value": 42}}


def _call(items: list[dict[str, Any]], deployment_id: str | None = "dep_1") -> AgentCall:
    payload: dict[str, Any] = {
        "id": "call_latency",
        "agent_id": "agent_1",
        "status": "completed",
        "start_time": START,
        "end_time": "2026-11-20T09:10:00Z",
        "transcript": items,
    }
    if deployment_id is not None:
        payload["deployment_id"] = deployment_id
    return parse_call(payload)


def _transcript(*items: dict[str, Any]) -> list[TranscriptItem]:
    return _call(list(items)).transcript


def _latencies(*items: dict[str, Any]) -> dict[int, float]:
    return response_latencies(_transcript(*items))


# --- examples -----------------------------------------------------------------------------


def test_micros_rounds_half_up_on_the_decimal_text() -> None:
    assert micros(1.0000005) == 1_000_001
    assert micros(1.0000004999) == 1_000_000
    assert micros(11.300000000000001) == micros(11.3) == 11_300_000
    assert micros(11.299999999999999) == 11_300_000
    assert micros(0.0) == 0
    assert micros(-0.0000005) == -1  # half up is away from zero, as Decimal's ROUND_HALF_UP


def test_greeting_has_no_latency() -> None:
    # the assistant speaks first: no preceding turn at all
    assert _latencies(_turn("assistant", 0.2, 2.0), _turn("user", 3.0, 4.0)) == {}


def test_gap_between_user_end_and_assistant_start() -> None:
    latencies = _latencies(
        _turn("user", 0.5, 1.5),
        _turn("assistant", 2.25, 4.0),
        _turn("user", 5.0, 6.0),
        _turn("assistant", 7.5, 8.0),
    )
    assert latencies == {1: 0.75, 3: 1.5}


def test_transcript_order_does_not_matter_the_start_does() -> None:
    latencies = _latencies(_turn("assistant", 2.25, 4.0), _turn("user", 0.5, 1.5))
    assert latencies == {0: 0.75}


def test_assistant_after_assistant_has_none() -> None:
    latencies = _latencies(
        _turn("user", 0.5, 1.5), _turn("assistant", 2.0, 3.0), _turn("assistant", 3.5, 4.0)
    )
    assert latencies == {1: 0.5}


def test_overlap_has_none() -> None:
    # the agent starts at 1.0 while the caller speaks until 1.5
    assert _latencies(_turn("user", 0.5, 1.5), _turn("assistant", 1.0, 3.0)) == {}


def test_latency_zero_despite_float_noise() -> None:
    assert _latencies(_turn("user", 10.0, 11.300000000000001), _turn("assistant", 11.3, 12.0)) == {1: 0.0}
    assert _latencies(_turn("user", 10.0, 11.3), _turn("assistant", 11.299999999999999, 12.0)) == {1: 0.0}


def test_exact_to_the_microsecond() -> None:
    assert 15.1 - 14.9 != 0.2  # what a float subtraction would say
    assert _latencies(_turn("user", 14.0, 14.9), _turn("assistant", 15.1, 16.0)) == {1: 0.2}
    # end 1.0000005 is 1000001 µs (half up): 1.5 s - 1.000001 s
    assert _latencies(_turn("user", 0.5, 1.0000005), _turn("assistant", 1.5, 2.0)) == {1: 0.499999}
    # a start half a microsecond past the end rounds up to 1 µs of latency
    assert _latencies(_turn("user", 0.5, 1.0), _turn("assistant", 1.0000005, 2.0)) == {1: 0.000001}
    # a quarter of a microsecond either way is 0
    assert _latencies(_turn("user", 0.5, 1.00000025), _turn("assistant", 1.0, 2.0)) == {1: 0.0}


def test_user_turn_without_end_has_none() -> None:
    assert _latencies(_turn("user", 0.5), _turn("assistant", 2.0, 3.0)) == {}


def test_user_turn_ending_before_it_starts_has_none() -> None:
    assert _latencies(_turn("user", 1.5, 1.0), _turn("assistant", 2.0, 3.0)) == {}


def test_times_outside_the_day_have_none() -> None:
    assert _latencies(_turn("user", -1.0, 1.0), _turn("assistant", 2.0, 3.0)) == {}
    assert _latencies(_turn("user", 86_000.0, 86_400.5), _turn("assistant", 86_401.0, 86_402.0)) == {}
    assert _latencies(_turn("user", 86_000.0, 86_399.0), _turn("assistant", 86_400.5, 86_402.0)) == {}
    # the bound itself is inside
    assert _latencies(_turn("user", 86_000.0, 86_399.5), _turn("assistant", 86_400.0, 86_401.0)) == {1: 0.5}
    assert _latencies(_turn("user", 0.0, 0.0), _turn("assistant", 0.25, 1.0)) == {1: 0.25}


def test_system_items_do_not_block() -> None:
    latencies = _latencies(_turn("user", 0.5, 1.5), _log_metric(1.7), _turn("assistant", 2.0, 3.0))
    assert latencies == {2: 0.5}


def test_ties_in_one_microsecond_the_later_end_wins() -> None:
    # both start at 1.0 (the second within the same microsecond); the one ending last precedes
    assert (
        _latencies(_turn("user", 1.0, 2.0), _turn("agent2", 1.0000004, 2.5), _turn("assistant", 3.0, 4.0))
        == {}
    )
    assert _latencies(
        _turn("user", 1.0, 2.5), _turn("agent2", 1.0000004, 2.0), _turn("assistant", 3.0, 4.0)
    ) == {2: 0.5}
    # a turn without end ends "before" any turn with one
    assert _latencies(_turn("agent2", 1.0), _turn("user", 1.0, 2.0), _turn("assistant", 3.0, 4.0)) == {2: 1.0}
    # a full tie (start and end in the same microsecond) prefers the user turn, in either order
    for first, second in (("user", "agent2"), ("agent2", "user")):
        latencies = _latencies(_turn(first, 1.0, 2.0), _turn(second, 1.0, 2.0), _turn("assistant", 3.0, 4.0))
        assert latencies == {2: 1.0}, (first, second)
    assert _latencies(
        _turn("assistant", 1.0, 2.0), _turn("user", 1.0, 2.0), _turn("assistant", 3.0, 4.0)
    ) == {2: 1.0}


def test_only_turns_starting_strictly_before_precede() -> None:
    # a user turn starting in the same microsecond as the assistant turn does not precede it
    latencies = _latencies(
        _turn("user", 0.5, 1.0), _turn("user", 3.0000004, 3.5), _turn("assistant", 3.0, 4.0)
    )
    assert latencies == {2: 2.0}


def test_another_role_in_between_blocks() -> None:
    assert _latencies(_turn("user", 0.5, 1.0), _turn("agent2", 1.2, 1.4), _turn("assistant", 2.0, 3.0)) == {}


def test_known_turns_the_transcript_lacks_count() -> None:
    # a partial transcript holding only the assistant turn; the user turn was streamed
    transcript = _transcript(_turn("assistant", 2.0, 3.0))
    assert response_latencies(transcript) == {}
    streamed_user = TurnTiming("user", 500_000, 1_500_000)
    assert response_latencies(transcript, [streamed_user]) == {0: 0.5}
    # a known turn in between (streamed, missing from the transcript) blocks
    streamed_other = TurnTiming("agent2", 1_600_000, 1_800_000)
    assert response_latencies(transcript, [streamed_user, streamed_other]) == {}
    # a known turn starting after the assistant turn changes nothing
    later = TurnTiming("user", 2_500_000, 2_600_000)
    assert response_latencies(transcript, [streamed_user, later]) == {0: 0.5}


def test_known_duplicates_of_transcript_turns_change_nothing() -> None:
    transcript = _transcript(_turn("user", 0.5, 1.5), _log_metric(1.6), _turn("assistant", 2.0, 3.0))
    expected = {2: 0.5}
    assert response_latencies(transcript) == expected
    known = spoken_timings(transcript)
    assert response_latencies(transcript, known) == expected
    assert response_latencies(transcript, known * 3) == expected
    # the same turns as a streamed copy with float noise are the same microseconds
    noisy = _transcript(_turn("user", 0.5000000000000001, 1.5000000000000002), _turn("assistant", 2.0, 3.0))
    assert response_latencies(transcript, spoken_timings(noisy)) == expected
    # a streamed copy of the user turn before its end was known: the one with the end wins the tie
    assert response_latencies(transcript, [TurnTiming("user", 500_000, None)]) == expected


def test_latency_after_and_preceding() -> None:
    user = TurnTiming("user", 500_000, 1_500_000)
    assistant = TurnTiming("assistant", 2_000_000, 3_000_000)
    assert latency_after(user, assistant) == 0.5
    assert latency_after(None, assistant) is None
    assert latency_after(user, TurnTiming("agent2", 2_000_000, None)) is None
    assert latency_after(assistant, TurnTiming("assistant", 4_000_000, None)) is None
    assert preceding([user, assistant], 2_000_000) == user
    assert preceding([user, assistant], 2_000_001) == assistant
    assert preceding([user, assistant], 500_000) is None


def test_through_the_mapping_span_attribute_and_point() -> None:
    call = _call([_turn("user", 0.5, 1.5), _turn("assistant", 1.75, 4.0), _turn("assistant", 5.0, 6.0)])
    mapped = map_call(call, OPTIONS)
    spans = {s.key: s for s in mapped.spans}
    first = spans[ids.turn_key("assistant", 1.75)]
    assert first.attributes[c.TURN_RESPONSE_LATENCY] == 0.25
    assert c.TURN_RESPONSE_LATENCY not in spans[ids.turn_key("assistant", 5.0)].attributes
    assert c.TURN_RESPONSE_LATENCY not in spans[ids.turn_key("user", 0.5)].attributes
    (point,) = [p for p in mapped.points if p.instrument == c.METRIC_RESPONSE_LATENCY]
    assert point.value == 0.25 and point.span_id == first.span_id and point.span_key == first.key
    assert point.attributes == {c.METRIC_ATTR_AGENT_ID: "agent_1", c.METRIC_ATTR_DEPLOYMENT_ID: "dep_1"}


# --- properties ---------------------------------------------------------------------------

_roles = st.sampled_from(["user"] * 4 + ["assistant"] * 4 + ["agent2", "tool"])
#: Cartesia's float noise, and sub-millisecond offsets (3e-4: another microsecond, same ms)
_noise = st.sampled_from([0.0, 0.0, 1e-15, -1e-15, 4e-7, -4e-7, 3e-4])
#: a coarse millisecond grid (so turns tie and overlap), now and then outside 0 .. 86400 s
_start_ms = st.integers(0, 24).map(lambda k: k * 250) | st.sampled_from(
    [-1_000, 86_399_750, 86_400_000, 86_400_250, 90_000_000]
)


@st.composite
def _spoken(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(_start_ms) / 1000 + draw(_noise)
    kind = draw(st.sampled_from(["none", "after", "after", "after", "after", "before", "far", "negative"]))
    end: float | None = None
    if kind == "after":
        end = start + draw(st.integers(0, 12).map(lambda k: k * 250)) / 1000 + draw(_noise)
    elif kind == "before":
        end = start - 0.25
    elif kind == "far":
        end = 90_000.0
    elif kind == "negative":
        end = -0.5
    return _turn(draw(_roles), start, end)


def _identity(item: dict[str, Any]) -> tuple[str, int]:
    return item["role"], ids.start_ms(item["start_timestamp"])


@st.composite
def _conversation(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Turns one after the other (mostly alternating), with gaps, overlaps and float noise."""
    items: list[dict[str, Any]] = []
    clock_ms = draw(st.integers(0, 4)) * 250
    role = draw(st.sampled_from(["user", "assistant"]))
    for _ in range(draw(st.integers(1, 10))):
        start = clock_ms / 1000 + draw(_noise)
        duration_ms = draw(st.integers(0, 8)) * 250
        end = None if draw(st.integers(0, 9)) == 0 else (clock_ms + duration_ms) / 1000 + draw(_noise)
        items.append(_turn(role, start, end))
        # the next turn: right after (latency 0), after a gap, overlapping, or starting together
        gap = draw(st.sampled_from([-250, 0, 0, 250, 500, 1000, None]))
        clock_ms = clock_ms if gap is None else max(clock_ms + duration_ms + gap, 0)
        step = draw(st.sampled_from(["switch"] * 6 + ["same", "other"]))
        if step == "other":
            role = "agent2"
        elif step == "switch":
            role = "assistant" if role == "user" else "user"
    return draw(st.permutations(items))


def _distinct(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({_identity(item): item for item in reversed(items)}.values())


#: spoken turns with distinct (role, start ms): distinct span ids, streamed or whole
spoken_lists = st.lists(_spoken(), max_size=12, unique_by=_identity) | _conversation().map(_distinct)


@st.composite
def transcripts(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Spoken turns in any order, with a few system items among them."""
    items = draw(spoken_lists)
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(items)))
        items.insert(at, _log_metric(draw(st.integers(0, 10_000)) / 1000))
    return items


def _spoken_indices(transcript: list[TranscriptItem]) -> list[int]:
    return [i for i, item in enumerate(transcript) if not item.is_system]


def _start_order(data: st.DataObject, transcript: list[TranscriptItem]) -> list[int]:
    """Spoken indices in start order (to 1 µs), turns of one microsecond in any order."""
    spoken = _spoken_indices(transcript)
    tiebreak = data.draw(st.permutations(range(len(spoken))))
    return [
        index
        for _, index in sorted(
            zip(tiebreak, spoken, strict=True), key=lambda p: (micros(transcript[p[1]].start_timestamp), p[0])
        )
    ]


def _with_duplicates(data: st.DataObject, order: list[int]) -> list[int]:
    """``order`` with extra deliveries of its turns, each somewhere after the first one."""
    out = list(order)
    for index in order:
        for _ in range(data.draw(st.integers(0, 2))):
            first = out.index(index)
            out.insert(data.draw(st.integers(first + 1, len(out))), index)
    return out


def _stream(transcript: list[TranscriptItem], deliveries: list[int]) -> list[tuple[int, float | None]]:
    """Each delivery, as the daemon's ``call_turn`` path computes it: (index, latency)."""
    received: list[TurnTiming] = []
    out = []
    for index in deliveries:
        timing = TurnTiming.of(transcript[index])
        out.append((index, latency_after(preceding(received, timing.start_us), timing)))
        received.append(timing)
    return out


@LATENCY_SETTINGS
@given(transcripts(), st.data())
def test_streamed_in_start_order_equals_the_whole_transcript(
    items: list[dict[str, Any]], data: st.DataObject
) -> None:
    transcript = _transcript(*items)
    whole = response_latencies(transcript)
    assert all(transcript[i].role == "assistant" for i in whole)
    deliveries = _start_order(data, transcript)
    streamed = _stream(transcript, deliveries)
    assert {i: v for i, v in streamed if v is not None} == whole
    # at-least-once: any number of repeats, each after the turn's first delivery, give the same
    repeated = _stream(transcript, _with_duplicates(data, deliveries))
    for index, value in repeated:
        assert value == whole.get(index), (index, transcript[index])


@LATENCY_SETTINGS
@given(transcripts(), st.data())
def test_streamed_in_any_order(items: list[dict[str, Any]], data: st.DataObject) -> None:
    """Any delivery order (with repeats): a turn delivered after the turn that precedes it in
    the whole call gets the whole-transcript value; one delivered before it gets the value of
    the transcript of the turns received so far (plus itself)."""
    transcript = _transcript(*items)
    whole = response_latencies(transcript)
    everything = spoken_timings(transcript)
    spoken = _spoken_indices(transcript)
    deliveries = data.draw(st.lists(st.sampled_from(spoken), max_size=3 * len(spoken))) if spoken else []
    deliveries = data.draw(st.permutations([*spoken, *deliveries]))
    received: list[int] = []
    for index, value in _stream(transcript, deliveries):
        timing = TurnTiming.of(transcript[index])
        before = preceding(everything, timing.start_us)
        if before is None or before in {TurnTiming.of(transcript[i]) for i in received}:
            assert value == whole.get(index), (index, transcript[index])
        partial = [transcript[i] for i in [*received, index]]
        assert value == response_latencies(partial).get(len(partial) - 1)
        received.append(index)


def _latency_view(
    spans: list[SpanRecord], points: list[MetricPoint]
) -> tuple[dict[int, object], list[tuple[object, int, dict[str, str | bool | int]]]]:
    attributes: dict[int, object] = {
        s.span_id: s.attributes.get(c.TURN_RESPONSE_LATENCY) for s in spans if s.key.startswith("turn:")
    }
    latency_points: list[tuple[object, int, dict[str, str | bool | int]]] = sorted(
        ((p.value, p.span_id, p.attributes) for p in points if p.instrument == c.METRIC_RESPONSE_LATENCY),
        key=lambda p: p[1],
    )
    return attributes, latency_points


@LATENCY_SETTINGS
@given(transcripts(), st.sampled_from(["dep_1", None]), st.data())
def test_turn_increments_equal_the_whole_mapping(
    items: list[dict[str, Any]], deployment_id: str | None, data: st.DataObject
) -> None:
    call = _call(items, deployment_id)
    assert call.start_time is not None
    ctx = CallContext(call.id, call.agent_id, call.agent_name, call.start_time, OPTIONS, call.deployment_id)
    exported: set[int] = set()
    spans: list[SpanRecord] = []
    points: list[MetricPoint] = []
    received: list[TurnTiming] = []
    for index in _start_order(data, call.transcript):
        item = call.transcript[index]
        timing = TurnTiming.of(item)
        inc = turn_increment(ctx, item, exported, preceding(received, timing.start_us))
        received.append(timing)
        exported |= {s.span_id for s in inc.spans}
        spans += inc.spans
        points += inc.points
    whole = map_call(call, OPTIONS)
    assert _latency_view(spans, points) == _latency_view(whole.spans, whole.points)


@LATENCY_SETTINGS
@given(transcripts())
def test_latency_is_never_negative_and_sits_on_an_assistant_turn(items: list[dict[str, Any]]) -> None:
    mapped = map_call(_call(items), OPTIONS)
    by_id = {s.span_id: s for s in mapped.spans}
    with_attribute = {s.span_id for s in mapped.spans if c.TURN_RESPONSE_LATENCY in s.attributes}
    latency_points = [p for p in mapped.points if p.instrument == c.METRIC_RESPONSE_LATENCY]
    assert sorted(p.span_id for p in latency_points) == sorted(with_attribute)  # one point per span
    for point in latency_points:
        span = by_id[point.span_id]
        assert point.value >= 0
        assert span.name == c.SPAN_ASSISTANT_TURN and span.attributes[c.TURN_ROLE] == "assistant"
        assert span.attributes[c.TURN_RESPONSE_LATENCY] == point.value
        assert span.key == point.span_key and span.trace_id == point.trace_id
