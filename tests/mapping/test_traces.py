from typing import Any

import pytest

from otelbridge.cartesia.models import AgentCall, parse_call
from otelbridge.mapping import MappingOptions, UnplaceableCallError, ids, map_call
from otelbridge.mapping import conventions as c
from otelbridge.mapping.records import MappedCall, SpanRecord
from otelbridge.mapping.traces import CallContext, map_turn

START = "2026-04-16T01:08:37.000000000Z"
START_NS = 1776301717_000_000_000


def _call(transcript: list[dict[str, Any]], **extra: Any) -> AgentCall:
    payload = {
        "id": "ac_1",
        "agent_id": "agent_1",
        "agent_name": "Support",
        "status": "completed",
        "start_time": START,
        "end_time": "2026-04-16T01:08:57Z",
        "transcript": transcript,
    }
    return parse_call({**payload, **extra})


def _turn(role: str, start: float, end: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "role": role,
        "text": f"{role} at {start}",
        "start_timestamp": start,
        "end_timestamp": end,
        **extra,
    }


def _by_name(mapped: MappedCall, name: str) -> list[SpanRecord]:
    return [s for s in mapped.spans if s.name == name]


def test_root_and_turns_with_overlap() -> None:
    mapped = map_call(
        _call(
            [
                _turn("assistant", 0.5, 4.0, tts_ttfb=0.2, end_reason="interrupted"),
                _turn("user", 3.0, 5.0, stt_ttfb=0.1),  # barges in before the assistant ends
            ]
        )
    )
    root = mapped.root
    assert root is not None and root.name == "invoke_agent Support"
    assert root.start_ns == START_NS and root.end_ns == START_NS + 20_000_000_000
    (assistant,) = _by_name(mapped, "assistant_turn")
    (user,) = _by_name(mapped, "user_turn")
    assert assistant.start_ns == START_NS + 500_000_000 and assistant.end_ns == START_NS + 4_000_000_000
    assert user.start_ns < assistant.end_ns  # overlap kept as reported
    assert assistant.parent_span_id == user.parent_span_id == root.span_id
    assert assistant.span_id == ids.turn_span_id("ac_1", "assistant", 0.5)
    assert assistant.attributes[c.TTS_TTFB] == 0.2
    assert assistant.attributes[c.TURN_INTERRUPTED] is True
    assert user.attributes[c.STT_TTFB] == 0.1 and user.attributes[c.TURN_ROLE] == "user"
    for span in mapped.spans:
        assert span.attributes[c.GEN_AI_CONVERSATION_ID] == "ac_1"
        assert span.attributes[c.GEN_AI_AGENT_NAME] == "Support"
    first_byte = [e for e in assistant.events if e.name == c.EVENT_TTS_FIRST_BYTE]
    assert [e.time_ns for e in first_byte] == [START_NS + 700_000_000]


def test_tool_calls_are_children_of_their_turn() -> None:
    mapped = map_call(
        _call(
            [
                _turn(
                    "assistant",
                    1.0,
                    2.0,
                    tool_calls=[
                        {
                            "id": "call_9",
                            "name": "lookup_order",
                            "arguments": {"order_id": "42"},
                            "result": {"ok": True},
                        },
                    ],
                )
            ]
        )
    )
    (turn,) = _by_name(mapped, "assistant_turn")
    (tool,) = _by_name(mapped, "execute_tool lookup_order")
    assert tool.parent_span_id == turn.span_id
    assert tool.attributes[c.GEN_AI_OPERATION_NAME] == "execute_tool"
    assert tool.attributes[c.GEN_AI_TOOL_CALL_ID] == "call_9"
    assert tool.attributes[c.GEN_AI_TOOL_CALL_ARGUMENTS] == '{"order_id":"42"}'
    assert tool.attributes[c.GEN_AI_TOOL_CALL_RESULT] == '{"ok":true}'
    assert tool.span_id == ids.tool_span_id("ac_1", turn.key, "call_9")


def test_log_items_go_to_the_turn_in_progress_else_the_root() -> None:
    mapped = map_call(
        _call(
            [
                _turn("assistant", 1.0, 5.0),
                _turn("user", 4.0, 6.0),
                {
                    "role": "system",
                    "start_timestamp": 4.5,
                    "end_timestamp": 4.5,
                    "log_event": {
                        "event": "order_processed",
                        "timestamp": 4.5,
                        "metadata": {
                            "level": "info",
                            "message": "Found order",
                            "metadata": {"order_id": "12345"},
                        },
                    },
                },
                {
                    "role": "system",
                    "start_timestamp": 8.0,
                    "end_timestamp": 8.0,
                    "log_metric": {"name": "agent_turn_ms", "value": 355.7, "timestamp": 8.0},
                },
            ]
        )
    )
    (user,) = _by_name(mapped, "user_turn")
    (event,) = [e for e in user.events if e.name == "order_processed"]  # latest-started wins
    assert event.time_ns == START_NS + 4_500_000_000
    assert event.attributes == {
        c.LOG_EVENT: "order_processed",
        c.LOG_LEVEL: "info",
        c.LOG_MESSAGE: "Found order",
        c.LOG_METADATA_PREFIX + "order_id": "12345",
    }
    root = mapped.root
    assert root is not None
    (metric_event,) = root.events
    assert metric_event.name == c.EVENT_LOG_METRIC
    assert metric_event.attributes == {c.LOG_METRIC_NAME: "agent_turn_ms", c.LOG_METRIC_VALUE: 355.7}
    assert not any(s.name.startswith("turn system") for s in mapped.spans)


