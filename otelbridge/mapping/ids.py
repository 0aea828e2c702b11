"""Deterministic trace and span ids (contract v1, see docs/conventions.md).

* trace id = first 16 bytes of SHA-256(UTF-8 ``"cartesia.call.v1:" + call_id``)
* span id  = first 8 bytes of SHA-256(UTF-8 ``"cartesia.span.v1:" + call_id + ":" + key``)

with ``key`` one of

* ``root`` for the call;
* ``turn:{role}:{start}`` for a spoken turn, ``start`` being its ``start_timestamp`` in
  milliseconds to the microsecond (``5000.1`` for 5.0001 s, ``410`` for 0.41 s), rounded half
  up from the decimal text of the number (so that ``10.387875000000001`` and ``10.387875``
  agree), with ``:{n}`` appended for the n-th (n >= 2) turn of one transcript sharing role and
  microsecond;
* ``{turn key}:tool:{tool_call_id}`` for a tool call, scoped by the turn that made it
  (``:{n}`` again for the n-th repeat of one id within that turn).

A turn's identity is its role and start time, never its position or its arrival: the webhook
stream and the API transcript number turns differently, and both must give the same span id.
Contract 3.0 keys turns to the microsecond (was: the millisecond) so that two turns of one
millisecond each get their own key whatever order their webhooks arrive in.

The hashing itself (prefixes, trace id bytes, span id of a key) lives in :mod:`otelbridge.link`,
which agents import without the daemon's dependencies; this module adds the keys.
"""

from __future__ import annotations

import functools
from decimal import ROUND_HALF_UP, Decimal

from otelbridge.link import ROOT_KEY, SPAN_PREFIX, TRACE_PREFIX, span_id, trace_id_bytes

# Not otelbridge.link's trace_id/trace_id_hex: those refuse an empty call id, and the daemon maps
# whatever id Cartesia sent (an evaluation's callId is not validated non-empty).


def trace_id(call_id: str) -> int:
    """The trace id of a call, as the integer the OTel SDK uses."""
    return int.from_bytes(trace_id_bytes(call_id), "big")


def trace_id_hex(call_id: str) -> str:
    return trace_id_bytes(call_id).hex()


@functools.lru_cache(maxsize=4096)  # pure; a turn's times are read for its key and its latency
def decimal_units(seconds: float, exponent: int) -> int:
    """Seconds -> integer units of 10**-exponent s, half up (away from zero) on the number's
    shortest decimal text (so ``10.387875000000001`` and ``10.387875`` agree)."""
    text = repr(float(seconds))
    if "e" not in text and "n" not in text:  # plain digits: the text's own arithmetic, exactly
        negative = text.startswith("-")
        whole, _, fraction = text.lstrip("-").partition(".")
        units = int(whole + fraction[:exponent].ljust(exponent, "0"))
        if fraction[exponent : exponent + 1] >= "5":
            units += 1
        return -units if negative else units
    # to_integral_value, not quantize: quantize raises InvalidOperation past the context's
    # 28 digits (an absurd offset like 1e25 must still give a key, not crash the mapping).
    return int(Decimal(text).scaleb(exponent).to_integral_value(ROUND_HALF_UP))


def start_ms(start_timestamp: float) -> int:
    """Seconds from call start -> integer milliseconds, half up on the decimal text."""
    return decimal_units(start_timestamp, 3)


@functools.lru_cache(maxsize=4096)
def start_key(start_timestamp: float) -> str:
    """The start of a turn in a key: milliseconds with up to three decimals (microseconds),
    half up on the decimal text; a whole millisecond reads as before contract 3.0."""
    us = decimal_units(start_timestamp, 6)
    sign = "-" if us < 0 else ""
    ms, frac = divmod(abs(us), 1000)
    return f"{sign}{ms}" if frac == 0 else f"{sign}{ms}.{frac:03d}".rstrip("0")


def _occurrence(key: str, occurrence: int) -> str:
    return key if occurrence <= 1 else f"{key}:{occurrence}"


def root_key() -> str:
    return ROOT_KEY


def analysis_key() -> str:
    return "analysis"


def turn_key(role: str, start_timestamp: float, occurrence: int = 1) -> str:
    return _occurrence(f"turn:{role}:{start_key(start_timestamp)}", occurrence)


def tool_key(turn: str, tool_call_id: str, occurrence: int = 1) -> str:
    """A tool call is scoped by the key of the turn that made it."""
    return _occurrence(f"{turn}:tool:{tool_call_id}", occurrence)


def root_span_id(call_id: str) -> int:
    return span_id(call_id, root_key())


def turn_span_id(call_id: str, role: str, start_timestamp: float, occurrence: int = 1) -> int:
    return span_id(call_id, turn_key(role, start_timestamp, occurrence))


def tool_span_id(call_id: str, turn: str, tool_call_id: str, occurrence: int = 1) -> int:
    return span_id(call_id, tool_key(turn, tool_call_id, occurrence))


__all__ = [
    "SPAN_PREFIX",
    "TRACE_PREFIX",
    "analysis_key",
    "decimal_units",
    "root_key",
    "root_span_id",
    "span_id",
    "start_key",
    "start_ms",
    "tool_key",
    "tool_span_id",
    "trace_id",
    "trace_id_bytes",
    "trace_id_hex",
    "turn_key",
    "turn_span_id",
]
