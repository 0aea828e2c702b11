"""Deterministic trace and span ids (contract v1, see docs/conventions.md).

* trace id = first 16 bytes of SHA-256(UTF-8 ``"cartesia.call.v1:" + call_id``)
* span id  = first 8 bytes of SHA-256(UTF-8 ``"cartesia.span.v1:" + call_id + ":" + key``)

with ``key`` one of

* ``root`` for the call;
* ``turn:{role}:{start_ms}`` for a spoken turn, ``start_ms`` being its ``start_timestamp`` in
  integer milliseconds, rounded half up from the decimal text of the number (so that
  ``10.387875000000001`` and ``10.387875`` agree), with ``:{n}`` appended for the n-th
  (n >= 2) turn of one transcript sharing role and millisecond;
* ``{turn key}:tool:{tool_call_id}`` for a tool call, scoped by the turn that made it
  (``:{n}`` again for the n-th repeat of one id within that turn).

A turn's identity is its role and start time, never its position: the webhook stream and
the API transcript number turns differently, and both must give the same span id.
"""

from __future__ import annotations

import hashlib
from decimal import ROUND_HALF_UP, Decimal
from typing import Final

TRACE_PREFIX: Final = "cartesia.call.v1:"
SPAN_PREFIX: Final = "cartesia.span.v1:"


def trace_id_bytes(call_id: str) -> bytes:
    return hashlib.sha256((TRACE_PREFIX + call_id).encode("utf-8")).digest()[:16]


def trace_id(call_id: str) -> int:
    """The trace id of a call, as the integer the OTel SDK uses."""
    return int.from_bytes(trace_id_bytes(call_id), "big")


def trace_id_hex(call_id: str) -> str:
    return trace_id_bytes(call_id).hex()


def span_id(call_id: str, key: str) -> int:
    digest = hashlib.sha256(f"{SPAN_PREFIX}{call_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def start_ms(start_timestamp: float) -> int:
    """Seconds from call start -> integer milliseconds, half up on the decimal text."""
    # to_integral_value, not quantize: quantize raises InvalidOperation past the context's
    # 28 digits (an absurd offset like 1e25 must still give a key, not crash the mapping).
    return int(Decimal(repr(float(start_timestamp))).scaleb(3).to_integral_value(ROUND_HALF_UP))


def _occurrence(key: str, occurrence: int) -> str:
    return key if occurrence <= 1 else f"{key}:{occurrence}"


def root_key() -> str:
    return "root"


def analysis_key() -> str:
    return "analysis"


def turn_key(role: str, start_timestamp: float, occurrence: int = 1) -> str:
    return _occurrence(f"turn:{role}:{start_ms(start_timestamp)}", occurrence)


def tool_key(turn: str, tool_call_id: str, occurrence: int = 1) -> str:
    """A tool call is scoped by the key of the turn that made it."""
    return _occurrence(f"{turn}:tool:{tool_call_id}", occurrence)


def root_span_id(call_id: str) -> int:
    return span_id(call_id, root_key())


def turn_span_id(call_id: str, role: str, start_timestamp: float, occurrence: int = 1) -> int:
    return span_id(call_id, turn_key(role, start_timestamp, occurrence))


def tool_span_id(call_id: str, turn: str, tool_call_id: str, occurrence: int = 1) -> int:
    return span_id(call_id, tool_key(turn, tool_call_id, occurrence))
