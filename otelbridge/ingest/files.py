"""Reading saved Cartesia data for ``otelbridge replay``: detect the shape, yield records.

Shapes, detected from the content (not the file name):

* a List Calls response ``{"data": [call, ...], "next_page": ...}``;
* one Get Call object ``{"id": ..., "agent_id": ..., ...}``;
* a JSON array of calls (or of webhook events);
* one webhook event ``{"type": ..., ...}``;
* a webhook stream: JSON lines, one event (or call) per line.

JSON is parsed by pydantic-core, which rejects what is not valid JSON text (lone UTF-16
surrogates included) instead of letting it reach an exporter.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import pydantic_core


class RecordKind(StrEnum):
    CALL = "call"
    WEBHOOK = "webhook event"


@dataclass(frozen=True, slots=True)
class Record:
    """One raw record and where it came from (``label`` reads like ``data[3]`` or
    ``line 12``); ``error`` is set when the record is not even JSON."""

    label: str
    kind: RecordKind
    payload: Any
    error: str | None = None

    @property
    def call_hint(self) -> str | None:
        """The call id the raw payload names, for error messages."""
        if not isinstance(self.payload, dict):
            return None
        for key in ("call_id", "id", "request_id"):
            value = self.payload.get(key)
            if isinstance(value, str) and value:
                return value
        call = self.payload.get("call")
        if isinstance(call, dict) and isinstance(call.get("id"), str):
            return str(call["id"])
        return None


class InputFileError(Exception):
    """The file cannot be read at all (missing, unreadable, not JSON of a known shape)."""


def _kind(item: Any) -> RecordKind:
    if isinstance(item, dict) and "type" in item and "status" not in item:
        return RecordKind.WEBHOOK
    return RecordKind.CALL


def _json_error(exc: ValueError) -> str:
    return str(exc).splitlines()[0]


def read_records(path: Path) -> tuple[str, Iterator[Record]]:
    """(detected format, records). Raises :class:`InputFileError` for file-level problems."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputFileError("no such file") from None
    except IsADirectoryError:
        raise InputFileError("is a directory, not a file") from None
    except OSError as exc:
        raise InputFileError(f"cannot read it: {exc.strerror or exc}") from None
    if not data.strip():
        raise InputFileError("the file is empty")
    try:
        document = pydantic_core.from_json(data)
    except ValueError as exc:
        if b"\n" not in data.strip():
            raise InputFileError(f"not JSON: {_json_error(exc)}") from None
        return "webhook stream (JSON lines)", _json_lines(data)
    return _document(document)


def _document(document: Any) -> tuple[str, Iterator[Record]]:
    if isinstance(document, dict):
        if isinstance(document.get("data"), list):
            items = document["data"]
            return "List Calls response", (
                Record(f"data[{i}]", RecordKind.CALL, item) for i, item in enumerate(items)
            )
        if "type" in document and "status" not in document:
            return "webhook event", iter([Record("the event", RecordKind.WEBHOOK, document)])
        if "id" in document:
            return "Get Call object", iter([Record("the call", RecordKind.CALL, document)])
        keys = ", ".join(sorted(document)[:5]) or "none"
        raise InputFileError(
            "a JSON object of unknown shape (expected a List Calls response with 'data', a "
            f"call with 'id', or a webhook event with 'type'; found keys: {keys})"
        )
    if isinstance(document, list):
        return "JSON array", (Record(f"record {i}", _kind(item), item) for i, item in enumerate(document))
    raise InputFileError(
        f"JSON {type(document).__name__} at top level; expected an object, an array or JSON lines"
    )


def _json_lines(data: bytes) -> Iterator[Record]:
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        label = f"line {number}"
        try:
            item = pydantic_core.from_json(line)
        except ValueError as exc:
            yield Record(label, RecordKind.WEBHOOK, None, f"not JSON: {_json_error(exc)}")
            continue
        yield Record(label, _kind(item), item)
