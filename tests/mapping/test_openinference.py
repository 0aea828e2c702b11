"""The OpenInference layer (docs/conventions.md section 10): what Arize Phoenix, Langfuse and
other LLM-observability backends read to show the conversation, under the text policy, the
byte cap and the phone masking like every other copy of a text."""

from __future__ import annotations

import io
import json
from typing import Any, Final

import pytest

from otelbridge.cartesia.models import AgentCall, parse_call
from otelbridge.mapping import MappingOptions, TextPolicy, map_call
from otelbridge.mapping import conventions as c
from otelbridge.mapping.increments import analysis_span
from otelbridge.mapping.records import MappedCall, SpanRecord
from otelbridge.mapping.traces import CallContext, map_turn
from otelbridge.replay import Replay
from otelbridge.settings import Settings, load_settings
from tests.mapping.golden import TESTDATA, map_fixture
from tests.mapping.test_golden import FIXTURES

START: Final = "2026-04-16T01:08:37.000000000Z"
START_NS: Final = 1776301717_000_000_000
OI_TEXT: Final = (c.OI_INPUT_VALUE, c.OI_OUTPUT_VALUE, c.OI_INPUT_MIME_TYPE, c.OI_OUTPUT_MIME_TYPE)


def _call(transcript: list[dict[str, Any]], **extra: Any) -> AgentCall:
    payload = {
        "id": "ac_oi",
        "agent_id": "agent_1",
        "agent_name": "Support",
        "status": "completed",
        "start_time": START,
        "end_time": "2026-04-16T01:08:57Z",
        "end_reason": "client_hangup",
        "deployment_id": "dep_1",
        "summary": "The caller asked where the order is; the agent said it shipped.",
        "metadata": {"customer_tier": "gold", "crm": {"account": "A-1"}},
        "telephony_params": {"from": "+14155558245", "to": "+16285553868", "direction": "inbound"},
        "transcript": transcript,
    }
    return parse_call({**payload, **extra})


def _turn(role: str, start: float, text: str | None, **extra: Any) -> dict[str, Any]:
    return {"role": role, "text": text, "start_timestamp": start, "end_timestamp": start + 1.0, **extra}


CONVERSATION: Final = [
    _turn("assistant", 0.4, "Hello, how can I help?"),
    _turn("user", 2.0, "Where is my order?"),
    _turn(
        "assistant",
        3.5,
        "Let me look.",
        tool_calls=[
            {"id": "t1", "name": "lookup", "arguments": {"order": "42"}, "result": {"status": "shipped"}},
            {"id": "t2", "name": "note", "arguments": {}, "result": "done"},
            {"id": "t3", "name": "transfer", "arguments": {"to": "billing"}},
        ],
    ),
    _turn("user", 6.0, "Thanks."),
]


def _spans(mapped: MappedCall, name: str) -> list[SpanRecord]:
    return [s for s in mapped.spans if s.name == name or s.name.startswith(f"{name} ")]


def _listed(span: SpanRecord) -> list[str]:
    """What the span lists in ``otelbridge.truncated_attributes``."""
    value = span.attributes.get(c.TRUNCATED, [])
    assert isinstance(value, list)
    return value


def _root(mapped: MappedCall) -> SpanRecord:
    root = mapped.root
    assert root is not None
    return root


def test_user_turns_carry_the_callers_words_as_input_and_assistant_turns_the_agents_as_output() -> None:
    mapped = map_call(_call(CONVERSATION))
    users, assistants = _spans(mapped, "user_turn"), _spans(mapped, "assistant_turn")
    assert [u.attributes[c.OI_INPUT_VALUE] for u in users] == ["Where is my order?", "Thanks."]
    assert [a.attributes[c.OI_OUTPUT_VALUE] for a in assistants] == ["Hello, how can I help?", "Let me look."]
    for span in users:
        assert span.attributes[c.OI_INPUT_MIME_TYPE] == "text/plain"
        assert c.OI_OUTPUT_VALUE not in span.attributes and c.OI_OUTPUT_MIME_TYPE not in span.attributes
    for span in assistants:
        assert span.attributes[c.OI_OUTPUT_MIME_TYPE] == "text/plain"
        assert c.OI_INPUT_VALUE not in span.attributes and c.OI_INPUT_MIME_TYPE not in span.attributes