def test_log_message_metadata_as_json_string() -> None:
    mapped = map_call(
        _call(
            [
                {
                    "role": "system",
                    "start_timestamp": 1,
                    "end_timestamp": 1,
                    "log_event": {
                        "event": "x",
                        "metadata": {"level": "error", "message": "m", "metadata": '{"k": "v"}'},
                    },
                }
            ]
        )
    )
    root = mapped.root
    assert root is not None
    assert root.events[0].attributes[c.LOG_METADATA_PREFIX + "k"] == "v"
    assert root.events[0].attributes[c.LOG_LEVEL] == "error"


def test_failed_call_is_an_error_with_the_message() -> None:
    mapped = map_call(_call([], status="failed", end_reason="error", error_message="LLM provider timed out"))
    root = mapped.root
    assert root is not None
    assert root.error == "LLM provider timed out"
    assert root.attributes[c.ERROR_TYPE] == "error"
    assert root.attributes[c.CALL_STATUS] == "failed"


def test_bad_timing_is_clamped_and_marked() -> None:
    mapped = map_call(
        _call(
            [
                _turn("assistant", 2.0, 1.0, text_chunks=[{"text": "early", "start_timestamp": 0.5}]),
                _turn("user", -1.0, None),
            ],
            end_time="2026-04-16T01:08:30Z",  # before the start
        )
    )
    root = mapped.root
    assert root is not None
    assert root.end_ns == START_NS + 2_000_000_000
    assert root.attributes[c.TIME_ADJUSTMENTS] == ["end_before_start"]
    (assistant,) = _by_name(mapped, "assistant_turn")
    assert assistant.start_ns == assistant.end_ns == START_NS + 2_000_000_000
    assert assistant.attributes[c.TIME_ADJUSTED] is True
    assert assistant.attributes[c.TIME_ADJUSTMENTS] == ["end_before_start", "text_chunk_outside_turn"]
    (chunk,) = assistant.events
    assert chunk.time_ns == assistant.start_ns and chunk.attributes[c.TIME_ADJUSTED] is True
    (user,) = _by_name(mapped, "user_turn")
    assert user.start_ns == START_NS
    assert user.attributes[c.TIME_ADJUSTMENTS] == ["start_negative", "end_missing"]


def test_float_noise_under_a_millisecond_is_not_flagged() -> None:
    mapped = map_call(
        _call(
            [
                _turn(
                    "user", 20.231539995271266, 22.0, text_chunks=[{"text": "a", "start_timestamp": 20.23153}]
                )
            ]
        )
    )
    (user,) = _by_name(mapped, "user_turn")
    assert c.TIME_ADJUSTED not in user.attributes


def test_call_without_times() -> None:
    call = _call([_turn("user", 1.0, 3.0)], start_time=None, end_time=None)
    with pytest.raises(UnplaceableCallError, match="no start_time or end_time"):
        map_call(call)
    mapped = map_call(call, fallback_end_ns=START_NS)
    root = mapped.root
    assert root is not None
    assert (root.start_ns, root.end_ns) == (START_NS - 3_000_000_000, START_NS)
    assert root.attributes[c.TIME_ADJUSTMENTS] == ["end_from_event_time", "start_derived"]


def test_text_policy_and_phone_masking() -> None:
    call = _call(
        [_turn("user", 1.0, 2.0, text_chunks=[{"text": "secret", "start_timestamp": 1.0}])],
        telephony_params={"from": "+14155558245", "to": "agent_x"},
    )
    dropped = map_call(call, MappingOptions(text_policy=c_text("drop")))
    (user,) = _by_name(dropped, "user_turn")
    assert c.TURN_TEXT not in user.attributes
    assert all(c.CHUNK_TEXT not in e.attributes for e in user.events)
    root = dropped.root
    assert root is not None
    assert root.attributes[c.TELEPHONY_FROM] == "+*******8245"
    assert root.attributes[c.TELEPHONY_TO] == "agent_x"


def c_text(value: str) -> Any:
    from otelbridge.mapping.policy import TextPolicy

    return TextPolicy(value)


def test_duplicate_turn_keys_in_one_transcript_stay_distinct() -> None:
    mapped = map_call(_call([_turn("user", 1.0, 2.0), _turn("user", 1.0, 2.5)]))
    keys = [s.key for s in _by_name(mapped, "user_turn")]
    assert keys == ["turn:user:1000", "turn:user:1000:2"]


def test_turns_of_one_millisecond_keep_their_own_keys_in_any_order() -> None:
    long, short = _turn("user", 5.0001, 7.5), _turn("user", 5.0003, 5.2)
    for order in ([long, short], [short, long]):
        mapped = map_call(_call(order))
        keys = {s.attributes["cartesia.turn.start_offset"]: s.key for s in _by_name(mapped, "user_turn")}
        assert keys == {5.0001: "turn:user:5000.1", 5.0003: "turn:user:5000.3"}


def test_a_turn_alone_gets_the_same_ids_as_in_the_whole_call() -> None:
    item = _turn("assistant", 3.25, 4.0, tool_calls=[{"id": "t1", "name": "n", "arguments": {}}])
    whole = map_call(_call([_turn("user", 1.0, 2.0), item]))
    ctx = CallContext("ac_1", "agent_1", "Support", START_NS, MappingOptions())
    alone = map_turn(ctx, _call([item]).transcript[0])
    whole_ids = {s.key: s.span_id for s in whole.spans}
    assert {s.key: s.span_id for s in alone}.items() <= whole_ids.items()
    assert [s.parent_span_id for s in alone][0] == ids.root_span_id("ac_1")
