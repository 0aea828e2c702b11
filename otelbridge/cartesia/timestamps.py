"""RFC 3339 timestamps to exact integer Unix nanoseconds.

Cartesia sends times with 0 to 9 fractional digits (``…40.360473878Z``). ``datetime`` keeps
only microseconds, so the fraction is parsed as an integer of nanoseconds and never goes
through a float.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Final

#: year, month, day, hour, minute, second, fraction, offset (positional groups: a request's
#: timestamp is parsed on the ack path, and named look-ups cost more)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ]"
    r"(\d{2}):(\d{2}):(\d{2})"
    r"(?:\.(\d+))?"
    r"([Zz]|[+-]\d{2}:\d{2})"
)
_EPOCH_DAY: Final = _dt.date(1970, 1, 1).toordinal()

_NS_PER_S = 1_000_000_000
_EXAMPLE = "expected e.g. 2026-04-16T01:08:37.413659Z"
#: longer than any RFC 3339 text (35 characters with 9 digits and an offset), with room for
#: surrounding whitespace and digits past the ninth, which get their own reason
_MAX_CHARS = 64


def parse_rfc3339_ns(text: str) -> int:
    """Return the Unix time of ``text`` in integer nanoseconds.

    Raises ``ValueError`` with a short one-line reason for anything that is not RFC 3339 with
    at most nine fractional digits and a ``Z`` or ``±HH:MM`` offset. The reason never quotes
    ``text``: it comes from a request body (it may hold a phone number, or be megabytes long)
    and the reason goes into a 422 answer and the log.
    """
    if len(text) > _MAX_CHARS:  # no regex over megabytes of what cannot be a timestamp
        raise ValueError(f"not an RFC 3339 timestamp: {len(text)} characters long ({_EXAMPLE})")
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp ({_EXAMPLE})")
    year_text, month_text, day_text, hour_text, minute_text, second_text, fraction, offset = match.groups()
    fraction = fraction or ""
    if len(fraction) > 9:
        raise ValueError(f"more than 9 fractional second digits ({_EXAMPLE})")
    year, month, day = int(year_text), int(month_text), int(day_text)
    hour, minute, second = int(hour_text), int(minute_text), int(second_text)
    # Validate the calendar fields (a leap second 60 is allowed by RFC 3339 and rolls over).
    try:
        day_number = _dt.datetime(year, month, day, hour, minute, min(second, 59)).toordinal()
    except ValueError as exc:
        raise ValueError(f"invalid date or time: {exc}") from None  # datetime's words, no input
    if second > 60:
        raise ValueError("invalid seconds (00 to 60)")
    seconds = (day_number - _EPOCH_DAY) * 86_400 + hour * 3600 + minute * 60 + second
    if offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        off_hours, off_minutes = int(offset[1:3]), int(offset[4:6])
        if off_hours > 23 or off_minutes > 59:
            raise ValueError("invalid UTC offset (at most ±23:59)")
        seconds -= sign * (off_hours * 3600 + off_minutes * 60)
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return seconds * _NS_PER_S + nanos


def format_rfc3339_ns(ns: int) -> str:
    """Format integer Unix nanoseconds as RFC 3339 UTC with nine fractional digits."""
    seconds, nanos = divmod(ns, _NS_PER_S)
    base = _dt.datetime.fromtimestamp(seconds, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


#: Offsets from call start beyond a day are not a real call: the mapping clamps them (so times
#: stay inside 64 bits) and computes no response latency from them.
MAX_OFFSET_S: Final = 86_400.0


def offset_to_ns(seconds: float) -> int:
    """A float offset in seconds (as Cartesia reports turn times) to integer nanoseconds."""
    return round(seconds * _NS_PER_S)