def test_other_spoken_roles_are_the_agents_output() -> None:
    (turn,) = _spans(map_call(_call([_turn("agent2", 1.0, "Transferring you now.")])), "turn agent2")
    assert turn.attributes[c.OI_OUTPUT_VALUE] == "Transferring you now."
    assert turn.attributes[c.OI_SPAN_KIND] == "CHAIN"
    assert c.OI_INPUT_VALUE not in turn.attributes


def test_a_placeholder_text_takes_the_words_of_the_chunks_and_a_turn_without_words_has_none() -> None:
    chunks = [{"text": "Um... ", "start_timestamp": 1.0}, {"text": "hold on. ", "start_timestamp": 1.3}]
    mapped = map_call(
        _call(
            [
                _turn("user", 1.0, "-", text_chunks=chunks),
                _turn("assistant", 2.5, "-"),  # a placeholder and no chunks: no words
                _turn("assistant", 4.0, None, text_chunks=[{"text": "Sure.", "start_timestamp": 4.0}]),
                _turn("user", 5.0, "   "),
            ]
        )
    )
    first, blank = _spans(mapped, "user_turn")
    assert first.attributes[c.TURN_TEXT] == "-"  # cartesia.turn.text stays as reported
    assert first.attributes[c.OI_INPUT_VALUE] == "Um... hold on."
    assert not set(OI_TEXT) & set(blank.attributes)
    silent, sure = _spans(mapped, "assistant_turn")
    assert not set(OI_TEXT) & set(silent.attributes)
    assert sure.attributes[c.OI_OUTPUT_VALUE] == "Sure."


def test_span_kinds() -> None:
    mapped = map_call(_call(CONVERSATION))
    kinds = {s.name.split(" ")[0]: s.attributes[c.OI_SPAN_KIND] for s in mapped.spans}
    assert kinds == {
        "invoke_agent": "AGENT",
        "user_turn": "CHAIN",
        "assistant_turn": "CHAIN",
        "execute_tool": "TOOL",
    }
    ctx = CallContext("ac_oi", "agent_1", None, START_NS, MappingOptions())
    analysis = analysis_span(ctx, "Late summary.", START_NS + 30_000_000_000)
    assert analysis.attributes[c.OI_SPAN_KIND] == "CHAIN"


def test_tool_spans_take_arguments_as_input_and_result_as_output_and_keep_gen_ai_tool() -> None:
    lookup, note, transfer = _spans(map_call(_call(CONVERSATION)), "execute_tool")
    assert (
        lookup.attributes[c.OI_INPUT_VALUE]
        == lookup.attributes[c.GEN_AI_TOOL_CALL_ARGUMENTS]
        == '{"order":"42"}'
    )
    assert lookup.attributes[c.OI_INPUT_MIME_TYPE] == "application/json"
    assert lookup.attributes[c.OI_OUTPUT_VALUE] == lookup.attributes[c.GEN_AI_TOOL_CALL_RESULT]
    assert json.loads(str(lookup.attributes[c.OI_OUTPUT_VALUE])) == {"status": "shipped"}
    assert lookup.attributes[c.OI_OUTPUT_MIME_TYPE] == "application/json"
    assert note.attributes[c.OI_INPUT_VALUE] == "{}"
    assert (note.attributes[c.OI_OUTPUT_VALUE], note.attributes[c.OI_OUTPUT_MIME_TYPE]) == (
        "done",
        "text/plain",
    )
    assert c.OI_OUTPUT_VALUE not in transfer.attributes and c.OI_OUTPUT_MIME_TYPE not in transfer.attributes
    assert c.GEN_AI_TOOL_CALL_RESULT not in transfer.attributes
    assert transfer.attributes[c.GEN_AI_TOOL_NAME] == "transfer"


