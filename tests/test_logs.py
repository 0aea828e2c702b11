"""Structured logs: JSON lines, text lines, and secrets never printed."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from otelbridge.logs import CommandFormatter, CountedLog, configure_logging, escape_controls


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_lines_with_extra_fields() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    logging.getLogger("otelbridge.test").info("exported %d spans", 3, extra={"call_id": "c1"})
    logging.getLogger("otelbridge.test").debug("not shown at info")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "info" and record["logger"] == "otelbridge.test"
    assert record["message"] == "exported 3 spans" and record["call_id"] == "c1"
    assert record["time"].endswith("Z")


def test_exceptions_stay_inside_one_json_line() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("otelbridge.test").exception("failed")
    (line,) = out.getvalue().splitlines()
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_text_format() -> None:
    out = io.StringIO()
    configure_logging("text", "warning", stream=out)
    logging.getLogger("otelbridge.sender").warning("backend down")
    logging.getLogger("otelbridge.sender").info("hidden")
    assert out.getvalue().rstrip().endswith("WARNING otelbridge.sender: backend down")
    assert "hidden" not in out.getvalue()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_redacted_wherever_they_would_appear(fmt: str) -> None:
    out = io.StringIO()
    configure_logging(fmt, "debug", secrets=["s3cr3t-value", "other-key"], stream=out)  # type: ignore[arg-type]
    log = logging.getLogger("otelbridge.test")
    log.error("header was %s", "s3cr3t-value")
    log.warning("url https://x/?k=other-key")
    text = out.getvalue()
    assert "s3cr3t-value" not in text and "other-key" not in text
    assert text.count("[redacted]") == 2


def test_text_lines_escape_control_characters_so_a_value_cannot_forge_a_line() -> None:
    out = io.StringIO()
    configure_logging("text", "info", stream=out)
    forged = "2026-12-03T10:00:00.000Z ERROR otelbridge.sender: forged"
    log = logging.getLogger("otelbridge.receiver")
    log.info("webhook accepted: call %s", f"c1\n{forged}\r\x1b[2K\u2028")
    log.warning(f"in the message itself\n{forged}")
    try:
        raise ValueError(f"call c2\n{forged}")
    except ValueError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines  # one line per event, the traceback included
    assert not [line for line in lines if line.startswith(forged[:20])]
    assert lines[0].endswith("call c1\\n" + forged + "\\r\\x1b[2K\\u2028")
    assert "| Traceback (most recent call last):\\n" in lines[2] and "ValueError: call c2\\n2026" in lines[2]


def test_json_lines_stay_one_line_with_line_separators() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    logging.getLogger("otelbridge.test").info("a\u2028b\nc", extra={"call_id": "x\u2029y"})
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["message"] == "a\u2028b\nc" and record["call_id"] == "x\u2029y"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_otlp_header_values_are_redacted_in_messages_exceptions_and_extras(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-honeycomb-team=hc-key-123456")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "Authorization=Basic dXNlcjp0b2tlbg==")
    out = io.StringIO()
    configure_logging(fmt, "info", stream=out)  # type: ignore[arg-type]
    log = logging.getLogger("otelbridge.sender")
    log.error(
        "refused (400: you sent x-honeycomb-team: %s)", "hc-key-123456", extra={"echo": "hc-key-123456"}
    )
    log.error("the backend echoed the token alone: dXNlcjp0b2tlbg==")
    try:
        raise RuntimeError("Authorization: Basic dXNlcjp0b2tlbg==")
    except RuntimeError:
        log.exception("failed")
    text = out.getvalue()
    assert "hc-key-123456" not in text and "dXNlcjp0b2tlbg==" not in text
    assert "x-honeycomb-team: [redacted])" in text and "token alone: [redacted]" in text
    assert "RuntimeError: Authorization: [redacted]" in text


def test_the_redactor_cleans_a_json_tree_as_readiness_shows_it() -> None:
    from otelbridge.logs import active_redactor

    redact = configure_logging("text", "info", secrets=["sk_live_abcdef"], stream=io.StringIO())
    assert redact is active_redactor()
    checks = {
        "delivery": {"traces": {"failures": 2, "last_error": "401: bad key sk_live_abcdef"}},
        "ok": [True],
    }
    assert redact.tree(checks) == {
        "delivery": {"traces": {"failures": 2, "last_error": "401: bad key [redacted]"}},
        "ok": [True],
    }


def test_escape_controls_escapes_terminal_sequences_c1_and_bidi_controls() -> None:
    hostile = "a\x1b]0;pwned\x07\x1b[2J\rb\x9b31m\x85\x7f\u202eevil\u2066\u200f\u061c"
    assert escape_controls(hostile) == (
        "a\\x1b]0;pwned\\x07\\x1b[2J\\rb\\x9b31m\\x85\\x7f\\u202eevil\\u2066\\u200f\\u061c"
    )
    # printable text is untouched, joiners of emoji and non-Latin scripts included
    for fine in ("support-bot-1", "שלום", "👩\u200d💻", "café"):
        assert escape_controls(fine) == fine


def test_counted_log_logs_the_first_at_once_then_one_counted_line_per_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="otelbridge.test")
    counted = CountedLog(
        logging.getLogger("otelbridge.test"), "refused %s: %d more in %g s, first from %s", every=0.05
    )

    async def flood() -> list[str]:
        for i in range(100):
            counted.add("401", f"10.0.0.{i % 3}", logging.WARNING, "refused 401 from %s", f"10.0.0.{i % 3}")
            counted.add("404", "10.0.0.9", logging.INFO, "refused 404 from %s", "10.0.0.9")
        at_once = [r.getMessage() for r in caplog.records]
        await asyncio.sleep(0.3)  # one period with the count, then a quiet one
        counted.add("401", "10.0.0.7", logging.WARNING, "refused 401 from %s", "10.0.0.7")
        return at_once

    at_once = asyncio.run(flood())
    assert at_once == ["refused 401 from 10.0.0.0", "refused 404 from 10.0.0.9"]
    assert [(r.levelno, r.getMessage()) for r in caplog.records[2:]] == [
        (logging.WARNING, "refused 401: 99 more in 0.05 s, first from 10.0.0.1"),
        (logging.INFO, "refused 404: 99 more in 0.05 s, first from 10.0.0.9"),
        (logging.WARNING, "refused 401 from 10.0.0.7"),  # after a quiet period: at once again
    ]


def test_command_lines_name_the_program_once() -> None:
    """The one-shot commands' lines: ``otelbridge: WARNING otelbridge:`` said the name twice."""
    formatter = CommandFormatter()

    def line(name: str, message: str) -> str:
        return formatter.format(logging.LogRecord(name, logging.WARNING, __file__, 1, message, None, None))

    assert line("otelbridge", "OTEL_X: not read") == "otelbridge: WARNING: OTEL_X: not read"
    assert line("otelbridge.replay", "slow") == "otelbridge: WARNING otelbridge.replay: slow"
    assert line("otelbridge", "a\nb") == "otelbridge: WARNING: a\\nb"  # one line per event
