"""Structured logs: ``text`` (``time level logger: message``) or ``json`` (one object per line).

One event is one line in both formats: in ``text``, control characters of the message, its
arguments and the exception text are escaped (``\\n``, ``\\x1b``), so a value from a request (a
``call_id`` holding a newline) cannot forge a line of its own. :func:`escape_controls` is also
what the console exporter and ``replay`` print values from calls through (a terminal is no
safer than a log shipper).

A refusal a client can repeat at will (a wrong secret, a bad body) is logged through a
:class:`CountedLog`: at once the first time, then as one counted line a minute per kind, so a
flood of bad requests cannot flood the log.

Nothing secret reaches a log line: the webhook secrets and API keys given to
:func:`configure_logging`, and every ``OTEL_EXPORTER_OTLP_*HEADERS`` value (an OTLP backend's
error body may echo them), are replaced by ``[redacted]`` wherever they would appear, as a last
line of defence (no code logs them on purpose). The same :class:`Redactor` cleans the
readiness JSON (:func:`active_redactor`). Transcript text is never logged at INFO or above.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Final, Literal, TextIO

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

REDACTED = "[redacted]"
#: shorter values are not redacted: a 1-character secret would mangle every line, and every
#: real webhook secret, API key or OTLP credential is far longer
MIN_SECRET_CHARS = 6

# C0 and C1 controls, DEL and the Unicode line and paragraph separators: what a terminal or a
# line-splitting log shipper could take for a new line or a cursor movement (ESC starts CSI and
# OSC sequences, U+009B is CSI alone). And the Unicode bidi controls (embeddings, overrides,
# isolates, marks), which reorder what a terminal shows ("Trojan Source").
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_CONTROL = {i: f"\\x{i:02x}" for i in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROL.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})
_CONTROL.update({i: f"\\u{i:04x}" for i in _BIDI})

#: how often a :class:`CountedLog` logs the count of a recurring kind
LOG_EVERY: Final = 60.0


def escape_controls(text: str) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x1b``, ``\\u202e``…): one
    line, always, that moves no cursor and reorders nothing on a terminal."""
    if text.isprintable():  # the common case costs one scan
        return text
    return text.translate(_CONTROL)


class _Period:
    __slots__ = ("client", "count", "level")

    def __init__(self, level: int) -> None:
        self.level = level
        self.count = 0  # since the line logged at once, or the last counted line
        self.client = ""  # the first client of those counted


