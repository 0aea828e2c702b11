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
