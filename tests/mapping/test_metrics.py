from otelbridge.cartesia.models import parse_call
from otelbridge.mapping import conventions as c
from otelbridge.mapping import map_call
from otelbridge.mapping.metrics import log_metric_instrument
from otelbridge.mapping.records import InstrumentKind


def _mapped(status: str = "completed") -> list:  # type: ignore[type-arg]
    call = parse_call(
        {
            "id": "ac_1",
            "agent_id": "agent_1",
            "status": status,
            "end_reason": "agent_hangup",
            "start_time": "2026-01-01T00:00:00Z",
            "end_time": "2026-01-01T00:00:30.5Z",
            "transcript": [
                {
                    "role": "assistant",
                    "start_timestamp": 0.5,
                    "end_timestamp": 2.0,
                    "tts_ttfb": 0.2,
                    "tool_calls": [{"id": "t", "name": "book_slot", "arguments": {}}],
                },
                {
                    "role": "user",
                    "start_timestamp": 2.5,
                    "end_timestamp": 3.0,
                    "stt_ttfb": 0.07,
                    "was_interrupted": True,
                },
                {
                    "role": "system",
                    "start_timestamp": 3,
                    "log_metric": {"name": "llm_first_chunk_ms", "value": 780},
                },
                {"role": "system", "start_timestamp": 3, "log_metric": {"name": "tier", "value": "gold"}},
            ],
        }
    )
    return map_call(call).points


def test_points_of_a_call() -> None:
    points = {(p.instrument, p.kind): p for p in _mapped()}
    tts = points[(c.METRIC_TTS_TTFB, InstrumentKind.HISTOGRAM)]
    no_deployment = {c.AGENT_ID: "agent_1", c.DEPLOYMENT_ID: c.DEPLOYMENT_NONE}
    assert tts.value == 0.2 and tts.unit == "s" and tts.attributes == no_deployment
    assert tts.span_key == "turn:assistant:500"
    assert points[(c.METRIC_STT_TTFB, InstrumentKind.HISTOGRAM)].value == 0.07
    calls = points[(c.METRIC_CALLS, InstrumentKind.COUNTER)]
    assert calls.attributes == {
        c.AGENT_ID: "agent_1",
        c.CALL_STATUS: "completed",
        c.CALL_END_REASON: "agent_hangup",
        c.DEPLOYMENT_ID: c.DEPLOYMENT_NONE,
    }
    assert points[(c.METRIC_CALL_DURATION, InstrumentKind.HISTOGRAM)].value == 30.5
    assert points[(c.METRIC_TOOL_CALLS, InstrumentKind.COUNTER)].attributes[c.GEN_AI_TOOL_NAME] == "book_slot"
    ms = points[("cartesia.log_metric.llm_first_chunk", InstrumentKind.HISTOGRAM)]
    assert ms.unit == "s" and ms.value == 0.78  # recorded in seconds, the unit gone from the name
    tier = points[("cartesia.log_metric.tier", InstrumentKind.COUNTER)]
    assert tier.attributes[c.LOG_METRIC_VALUE] == "gold"


def test_turn_counter_and_duration() -> None:
    turns = [p for p in _mapped() if p.instrument == c.METRIC_TURNS]
    assert sorted((p.attributes[c.TURN_ROLE], p.attributes[c.TURN_INTERRUPTED]) for p in turns) == [
        ("assistant", False),
        ("user", True),
    ]
    durations = sorted(p.value for p in _mapped() if p.instrument == c.METRIC_TURN_DURATION)
    assert durations == [0.5, 1.5]


def test_no_call_points_while_running() -> None:
    instruments = {p.instrument for p in _mapped(status="started")}
    assert c.METRIC_CALLS not in instruments and c.METRIC_CALL_DURATION not in instruments
    assert c.METRIC_TTS_TTFB in instruments


def test_no_point_carries_the_call_id() -> None:
    for point in _mapped():
        assert "ac_1" not in map(str, point.attributes.values())