def test_the_root_carries_the_first_user_utterance_the_summary_and_the_session() -> None:
    # the transcript out of start order, and the earliest user turn without words: both skipped over
    transcript = [CONVERSATION[3], _turn("user", 1.0, "-"), *CONVERSATION[:3]]
    call = _call(transcript)
    root = _root(map_call(call))
    assert root.attributes[c.OI_SPAN_KIND] == "AGENT"
    assert root.attributes[c.OI_INPUT_VALUE] == "Where is my order?"
    assert root.attributes[c.OI_INPUT_MIME_TYPE] == "text/plain"
    assert root.attributes[c.OI_OUTPUT_VALUE] == call.summary == root.attributes[c.CALL_SUMMARY]
    assert root.attributes[c.OI_OUTPUT_MIME_TYPE] == "text/plain"
    assert root.attributes[c.OI_SESSION_ID] == "ac_oi"
    # no user words, no summary: neither value nor MIME type
    quiet = _root(map_call(_call([_turn("assistant", 0.5, "Hello?")], summary=None)))
    assert not set(OI_TEXT) & set(quiet.attributes)
    assert quiet.attributes[c.OI_SESSION_ID] == "ac_oi"


def test_the_root_user_id_is_the_number_of_the_person_on_the_line_masked_unless_exported() -> None:
    inbound = _root(map_call(_call(CONVERSATION)))
    assert inbound.attributes[c.OI_USER_ID] == "+*******8245" == inbound.attributes[c.TELEPHONY_FROM]
    outbound_call = _call(
        CONVERSATION, telephony_params={"from": "+14155558245", "to": "+16285553868", "direction": "outbound"}
    )
    outbound = _root(map_call(outbound_call))
    assert outbound.attributes[c.OI_USER_ID] == "+*******3868" == outbound.attributes[c.TELEPHONY_TO]
    raw = _root(map_call(outbound_call, MappingOptions(export_phone_numbers=True)))
    assert raw.attributes[c.OI_USER_ID] == "+16285553868"
    for telephony in (None, {"connection_type": "websocket", "direction": "inbound"}):
        assert c.OI_USER_ID not in _root(map_call(_call(CONVERSATION, telephony_params=telephony))).attributes


def test_the_root_metadata_is_a_json_object_of_deployment_end_reason_and_the_calls_metadata() -> None:
    root = _root(map_call(_call(CONVERSATION)))
    assert isinstance(root.attributes[c.OI_METADATA], str)
    assert json.loads(str(root.attributes[c.OI_METADATA])) == {
        "cartesia.deployment.id": "dep_1",
        "cartesia.call.end_reason": "client_hangup",
        "customer_tier": "gold",
        "crm": {"account": "A-1"},
    }
    # a metadata key of one of our names yields; unknown parts are left out; nothing: no attribute
    clash = _call(CONVERSATION, deployment_id=None, metadata={"cartesia.call.end_reason": "mine"})
    assert json.loads(str(_root(map_call(clash)).attributes[c.OI_METADATA])) == {
        "cartesia.call.end_reason": "client_hangup"
    }
    bare = _call(CONVERSATION, deployment_id=None, end_reason=None, metadata={})
    assert c.OI_METADATA not in _root(map_call(bare)).attributes


def test_metadata_past_the_byte_cap_stays_json_and_lists_the_cut() -> None:
    call = _call(CONVERSATION, metadata={"notes": "x" * 500})
    root = _root(map_call(call, MappingOptions(max_attribute_bytes=256)))
    assert json.loads(str(root.attributes[c.OI_METADATA])) == {
        "cartesia.deployment.id": "dep_1",
        "cartesia.call.end_reason": "client_hangup",
    }
    assert _listed(root) == [c.CALL_METADATA_PREFIX + "notes", c.OI_METADATA]
    assert root.attributes[c.CALL_METADATA_PREFIX + "notes"] == "x" * 256  # as ever, cut and listed


def test_text_policy_drop_leaves_no_input_or_output_text_at_all() -> None:
    options = MappingOptions(text_policy=TextPolicy.DROP)
    mapped = map_call(_call(CONVERSATION), options)
    ctx = CallContext("ac_oi", "agent_1", None, START_NS, options)
    analysis = analysis_span(ctx, "Late summary.", START_NS)
    for span in [*mapped.spans, analysis]:
        assert not set(OI_TEXT) & set(span.attributes), span.name
        assert c.TRUNCATED not in span.attributes  # a drop cuts nothing: nothing is listed
        assert span.attributes[c.OI_SPAN_KIND]
    root = _root(mapped)
    # what is not the conversation's text stays; and the attributes the copies come from keep
    # their own rules (the summary and tool calls are not under the policy)
    assert root.attributes[c.OI_SESSION_ID] == "ac_oi" and root.attributes[c.OI_USER_ID] == "+*******8245"
    assert c.OI_METADATA in root.attributes and c.CALL_SUMMARY in root.attributes
    assert all(c.GEN_AI_TOOL_CALL_ARGUMENTS in t.attributes for t in _spans(mapped, "execute_tool"))
    assert all(c.TURN_TEXT not in t.attributes for t in _spans(mapped, "user_turn"))


