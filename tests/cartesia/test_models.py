import pytest
from pydantic import ValidationError

from otelbridge.cartesia.errors import describe_validation_error
from otelbridge.cartesia.models import AgentCall, parse_call
from otelbridge.cartesia.webhooks import parse_webhook_event
from tests.support.samples import sample_calls, webhook_events


def _call(**extra: object) -> dict[str, object]:
    return {"id": "ac_1", "agent_id": "agent_1", "status": "completed", **extra}


def _problem(payload: object) -> str:
    with pytest.raises(ValidationError) as info:
        parse_call(payload)
    return describe_validation_error(info.value)


def test_every_sample_validates() -> None:
    for raw in sample_calls():
        assert parse_call(raw).id == raw["id"]
    for event in webhook_events():
        assert parse_webhook_event(event).resolved_call_id


def test_times_become_exact_nanoseconds() -> None:
    call = parse_call(_call(start_time="2026-04-16T01:08:37.413659878Z", end_time=None))
    assert call.start_time == 1776301717413659878
    assert call.end_time is None


@pytest.mark.parametrize("status", ["active", "completed", "failed", "cancelled", "created", "started"])
def test_both_status_vocabularies(status: str) -> None:
    call = parse_call(_call(status=status))
    assert call.is_final == (status in {"completed", "failed", "cancelled"})


def test_unknown_status_is_kept_and_not_final() -> None:
    call = parse_call(_call(status="paused"))
    assert call.status == "paused"
    assert not call.is_final


def test_unknown_fields_are_kept_everywhere() -> None:
    call = parse_call(
        _call(
            brand_new=1,
            telephony_params={"to": "+1", "from": "+2", "sip_header": "x"},
            transcript=[
                {
                    "role": "assistant",
                    "start_timestamp": 1,
                    "end_timestamp": 2,
                    "emotion": "calm",
                    "tool_calls": [{"id": "t", "name": "n", "arguments": {}, "latency_ms": 3}],
                },
            ],
        )
    )
    assert call.model_extra == {"brand_new": 1}
    assert call.telephony_params is not None and call.telephony_params.from_ == "+2"
    assert call.telephony_params.model_extra == {"sip_header": "x"}
    assert call.transcript[0].model_extra == {"emotion": "calm"}
    assert call.transcript[0].tool_calls[0].model_extra == {"latency_ms": 3}


def test_nulls_read_as_empty() -> None:
    call = parse_call(_call(transcript=None, metadata=None))
    assert call.transcript == [] and call.metadata == {}
    item = parse_call(
        _call(
            transcript=[
                {
                    "role": "user",
                    "start_timestamp": 0,
                    "end_timestamp": 1,
                    "text_chunks": None,
                    "tool_calls": None,
                }
            ]
        )
    ).transcript[0]
    assert item.text_chunks == [] and item.tool_calls == []


@pytest.mark.parametrize(("value", "expected"), [(3, 3), (2.5, 2.5), ("gold", "gold"), (True, "true")])
def test_log_metric_value_number_or_string(value: object, expected: object) -> None:
    item = {
        "role": "system",
        "start_timestamp": 1,
        "end_timestamp": 1,
        "log_metric": {"name": "m", "value": value, "timestamp": 1},
    }
    metric = parse_call(_call(transcript=[item])).transcript[0].log_metric
    assert metric is not None and metric.value == expected
    assert type(metric.value) is type(expected)


def test_log_metric_value_object_is_rejected_naming_the_field() -> None:
    item = {"role": "system", "start_timestamp": 1, "log_metric": {"name": "m", "value": {"a": 1}}}
    assert _problem(_call(transcript=[item])).startswith("transcript[0].log_metric.value:")


def test_errors_name_the_field_path_on_one_line() -> None:
    message = _problem(_call(transcript=[{"role": "user", "start_timestamp": "abc"}, {"role": "user"}]))
    assert "\n" not in message
    assert "transcript[0].start_timestamp: Input should be a valid number" in message
    assert "transcript[1].start_timestamp: required field is missing" in message


def test_error_messages_never_echo_transcript_text() -> None:
    message = _problem(_call(transcript=[{"role": "user", "start_timestamp": 0, "text": ["secret words"]}]))
    assert "secret" not in message
    assert "transcript[0].text" in message


def test_bad_time_names_the_field_and_value() -> None:
    assert _problem(_call(start_time="2026-13-01T00:00:00Z")).startswith("start_time: invalid date")


def test_nan_and_infinity_are_rejected() -> None:
    item = {"role": "assistant", "start_timestamp": 0, "end_timestamp": 1, "tts_ttfb": float("nan")}
    assert "transcript[0].tts_ttfb" in _problem(_call(transcript=[item]))


def test_required_call_fields() -> None:
    message = _problem({"id": "", "status": 3})
    assert "id: String should have at least 1 character" in message
    assert "agent_id: required field is missing" in message
    assert "status: Input should be a valid string" in message


def test_model_is_the_documented_shape() -> None:
    assert set(AgentCall.model_fields) >= {
        "id",
        "agent_id",
        "agent_name",
        "status",
        "start_time",
        "end_time",
        "end_reason",
        "transcript",
        "telephony_params",
        "summary",
        "error_message",
        "deployment_id",
        "deployment_version_id",
        "deployment_region",
        "metadata",
        "zdr_enabled",
        "redacted_at",
    }


def test_timestamp_ns_reads_one_field_as_the_models_do() -> None:
    from otelbridge.cartesia.models import timestamp_ns

    assert timestamp_ns("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert timestamp_ns(7) == 7
    for bad in ("yesterday", True, 1.5, "1969-12-31T23:59:59Z"):
        with pytest.raises(ValueError, match=r"RFC 3339|outside the times"):
            timestamp_ns(bad)


def test_a_log_metric_integer_no_float_can_hold_is_refused_naming_the_field() -> None:
    """JSON allows a 309-digit integer; a metric cannot hold it, and mapping it would fail after
    the webhook was acknowledged (the call was then never exported): refused on receipt."""

    def item(value: object) -> dict[str, object]:
        return {"role": "system", "start_timestamp": 1, "log_metric": {"name": "m", "value": value}}

    for huge in (10**309, -(10**309)):
        problem = _problem(_call(transcript=[item(huge)]))
        assert problem.startswith("transcript[0].log_metric.value: ")
        assert "64-bit float" in problem and "1000" not in problem  # names the limit, not the value
    assert parse_call(_call(transcript=[item(10**308)])).transcript[0].log_metric is not None
