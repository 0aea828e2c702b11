"""Descriptions of bad input: the kind of a JSON value."""

from __future__ import annotations

import json

import pytest

from otelbridge.cartesia.errors import json_kind


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("null", "null"),
        ("true", "a boolean"),
        ("3", "a number"),
        ("2.5", "a number"),
        ('"x"', "a string"),
        ("[1]", "an array"),
        ("{}", "an object"),
    ],
)
def test_json_kind_names_every_json_value_in_jsons_words(text: str, kind: str) -> None:
    assert json_kind(json.loads(text)) == kind


def test_a_validation_description_is_capped_and_never_quotes_a_value() -> None:
    """A 4 MiB timestamp and hundreds of bad fields give one short line without the values."""
    from otelbridge.cartesia.errors import MAX_DESCRIPTION_CHARS, describe_validation_error
    from otelbridge.cartesia.models import ValidationError, parse_call

    phone = "+14155550123"
    payload = {
        "id": "c1",
        "agent_id": "a1",
        "status": "completed",
        "start_time": (phone + " ") * 350_000,
        "transcript": [{"role": "user", "start_timestamp": phone + "x"} for _ in range(300)],
    }
    with pytest.raises(ValidationError) as caught:
        parse_call(payload)
    text = describe_validation_error(caught.value, prefix="call")
    assert len(text) <= MAX_DESCRIPTION_CHARS
    assert phone not in text
    assert "call.start_time: not an RFC 3339 timestamp" in text and "more problems" in text