def test_text_policy_truncate_cuts_every_copy_and_lists_it() -> None:
    options = MappingOptions(text_policy=TextPolicy.TRUNCATE, text_max_chars=5)
    mapped = map_call(_call(CONVERSATION), options)
    root = _root(mapped)
    assert root.attributes[c.OI_INPUT_VALUE] == "Where"
    assert root.attributes[c.OI_OUTPUT_VALUE] == "The c"
    assert root.attributes[c.CALL_SUMMARY] == _call(CONVERSATION).summary  # not under the policy
    assert root.attributes[c.TRUNCATED] == [c.OI_INPUT_VALUE, c.OI_OUTPUT_VALUE]
    user = _spans(mapped, "user_turn")[0]
    assert (user.attributes[c.TURN_TEXT], user.attributes[c.OI_INPUT_VALUE]) == ("Where", "Where")
    assert user.attributes[c.TRUNCATED] == [c.TURN_TEXT, c.OI_INPUT_VALUE]
    thanks = _spans(mapped, "user_turn")[1]
    assert thanks.attributes[c.OI_INPUT_VALUE] == "Thank"
    lookup, note, _ = _spans(mapped, "execute_tool")
    assert lookup.attributes[c.OI_INPUT_VALUE] == '{"ord'
    assert lookup.attributes[c.GEN_AI_TOOL_CALL_ARGUMENTS] == '{"order":"42"}'
    assert lookup.attributes[c.TRUNCATED] == [c.OI_INPUT_VALUE, c.OI_OUTPUT_VALUE]
    assert c.TRUNCATED not in note.attributes  # "{}" and "done" fit
    ctx = CallContext("ac_oi", "agent_1", None, START_NS, options)
    analysis = analysis_span(ctx, "Late summary.", START_NS)
    assert analysis.attributes[c.OI_OUTPUT_VALUE] == "Late "
    assert analysis.attributes[c.TRUNCATED] == [c.OI_OUTPUT_VALUE]


def test_the_byte_cap_cuts_input_and_output_at_a_character_boundary_and_lists_them() -> None:
    long = "é" * 100  # 200 bytes
    call = _call([_turn("user", 1.0, long)], summary=long, metadata={}, end_reason=None)
    mapped = map_call(call, MappingOptions(max_attribute_bytes=64))
    root = _root(mapped)
    (user,) = _spans(mapped, "user_turn")
    assert user.attributes[c.OI_INPUT_VALUE] == root.attributes[c.OI_INPUT_VALUE] == "é" * 32
    assert root.attributes[c.OI_OUTPUT_VALUE] == "é" * 32
    assert user.attributes[c.TRUNCATED] == [c.TURN_TEXT, c.OI_INPUT_VALUE]
    assert root.attributes[c.TRUNCATED] == [c.CALL_SUMMARY, c.OI_INPUT_VALUE, c.OI_OUTPUT_VALUE]


def test_phone_numbers_are_masked_in_every_copy() -> None:
    root = _root(map_call(_call(CONVERSATION)))
    exported = json.dumps(root.attributes)
    assert "4155558245" not in exported and "6285553868" not in exported


def test_turn_and_tool_spans_carry_the_deployment_streamed_or_not() -> None:
    mapped = map_call(_call(CONVERSATION))
    for span in mapped.spans:
        assert span.attributes[c.DEPLOYMENT_ID] == "dep_1", span.name
    item = _call(CONVERSATION).transcript[2]
    alone = map_turn(CallContext("ac_oi", "agent_1", "Support", START_NS, MappingOptions(), "dep_1"), item)
    assert [s.attributes[c.DEPLOYMENT_ID] for s in alone] == ["dep_1"] * 4
    unknown = map_turn(CallContext("ac_oi", "agent_1", "Support", START_NS, MappingOptions()), item)
    assert all(c.DEPLOYMENT_ID not in s.attributes for s in unknown)
    assert all(
        c.DEPLOYMENT_ID not in s.attributes for s in map_call(_call(CONVERSATION, deployment_id=None)).spans
    )