class CountedLog:
    """Logs an event that a client can repeat at will (a refused request) without one line per
    event: per ``kind``, the first occurrence is logged at once (the caller's own line), the
    ones that follow as one counted line every ``every`` seconds naming the first client of
    the period (``summary % (kind, count, every, client)``), for as long as they keep coming.
    A period without any resets the kind: its next occurrence is logged at once again.

    ``client`` is an address, never a credential or a body. Called from one event loop (the
    server's; a new loop starts afresh); ``every <= 0`` logs every occurrence (tests).
    """

    def __init__(
        self,
        logger: logging.Logger,
        summary: str = "%s: %d more in the last %g s, the first from %s",
        *,
        every: float = LOG_EVERY,
    ) -> None:
        self._logger = logger
        self._summary = summary
        self.every = every
        self._periods: dict[str, _Period] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(
        self,
        kind: str,
        client: str,
        level: int,
        msg: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> None:
        """One occurrence of ``kind`` from ``client``; ``msg % args`` is its own line, logged
        at ``level`` if it is the first of its kind for a while."""
        if self.every <= 0:
            self._logger.log(level, msg, *args, exc_info=exc_info)
            return
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or served by a new event loop
            self._loop, self._periods = loop, {}
        period = self._periods.get(kind)
        if period is None:
            self._periods[kind] = _Period(level)
            self._logger.log(level, msg, *args, exc_info=exc_info)
            loop.call_later(self.every, self._flush, loop, kind)
            return
        if not period.count:
            period.client = client
        period.count += 1

    def _flush(self, loop: asyncio.AbstractEventLoop, kind: str) -> None:
        if loop is not self._loop:
            return
        period = self._periods[kind]
        if not period.count:  # a quiet period: the next one is logged at once
            del self._periods[kind]
            return
        self._logger.log(period.level, self._summary, kind, period.count, self.every, period.client)
        period.count, period.client = 0, ""
        loop.call_later(self.every, self._flush, loop, kind)


def _credential_parts(value: str) -> list[str]:
    """``value`` and, for ``Scheme credential`` values (``Basic …``, ``Bearer …``), the
    credential alone: a backend may echo either."""
    parts = value.split()
    return [value, parts[1]] if len(parts) == 2 else [value]


def otlp_header_values() -> list[str]:
    """The configured OTLP header values (``OTEL_EXPORTER_OTLP_*HEADERS``) of this process."""
    from otelbridge.delivery.environment import OtelEnvironment  # light; keeps logs.py importable first

    return [part for value in OtelEnvironment().header_values() for part in _credential_parts(value)]


class Redactor:
    """Replaces each configured secret by ``[redacted]`` in text (and in the strings of a JSON
    tree); the longest first, so that a secret containing another leaves nothing behind."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.set(secrets)

    def set(self, secrets: Iterable[str]) -> None:
        """Redact these from now on (instead of the earlier ones)."""
        unique = {s for s in secrets if len(s) >= MIN_SECRET_CHARS}
        self._secrets = sorted(unique, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def tree(self, value: object) -> object:
        """``value`` (JSON-like: dicts, lists, strings…) with every string redacted, keys too."""
        if not self._secrets:
            return value
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(k) if isinstance(k, str) else k: self.tree(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.tree(v) for v in value]
        return value


_ACTIVE: Final = Redactor()


def active_redactor() -> Redactor:
    """The process's redactor, set by :func:`configure_logging` and used by its log lines, for
    text that leaves the process other than through the log (the readiness JSON)."""
    return _ACTIVE


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self._redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        redact = self._redact
        data: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key != "color_message":
                data[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            data["exception"] = redact(self.formatException(record.exc_info))
        text = json.dumps(data, default=str, ensure_ascii=False)
        # json.dumps escapes control characters but not U+2028/U+2029, which some line
        # splitters honour; and an extra value rendered by default=str was not redacted yet.
        return redact(text).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


class TextFormatter(logging.Formatter):
    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._redact = redact or Redactor()

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(self._redact(record.getMessage()))
        record.asctime = self.formatTime(record)
        line = self.formatMessage(record)  # time, level and logger name hold no caller data
        if record.exc_info:
            # The traceback stays on the event's line (newlines escaped): "one line per event".
            line += " | " + escape_controls(self._redact(self.formatException(record.exc_info)))
        if record.stack_info:
            line += " | " + escape_controls(self._redact(self.formatStack(record.stack_info)))
        return line


class CommandFormatter(logging.Formatter):
    """One-shot commands' lines (replay, check, backfill, drain before their own logging):
    ``otelbridge: WARNING: message``, the logger's name only when it says more than the
    program's name already does (``otelbridge: WARNING otelbridge.replay: …``)."""

    def format(self, record: logging.LogRecord) -> str:
        where = "" if record.name in (PROGRAM, "root") else f" {record.name}"
        line = f"{PROGRAM}: {record.levelname}{where}: {escape_controls(_ACTIVE(record.getMessage()))}"
        if record.exc_info:
            line += " | " + escape_controls(_ACTIVE(self.formatException(record.exc_info)))
        return line


#: the program's name, which its root logger also has
PROGRAM: Final = "otelbridge"


def configure_logging(
    fmt: Literal["text", "json"] = "text",
    level: str = "info",
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> Redactor:
    """Log to ``stream`` (stderr) in ``fmt``; ``secrets`` and the OTLP header values of the
    environment are redacted from every line. Returns the redactor (also
    :func:`active_redactor`)."""
    redact = _ACTIVE
    redact.set([*secrets, *otlp_header_values()])
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if fmt == "json" else TextFormatter(redact))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's own loggers go through ours; its access log is off (the self-metrics count requests).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # httpx logs every request with its full URL (credentials in a URL would leak): warnings only.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return redact
