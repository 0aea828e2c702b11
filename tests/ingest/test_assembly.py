from typing import Any

from otelbridge.cartesia.webhooks import parse_webhook_event
from otelbridge.ingest.assembly import CallAssembler
from otelbridge.mapping import map_call

T0 = "2026-01-01T00:00:00Z"
T0_NS = 1767225600_000_000_000


def _ev(kind: str, **fields: Any) -> Any:
    return parse_webhook_event({"type": kind, "agent_id": "agent_1", "webhook_id": "wh", **fields})


def _turn(role: str, start: float) -> dict[str, Any]:
    return {"role": role, "text": role, "start_timestamp": start, "end_timestamp": start + 1}


CALL = {
    "id": "ac_1",
    "agent_id": "agent_1",
    "status": "completed",
    "start_time": T0,
    "end_time": "2026-01-01T00:00:10Z",
}


def test_turns_the_final_call_missed_are_merged_once() -> None:
    asm = CallAssembler()
    # completed arrives first, with one turn; the turn stream repeats it and adds another
    asm.add(
        _ev("call_completed", call_id="ac_1", timestamp=T0, call={**CALL, "transcript": [_turn("user", 1)]})
    )
    asm.add(_ev("call_turn", call_id="ac_1", timestamp=T0, turn=_turn("user", 1.0000001)))
    asm.add(_ev("call_turn", call_id="ac_1", timestamp=T0, turn=_turn("assistant", 2)))
    asm.add(_ev("call_turn", call_id="ac_1", timestamp=T0, turn=_turn("assistant", 2)))  # duplicate
    asm.add(_ev("post_call_analysis", call_id="ac_1", timestamp=T0, analysis={"summary": "booked"}))
    (assembled,) = asm.calls()
    call = assembled.call
    assert [(t.role, t.start_timestamp) for t in call.transcript] == [("user", 1), ("assistant", 2)]
    assert call.summary == "booked"


def test_unknown_types_are_not_taken() -> None:
    asm = CallAssembler()
    assert asm.add(_ev("call_recording_ready", call_id="ac_1")) is False
    assert len(asm) == 0


def test_legacy_shape_builds_a_call() -> None:
    asm = CallAssembler()
    asm.add(_ev("call_started", request_id="MZ1", timestamp=T0, body=[]))
    asm.add(
        _ev(
            "call_failed",
            request_id="MZ1",
            timestamp="2026-01-01T00:00:09Z",
            end_reason="error",
            body=[_turn("assistant", 1.175)],
        )
    )
    (assembled,) = asm.calls()
    call = assembled.call
    assert (call.id, call.agent_id, call.status, call.end_reason) == ("MZ1", "agent_1", "failed", "error")
    assert call.start_time == T0_NS and call.end_time == T0_NS + 9_000_000_000
    assert len(call.transcript) == 1


def test_legacy_without_started_derives_the_start_when_mapped() -> None:
    asm = CallAssembler()
    asm.add(
        _ev(
            "call_completed",
            request_id="MZ2",
            timestamp="2026-01-01T00:00:09Z",
            body=[_turn("assistant", 3.0)],
        )
    )
    (assembled,) = asm.calls()
    mapped = map_call(assembled.call, fallback_end_ns=assembled.fallback_end_ns)
    root = mapped.root
    assert root is not None
    assert root.end_ns == T0_NS + 9_000_000_000
    assert root.start_ns == root.end_ns - 4_000_000_000  # end minus the last offset
    assert "start_derived" in root.attributes["otelbridge.time_adjustments"]  # type: ignore[operator]


def test_richer_end_event_wins_over_a_bare_duplicate() -> None:
    asm = CallAssembler()
    asm.add(
        _ev("call_completed", call_id="ac_1", timestamp=T0, call={**CALL, "transcript": [_turn("user", 1)]})
    )
    asm.add(_ev("call_completed", request_id="ac_1", timestamp=T0, body=[]))
    (assembled,) = asm.calls()
    assert len(assembled.call.transcript) == 1 and assembled.call.start_time == T0_NS


def test_turns_only_are_placed_by_event_time() -> None:
    asm = CallAssembler()
    asm.add(_ev("call_turn", call_id="ac_5", timestamp="2026-01-01T00:00:05Z", turn=_turn("user", 3)))
    (assembled,) = asm.calls()
    assert assembled.call.status == "started"
    mapped = map_call(assembled.call, fallback_end_ns=assembled.fallback_end_ns)
    root = mapped.root
    assert root is not None and root.start_ns == T0_NS + 1_000_000_000


def test_a_polled_copy_wins_field_by_field_and_keeps_the_webhooks_agent_name() -> None:
    """List Calls carries no agent_name: the polled copy (``source``) wins each field it has,
    the webhook copies fill in the rest, whatever the order they came in."""
    named = {**CALL, "status": "started", "end_time": None, "agent_name": "support-bot"}
    polled = {
        **CALL,
        "end_reason": "agent_hangup",
        "summary": "from the API",
        "transcript": [_turn("user", 1)],
    }
    webhook_end = {**CALL, "agent_name": "support-bot", "end_reason": "client_hangup", "summary": "hook"}
    for order in ("polled first", "webhooks first"):
        asm = CallAssembler()
        events = [
            _ev("call_started", call_id="ac_1", timestamp=T0, call=named),
            _ev("call_completed", call_id="ac_1", timestamp=T0, call=webhook_end),
        ]
        polled_event = _ev("call_completed", call_id="ac_1", call=polled, source="poll")
        for event in [polled_event, *events] if order == "polled first" else [*events, polled_event]:
            asm.add(event)
        (assembled,) = asm.calls()
        call = assembled.call
        assert (call.agent_name, call.status, call.end_reason, call.summary) == (
            "support-bot", "completed", "agent_hangup", "from the API",
        ), order  # fmt: skip
        mapped = map_call(call)
        assert mapped.root is not None and mapped.root.name == "invoke_agent support-bot"
        assert {s.attributes.get("gen_ai.agent.name") for s in mapped.spans} == {"support-bot"}
