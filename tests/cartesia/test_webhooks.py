from typing import Any

import pytest
from pydantic import ValidationError

from otelbridge.cartesia.errors import describe_validation_error
from otelbridge.cartesia.webhooks import parse_webhook_event

ENVELOPE: dict[str, Any] = {
    "call_id": "ac_1",
    "agent_id": "agent_1",
    "webhook_id": "wh_1",
    "timestamp": "2026-04-16T01:08:50.061907836Z",
}
CALL = {"id": "ac_1", "agent_id": "agent_1", "status": "completed", "transcript": []}
TURN = {"role": "user", "text": "hi", "start_timestamp": 1.0, "end_timestamp": 2.0, "stt_ttfb": 0.1}


def _problem(payload: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        parse_webhook_event(payload)
    return describe_validation_error(info.value)


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("call_started", {"call": {**CALL, "status": "started"}}),
        ("call_completed", {"call": CALL, "body": [], "end_reason": "client_hangup"}),
        ("call_failed", {"call": {**CALL, "status": "failed", "error_message": "boom"}}),
        ("call_turn", {"turn": TURN}),
        ("post_call_analysis", {"analysis": {"summary": "ok"}}),
    ],
)
def test_all_five_types(kind: str, body: dict[str, Any]) -> None:
    event = parse_webhook_event({"type": kind, **ENVELOPE, **body})
    assert event.is_known and event.resolved_call_id == "ac_1"
    assert event.timestamp == 1776301730061907836


def test_unknown_type_is_accepted_without_more_checks() -> None:
    event = parse_webhook_event({"type": "call_recording_ready", "whatever": [1, 2]})
    assert not event.is_known


def test_legacy_shape() -> None:
    event = parse_webhook_event(
        {
            "type": "call_completed",
            "request_id": "MZ49",
            "agent_id": "agent_demo",
            "webhook_id": "wh",
            "timestamp": "2025-06-24T23:36:40.360473878Z",
            "body": [
                {
                    "role": "assistant",
                    "text": "Hi",
                    "start_timestamp": 1.175,
                    "end_timestamp": 10.387875000000001,
                    "tts_ttfb": 0.20372509956359863,
                }
            ],
        }
    )
    assert event.is_legacy and event.resolved_call_id == "MZ49"
    assert event.legacy_transcript[0].tts_ttfb == 0.20372509956359863


def test_call_turn_falls_back_to_the_raw_body() -> None:
    event = parse_webhook_event({"type": "call_turn", **ENVELOPE, "body": TURN})
    assert event.turn is not None and event.turn.text == "hi"


def test_call_turn_bad_body_names_the_field() -> None:
    assert _problem({"type": "call_turn", **ENVELOPE, "body": {"role": 1}}).startswith("body.role:")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"type": "call_turn", **ENVELOPE}, "turn: required on call_turn events"),
        ({"type": "post_call_analysis", **ENVELOPE}, "analysis: required"),
        ({"type": "call_completed", "agent_id": "a"}, "call_id: missing"),
        (
            {"type": "call_completed", "request_id": "r", "timestamp": "2025-01-01T00:00:00Z"},
            "agent_id: required when the event carries no call object",
        ),
        (
            {"type": "call_turn", **ENVELOPE, "turn": {**TURN, "start_timestamp": None}},
            "turn.start_timestamp: Input should be a valid number",
        ),
        ({"type": "call_completed", **ENVELOPE, "call": {**CALL, "id": 5}}, "call.id: Input should be"),
    ],
)
def test_problems_are_named(payload: dict[str, Any], expected: str) -> None:
    assert expected in _problem(payload)
