import calendar
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otelbridge.cartesia.timestamps import format_rfc3339_ns, offset_to_ns, parse_rfc3339_ns

BASE = calendar.timegm((2025, 6, 24, 23, 36, 40, 0, 0, 0)) * 1_000_000_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-06-24T23:36:40Z", BASE),
        ("2025-06-24T23:36:40.3Z", BASE + 300_000_000),
        ("2025-06-24T23:36:40.360473Z", BASE + 360_473_000),
        # nine digits: exact, no float on the way (fromisoformat would drop the last three)
        ("2025-06-24T23:36:40.360473878Z", BASE + 360_473_878),
        ("2025-06-24T23:36:40.000000001z", BASE + 1),
        ("2025-06-24t23:36:40Z", BASE),
        ("2025-06-25T01:36:40.5+02:00", BASE + 500_000_000),
        ("2025-06-24T18:06:40-05:30", BASE),
        ("2025-06-24 23:36:40Z", BASE),
    ],
)
def test_parses_to_exact_nanoseconds(text: str, expected: int) -> None:
    assert parse_rfc3339_ns(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("2025-06-24T23:36:40", "not an RFC 3339 timestamp"),  # no offset
        ("2025-06-24", "not an RFC 3339 timestamp"),
        ("yesterday", "not an RFC 3339 timestamp"),
        ("2025-06-24T23:36:40.Z", "not an RFC 3339 timestamp"),
        ("2025-06-24T23:36:40.1234567890Z", "more than 9 fractional"),
        ("2025-13-24T23:36:40Z", "invalid date"),
        ("2025-02-30T23:36:40Z", "invalid date"),
        ("2025-06-24T24:00:00Z", "invalid date"),
        ("2025-06-24T23:36:40+25:00", "invalid UTC offset"),
    ],
)
def test_rejects_with_a_reason(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_rfc3339_ns(text)


def test_round_trip_format() -> None:
    ns = parse_rfc3339_ns("2026-04-16T01:08:37.413659123Z")
    assert format_rfc3339_ns(ns) == "2026-04-16T01:08:37.413659123Z"


def test_float_offsets_round_to_nearest_ns() -> None:
    assert offset_to_ns(10.387875000000001) == 10_387_875_000
    assert offset_to_ns(0.0) == 0


@pytest.mark.parametrize(
    "text",
    [
        "+14155550123",  # a phone number where a time should be
        "2025-06-24T23:36:40.1234567890Z",
        "2025-02-30T23:36:40Z",
        "2025-06-24T23:36:40+25:00",
        "2025-06-24T23:36:61Z",
        "+14155550123 " * 400_000,
    ],
)
def test_reasons_never_quote_the_value_and_stay_short(text: str) -> None:
    """The reason goes into a 422 answer and the log: the body's value (a phone number, or
    megabytes) never does."""
    with pytest.raises(ValueError, match=r"expected e\.g\.|invalid") as caught:
        parse_rfc3339_ns(text)
    reason = str(caught.value)
    assert text.strip() not in reason and "+1415" not in reason and "23:36" not in reason
    assert len(reason) < 120


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)),
    st.integers(0, 999_999_999),
    st.integers(0, 9),
    st.integers(-(23 * 60 + 59), 23 * 60 + 59),
)
def test_any_time_reads_as_calendar_arithmetic_has_it(
    when: dt.datetime, nanos: int, digits: int, offset_minutes: int
) -> None:
    """Every date of years 1-9999, any offset, 0-9 digits: the Unix nanoseconds that exact
    datetime arithmetic gives (an independent reference for the parser's day count)."""
    fraction = f"{nanos:09d}"[:digits]
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    stamp = f"{when.year:04d}-{when:%m-%dT%H:%M:%S}"  # %Y gives 999, not 0999
    text = f"{stamp}{'.' + fraction if digits else ''}{sign}{hours:02d}:{minutes:02d}"
    local = when.replace(microsecond=0, tzinfo=dt.timezone(dt.timedelta(minutes=offset_minutes)))
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    expected = (local - epoch) // dt.timedelta(seconds=1) * 1_000_000_000 + int(fraction.ljust(9, "0") or 0)
    assert parse_rfc3339_ns(text) == expected