def test_log_metric_instrument_names() -> None:
    assert log_metric_instrument("agent_turn_ms") == ("cartesia.log_metric.agent_turn", "s", 1000.0)
    assert log_metric_instrument("LLM_FIRST_MS") == ("cartesia.log_metric.LLM_FIRST", "s", 1000.0)
    assert log_metric_instrument("wait_seconds") == ("cartesia.log_metric.wait", "s", 1.0)
    assert log_metric_instrument("wait_sec") == ("cartesia.log_metric.wait", "s", 1.0)
    assert log_metric_instrument("hold_s") == ("cartesia.log_metric.hold", "s", 1.0)
    assert log_metric_instrument("items") == ("cartesia.log_metric.items", "1", 1.0)
    assert log_metric_instrument("_ms") == ("cartesia.log_metric._ms", "1", 1.0)  # nothing left
    assert log_metric_instrument("Q1: name?") == ("cartesia.log_metric.Q1__name_", "1", 1.0)
    assert log_metric_instrument("") == ("cartesia.log_metric.unnamed", "1", 1.0)
    long_a, long_b = log_metric_instrument("x" * 500 + "a")[0], log_metric_instrument("x" * 500 + "b")[0]
    assert len(long_a) == len(long_b) == 128 and long_a != long_b  # cut, with a digest of the whole


def test_interrupted_assistant_turns_by_agent_and_deployment() -> None:
    """``cartesia.turns.interrupted``: one point per assistant turn, 1 when the caller cut in
    (``was_interrupted``, else ``end_reason == "interrupted"``), 0 when the answer was heard out,
    so the series of a deployment exists from its first assistant turn; none for user turns."""
    call = parse_call(
        {
            "id": "ac_2",
            "agent_id": "agent_1",
            "deployment_id": "dep_1",
            "status": "completed",
            "start_time": "2026-01-01T00:00:00Z",
            "end_time": "2026-01-01T00:00:30Z",
            "transcript": [
                {"role": "assistant", "start_timestamp": 0.5, "end_timestamp": 2.0, "was_interrupted": True},
                {"role": "user", "start_timestamp": 1.8, "end_timestamp": 3.0, "was_interrupted": True},
                {
                    "role": "assistant",
                    "start_timestamp": 3.5,
                    "end_timestamp": 5.0,
                    "end_reason": "interrupted",
                },
                {
                    "role": "assistant",
                    "start_timestamp": 6.0,
                    "end_timestamp": 8.0,
                    "end_reason": "tts_completed",
                },
                {"role": "assistant", "start_timestamp": 9.0, "end_timestamp": 10.0},
                # the flag wins over the end reason, as on the span
                {
                    "role": "assistant",
                    "start_timestamp": 11.0,
                    "end_timestamp": 12.0,
                    "end_reason": "interrupted",
                    "was_interrupted": False,
                },
            ],
        }
    )
    points = [p for p in map_call(call).points if p.instrument == c.METRIC_TURNS_INTERRUPTED]
    assert [(p.span_key, p.value) for p in points] == [
        ("turn:assistant:500", 1),
        ("turn:assistant:3500", 1),
        ("turn:assistant:6000", 0),
        ("turn:assistant:9000", 0),
        ("turn:assistant:11000", 0),
    ]
    for point in points:
        assert point.kind is InstrumentKind.COUNTER and point.unit == "{turn}"
        assert point.attributes == {c.AGENT_ID: "agent_1", c.DEPLOYMENT_ID: "dep_1"}
    # the same count as the assistant turns the turn counter calls interrupted
    turns = [p for p in map_call(call).points if p.instrument == c.METRIC_TURNS]
    assert sum(p.value for p in points) == sum(
        p.value
        for p in turns
        if p.attributes[c.TURN_ROLE] == "assistant" and p.attributes[c.TURN_INTERRUPTED]
    )
