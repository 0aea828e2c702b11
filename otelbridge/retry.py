"""Retry timing shared by every HTTP client of otelbridge (the OTLP transport and sender, the
Cartesia API client): the server's ``Retry-After`` and exponential backoff with equal jitter."""

from __future__ import annotations

import datetime as dt
import math
import random
from email.utils import parsedate_to_datetime


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """HTTP ``Retry-After``: delta-seconds (integer or decimal) or an HTTP-date, in seconds.

    A negative, infinite or unparsable value is ``None``; a date in the past is ``0.0``."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max((when - (now or dt.datetime.now(dt.UTC))).total_seconds(), 0.0)


#: past it every wait is ``max_s`` anyway, for any initial wait above 1e-19 of it
_MAX_EXPONENT = 64


def backoff(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """The wait before retry ``attempt`` (0-based): ``initial_s * 2**attempt`` capped at
    ``max_s``, half of it fixed and half random (equal jitter)."""
    # the exponent is bounded: 2.0**1024 overflows a float, after ~1,000 failures of an outage
    ceiling = min(max_s, initial_s * 2.0 ** min(max(0, attempt), _MAX_EXPONENT))
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)