def test_a_late_summary_is_the_output_of_its_call_analysis_span() -> None:
    ctx = CallContext("ac_oi", "agent_1", None, START_NS, MappingOptions())
    span = analysis_span(ctx, "The caller asked to cancel.", START_NS)
    assert (
        span.attributes[c.CALL_SUMMARY] == span.attributes[c.OI_OUTPUT_VALUE] == "The caller asked to cancel."
    )
    assert span.attributes[c.OI_OUTPUT_MIME_TYPE] == "text/plain"
    assert c.OI_INPUT_VALUE not in span.attributes


# --- OTELBRIDGE_TEXT_CHUNK_EVENTS ---------------------------------------------------------


def _without_chunks(span: SpanRecord) -> tuple[Any, ...]:
    """A span as it would be without its text chunk events (and the corrections of their times)."""
    attributes = dict(span.attributes)
    adjustments = attributes.pop(c.TIME_ADJUSTMENTS, [])
    assert isinstance(adjustments, list)
    kept = [r for r in adjustments if not r.startswith("text_chunk")]
    attributes.pop(c.TIME_ADJUSTED, None)
    if kept:
        attributes[c.TIME_ADJUSTED] = True
        attributes[c.TIME_ADJUSTMENTS] = kept
    events = [e for e in span.events if e.name != c.EVENT_TEXT_CHUNK]
    return (span.key, span.name, span.span_id, span.start_ns, span.end_ns, span.error, attributes, events)


def _replayed(fixture: str, settings: Settings) -> list[MappedCall]:
    """``fixture`` through ``otelbridge replay``'s reading and mapping, under ``settings``."""
    err = io.StringIO()
    replay = Replay(settings, {"traces": "none", "metrics": "none"}, io.StringIO(), err)
    replay.read(TESTDATA / fixture)
    mapped = replay.map()
    assert replay.report.ok and not err.getvalue()
    return mapped


def test_text_chunk_events_off_leaves_out_the_chunks_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTELBRIDGE_TEXT_CHUNK_EVENTS", "false")
    settings = load_settings()
    assert settings.mapping_options() == MappingOptions(text_chunk_events=False)
    assert Settings.model_construct().mapping_options().text_chunk_events is True  # the default
    chunks = 0
    for fixture in FIXTURES:
        with_chunks = map_fixture(TESTDATA / fixture)  # the goldens' rendering: the defaults
        without = _replayed(fixture, settings)
        chunks += sum(e.name == c.EVENT_TEXT_CHUNK for m in with_chunks for s in m.spans for e in s.events)
        assert not [e for m in without for s in m.spans for e in s.events if e.name == c.EVENT_TEXT_CHUNK]
        assert [[_without_chunks(s) for s in m.spans] for m in without] == [
            [_without_chunks(s) for s in m.spans] for m in with_chunks
        ], fixture
        assert [m.points for m in without] == [m.points for m in with_chunks]
        # only the bad-timing fixture has chunks whose times were corrected
        if fixture != "bad_timing.json":
            assert [[(s.attributes, s.events) for s in m.spans] for m in without] == [
                [(s.attributes, [e for e in s.events if e.name != c.EVENT_TEXT_CHUNK]) for s in m.spans]
                for m in with_chunks
            ], fixture
    assert chunks > 50


def test_text_chunk_events_off_drops_only_chunk_corrections() -> None:
    item = {
        **_turn("user", 2.0, "hi"),
        "end_timestamp": 3.0,
        "text_chunks": [{"text": "hi", "start_timestamp": 0.5}],  # a second and a half early
    }
    on = _spans(map_call(_call([item])), "user_turn")[0]
    off = _spans(map_call(_call([item]), MappingOptions(text_chunk_events=False)), "user_turn")[0]
    assert on.attributes[c.TIME_ADJUSTMENTS] == ["text_chunk_outside_turn"]
    assert c.TIME_ADJUSTED not in off.attributes and c.TIME_ADJUSTMENTS not in off.attributes
    assert off.events == [] and [e.name for e in on.events] == [c.EVENT_TEXT_CHUNK]
