import pytest

from otelbridge.mapping.policy import AttributeSink, MappingOptions, TextPolicy, cap_bytes, mask_phone


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("+14155558245", "+*******8245"),
        ("+1 (415) 555-8245", "+* (***) ***-8245"),
        ("sip:+14155558245@trunk.example", "sip:+*******8245@trunk.example"),
        ("websocket", "websocket"),
        ("agent_rwh4HGMgyhK7rM5ucVqbiC", "agent_rwh4HGMgyhK7rM5ucVqbiC"),
        ("12345", "12345"),  # too short to be a phone number
    ],
)
def test_mask_phone(value: str, masked: str) -> None:
    assert mask_phone(value) == masked


def test_cap_bytes_never_splits_a_character() -> None:
    text = "é" * 10  # 20 bytes
    capped, cut = cap_bytes(text, 7)
    assert cut and capped == "ééé" and len(capped.encode()) <= 7
    assert cap_bytes("short", 64) == ("short", False)


def test_sink_caps_and_records_truncation() -> None:
    sink = AttributeSink(MappingOptions(max_attribute_bytes=64))
    sink.put("a", "x" * 100)
    sink.put("b", "ok")
    sink.put("c", None)
    assert sink.attributes == {"a": "x" * 64, "b": "ok"}
    assert sink.truncated == ["a"]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(TextPolicy.KEEP, "hello world"), (TextPolicy.TRUNCATE, "hello"), (TextPolicy.DROP, None)],
)
def test_text_policy(policy: TextPolicy, expected: str | None) -> None:
    sink = AttributeSink(MappingOptions(text_policy=policy, text_max_chars=5))
    sink.text("t", "hello world")
    assert sink.attributes.get("t") == expected
    assert sink.truncated == (["t"] if policy is TextPolicy.TRUNCATE else [])


def test_phone_export_switch() -> None:
    masked = AttributeSink(MappingOptions())
    masked.phone("p", "+14155558245")
    raw = AttributeSink(MappingOptions(export_phone_numbers=True))
    raw.phone("p", "+14155558245")
    assert masked.attributes["p"] == "+*******8245"
    assert raw.attributes["p"] == "+14155558245"


def test_flatten_nested_maps_and_lists() -> None:
    sink = AttributeSink(MappingOptions())
    sink.flatten("m.", {"a": "1", "b": {"c": 2, "d": {"e": True}}, "f": [1, "x"], "g": None})
    assert sink.attributes == {"m.a": "1", "m.b.c": 2, "m.b.d.e": True, "m.f": '[1,"x"]'}


def test_ints_beyond_64_bits_become_text() -> None:
    sink = AttributeSink(MappingOptions())
    sink.flatten("m.", {"big": 2**70, "ok": 2**62})
    assert sink.attributes == {"m.big": str(2**70), "m.ok": 2**62}
