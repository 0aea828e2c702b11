"""Structured logs: JSON lines, text lines, and secrets never printed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from otelbridge.logs import configure_logging


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
