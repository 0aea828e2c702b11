"""The id recipe and the golden vectors published in docs/conventions.md."""

import hashlib
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otelbridge.mapping import ids

CALL = "ac_sid_gqkgRWUz2u64qFUjA1mZyr"
DOC = Path(__file__).resolve().parents[2] / "docs" / "conventions.md"

# (call id, trace id) — computed independently with `printf %s 'cartesia.call.v1:ID' | sha256sum`
TRACE_VECTORS = [
    ("ac_sid_gqkgRWUz2u64qFUjA1mZyr", "9dbe86d69dd3f7fa0b0296e7affa4a09"),
    ("MZ4958bfe4940bf0ef6cc92f8c6cfa1a1f", "5d74c682cccadde97cde17707bf38f2c"),
    ("ac_ünïcødé", "976dab2f3de3e45fd068bbb60a63400f"),
]
# (key, span id) for CALL
SPAN_VECTORS = [
    ("root", "6393b6c70a47799e"),
    ("turn:assistant:410", "acb2895a28df4514"),
    ("turn:user:3500", "c342fd2c570d1425"),
    ("turn:assistant:10387.875", "f62888cef30c26eb"),
    ("turn:user:1000.5", "fee9f75ca6dfd3aa"),
    ("turn:user:5000.1", "ab4a54fe0684f35f"),
    ("turn:user:5000.3", "0d11f265549dbe72"),
    ("turn:user:3500:2", "1199e656ac13e989"),
    ("turn:assistant:410:tool:call_123", "da83490865bf2178"),
]


@pytest.mark.parametrize(("call_id", "expected"), TRACE_VECTORS)
def test_trace_id_vectors(call_id: str, expected: str) -> None:
    assert ids.trace_id_hex(call_id) == expected
    assert ids.trace_id(call_id) == int(expected, 16)
    assert hashlib.sha256(f"cartesia.call.v1:{call_id}".encode()).hexdigest()[:32] == expected


@pytest.mark.parametrize(("key", "expected"), SPAN_VECTORS)
def test_span_id_vectors(key: str, expected: str) -> None:
    assert f"{ids.span_id(CALL, key):016x}" == expected


@pytest.mark.parametrize(
    ("role", "start", "occurrence", "key"),
    [
        ("assistant", 0.41, 1, "turn:assistant:410"),
        ("user", 3.5, 1, "turn:user:3500"),
        ("assistant", 10.387875000000001, 1, "turn:assistant:10387.875"),  # float noise
        ("assistant", 10.387875, 1, "turn:assistant:10387.875"),
        ("user", 1.0005, 1, "turn:user:1000.5"),
        ("user", 5.0001, 1, "turn:user:5000.1"),  # two turns of one millisecond: two keys
        ("user", 5.0003, 1, "turn:user:5000.3"),
        ("user", 0.0000005, 1, "turn:user:0.001"),  # half up on the decimal text, not the binary float
        ("user", 0.0000004, 1, "turn:user:0"),
        ("user", -0.0015, 1, "turn:user:-1.5"),
        ("user", -0.25, 1, "turn:user:-250"),
        ("user", 3.5, 2, "turn:user:3500:2"),
    ],
)
def test_turn_keys(role: str, start: float, occurrence: int, key: str) -> None:
    assert ids.turn_key(role, start, occurrence) == key


def test_helpers_agree_with_keys() -> None:
    assert ids.root_span_id(CALL) == ids.span_id(CALL, "root")
    assert ids.turn_span_id(CALL, "user", 3.5) == ids.span_id(CALL, "turn:user:3500")
    turn = ids.turn_key("assistant", 0.41)
    assert ids.tool_span_id(CALL, turn, "call_123") == int("da83490865bf2178", 16)


def test_documented_vectors_match_the_code() -> None:
    text = DOC.read_text()
    for call_id, trace in TRACE_VECTORS:
        assert re.search(rf"`{re.escape(call_id)}`\s*\|\s*`{trace}`", text), call_id
    for key, span in SPAN_VECTORS:
        assert re.search(rf"`{re.escape(key)}`\s*\|\s*`{span}`", text), key


@settings(max_examples=2000, deadline=None)
@given(
    st.floats(allow_nan=False, allow_infinity=False)
    | st.builds(
        lambda ms, noise: ms / 1000 + noise,
        st.integers(-(10**9), 10**9),
        st.sampled_from([0.0, 1e-15, -1e-15, 4e-7, 5e-7, -5e-7, 5e-4, -5e-4]),
    ),
    st.sampled_from([3, 6]),
)
def test_decimal_units_is_decimal_half_up_on_the_shortest_text(seconds: float, exponent: int) -> None:
    """The digit arithmetic on the text gives exactly what decimal's ROUND_HALF_UP gives."""
    expected = int(Decimal(repr(seconds)).scaleb(exponent).to_integral_value(ROUND_HALF_UP))
    assert ids.decimal_units(seconds, exponent) == expected
