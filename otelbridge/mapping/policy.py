"""What may leave the process, and how big: transcript text policy, phone masking, size caps.

Backends truncate long attributes silently (Tempo at 2 KB by default); otelbridge cuts
first, at a UTF-8 character boundary, and lists what it cut in
``otelbridge.truncated_attributes`` on the span. Everything a webhook can make long is bounded:
values, names, keys and the number of attributes, so that one payload cannot make a span (or
the memory that holds it) large.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from otelbridge.mapping.conventions import TRUNCATED

DEFAULT_SERVICE_NAME: Final = "otelbridge"
DEFAULT_MAX_ATTRIBUTE_BYTES: Final = 2048
DEFAULT_TEXT_MAX_CHARS: Final = 256
#: span and event names (``invoke_agent {agent name}``, a log event's name), in UTF-8 bytes
MAX_NAME_BYTES: Final = 256
#: attribute keys (the dotted keys of call and log metadata), in UTF-8 bytes
MAX_KEY_BYTES: Final = 256
#: attributes per span and per span event: OpenTelemetry's default attribute count limit
MAX_ATTRIBUTES: Final = 128
#: room kept for the attributes the mapping adds after a span's metadata (markers, OpenInference)
_ATTRIBUTES_AFTER_METADATA: Final = 16
#: in ``otelbridge.truncated_attributes``: the span's (or event's) name was cut
NAME_CUT: Final = "name"
#: in ``otelbridge.truncated_attributes``, after a metadata prefix: keys under it were dropped
DROPPED_SUFFIX: Final = "*"
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


class TextPolicy(StrEnum):
    KEEP = "keep"
    TRUNCATE = "truncate"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class MappingOptions:
    """Everything the pure mapping needs to know from the settings."""

    text_policy: TextPolicy = TextPolicy.KEEP
    text_max_chars: int = DEFAULT_TEXT_MAX_CHARS
    export_phone_numbers: bool = False
    max_attribute_bytes: int = DEFAULT_MAX_ATTRIBUTE_BYTES
    #: ``cartesia.text_chunk`` span events on turns (``OTELBRIDGE_TEXT_CHUNK_EVENTS``)
    text_chunk_events: bool = True


def cap_bytes(value: str, max_bytes: int) -> tuple[str, bool]:
    """Cut ``value`` to at most ``max_bytes`` of UTF-8 without splitting a character."""
    if len(value) * 4 <= max_bytes:  # fast path: cannot exceed even if all 4-byte chars
        return value, False
    encoded = value.encode("utf-8")
    if len(encoded) <= max_bytes:
        return value, False
    return encoded[:max_bytes].decode("utf-8", errors="ignore"), True


_PHONE_LIKE = re.compile(r"\+?\d[\d ().-]{5,}\d")


def _mask_digits(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    if digits < 7:
        return text
    keep = 4
    out = []
    seen = 0
    for char in text:
        if char.isdigit():
            seen += 1
            out.append(char if seen > digits - keep else "*")
        else:
            out.append(char)
    return "".join(out)


def bounded_name(prefix: str, variable: str, truncated: list[str]) -> str:
    """``"{prefix} {variable}"`` (``prefix`` alone for an empty ``variable``), at most
    :data:`MAX_NAME_BYTES`; a cut is listed in ``truncated``."""
    if not variable:
        return prefix
    name, cut = cap_bytes(f"{prefix} {variable}", MAX_NAME_BYTES)
    if cut:
        truncated.append(NAME_CUT)
    return name


def mask_phone(value: str) -> str:
    """``+14155558245`` -> ``+*******8245``; non-numbers (``websocket``) are left alone."""
    return _PHONE_LIKE.sub(_mask_digits, value)


def to_text(value: Any) -> str:
    """A scalar or structure as attribute text: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


class AttributeSink:
    """Collects a span's attributes, applying the caps and noting what was cut."""

    __slots__ = ("attributes", "dropped", "options", "truncated")

    def __init__(self, options: MappingOptions, attributes: dict[str, Any] | None = None):
        self.options = options
        self.attributes: dict[str, Any] = attributes if attributes is not None else {}
        self.truncated: list[str] = []
        #: metadata attributes left out past :data:`MAX_ATTRIBUTES` (OTLP's dropped count)
        self.dropped = 0

    def list_cuts(self) -> None:
        """Name every cut in ``otelbridge.truncated_attributes``, once each, in order."""
        if self.truncated:
            self.attributes[TRUNCATED] = list(dict.fromkeys(self.truncated))

    def put(self, key: str, value: Any) -> None:
        """Set ``key`` unless ``value`` is None; strings are capped."""
        if value is None:
            return
        if type(value) is str:  # the common case first: short text needs no look at its bytes
            if len(value) * 4 > self.options.max_attribute_bytes:
                value = self.cap(key, value)
        elif isinstance(value, str):
            value = self.cap(key, value)
        elif isinstance(value, int) and not isinstance(value, bool) and not _INT64_MIN <= value <= _INT64_MAX:
            value = str(value)  # OTLP ints are 64-bit
        self.attributes[key] = value

    def cap(self, key: str, value: str) -> str:
        capped, cut = cap_bytes(value, self.options.max_attribute_bytes)
        if cut:
            self.truncated.append(key)
        return capped

    def text(self, key: str, value: str | None) -> None:
        """Transcript text under the text policy (keep / truncate to N chars / drop)."""
        if value is None or self.options.text_policy is TextPolicy.DROP:
            return
        if self.options.text_policy is TextPolicy.TRUNCATE and len(value) > self.options.text_max_chars:
            value = value[: self.options.text_max_chars]
            self.truncated.append(key)
        self.put(key, value)

    def phone(self, key: str, value: str | None) -> None:
        if value is None:
            return
        self.put(key, value if self.options.export_phone_numbers else mask_phone(value))

    def flatten(self, prefix: str, mapping: dict[str, Any]) -> None:
        """Nested maps become dotted keys; lists become JSON text. Keys are cut at
        :data:`MAX_KEY_BYTES`; past :data:`MAX_ATTRIBUTES` (less the room kept for what follows)
        keys are dropped, counted, and ``{prefix}*`` is listed as cut."""
        self._flatten(prefix, prefix, mapping)

    def _flatten(self, top: str, prefix: str, mapping: dict[str, Any]) -> None:
        room = MAX_ATTRIBUTES - _ATTRIBUTES_AFTER_METADATA
        for name, value in mapping.items():
            key = f"{prefix}{name}"
            if isinstance(value, dict):
                self._flatten(top, f"{key}.", value)
                continue
            if value is None:
                continue
            key, cut = cap_bytes(key, MAX_KEY_BYTES)
            if key not in self.attributes and len(self.attributes) >= room:
                self.dropped += 1
                self.truncated.append(top + DROPPED_SUFFIX)
                continue
            if cut:
                self.truncated.append(key)
            self.put(key, value if isinstance(value, str | bool | int | float) else to_text(value))
