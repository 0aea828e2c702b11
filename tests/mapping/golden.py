"""Golden-file rendering: a fixture in tests/testdata through the ``otelbridge replay`` path to
the OTLP request it would export, as reviewable JSON.

The path is the one replay takes (:class:`otelbridge.replay.Replay` reads, validates, assembles
webhook streams and maps with the default :class:`MappingOptions`); then the SDK bridge builds
``ReadableSpan`` objects and the SDK's own encoder makes the ExportTraceServiceRequest. Metric
points have no protobuf form until a recorder sees them, so they are rendered from the mapping
records as they are.

Also here: small readers for a rendered document (spans with hex ids and plain attribute
values), so that tests can state facts about a golden without re-implementing OTLP JSON.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from google.protobuf.json_format import MessageToDict

from otelbridge.delivery.otlp import trace_request
from otelbridge.delivery.resource import build_resource
from otelbridge.mapping import MappedCall, MappingOptions
from otelbridge.mapping.records import MetricPoint
from otelbridge.replay import Replay
from otelbridge.settings import Settings

TESTDATA: Final = Path(__file__).resolve().parents[1] / "testdata"
SERVICE_NAME: Final = "otelbridge-golden"
INSTANCE_ID: Final = "golden-instance"
GOLDEN_SUFFIX: Final = ".otlp.json"


class FixtureError(AssertionError):
    """A fixture that replay would not take whole (a bad record or file)."""


def golden_path(fixture: Path) -> Path:
    """``tests/testdata/x.json`` -> ``tests/testdata/x.otlp.json`` (``.jsonl`` alike)."""
    return fixture.with_name(fixture.stem + GOLDEN_SUFFIX)


def map_fixture(fixture: Path) -> list[MappedCall]:
    """Read, validate, assemble and map ``fixture`` exactly as ``otelbridge replay`` does."""
    # model_construct: the defaults, without reading OTELBRIDGE_* from the environment.
    settings = Settings.model_construct()
    if settings.mapping_options() != MappingOptions():
        raise FixtureError("the default settings no longer give the default MappingOptions")
    out, err = io.StringIO(), io.StringIO()
    replay = Replay(settings, {"traces": "none", "metrics": "none"}, out, err)
    replay.read(fixture)
    mapped = replay.map()
    if not replay.report.ok or err.getvalue():
        raise FixtureError(f"{fixture.name}: replay rejected part of it:\n{err.getvalue()}")
    return mapped


def point_dict(point: MetricPoint) -> dict[str, Any]:
    data = dataclasses.asdict(point)
    data["kind"] = point.kind.value
    return data


def render(mapped: list[MappedCall]) -> dict[str, Any]:
    resource = build_resource(SERVICE_NAME, INSTANCE_ID)
    request = trace_request([s for call in mapped for s in call.spans], resource)
    return {
        "traces": MessageToDict(request),
        "metric_points": [point_dict(p) for call in mapped for p in call.points],
    }


def to_text(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def render_fixture(fixture: Path) -> str:
    return to_text(render(map_fixture(fixture)))


# --- reading a rendered document --------------------------------------------------------


def b64_hex(value: str) -> str:
    """OTLP-as-protobuf-JSON ids are base64 bytes; hex is what the contract speaks."""
    return base64.b64decode(value).hex()


def any_value(value: dict[str, Any]) -> Any:
    """An OTLP AnyValue (as MessageToDict renders it) -> the plain Python value."""
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return value["boolValue"]
    if "intValue" in value:
        return int(value["intValue"])  # int64 is a JSON string
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return [any_value(v) for v in value["arrayValue"].get("values", [])]
    if not value:
        return None
    raise ValueError(f"unexpected AnyValue {value!r}")


def attributes(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {kv["key"]: any_value(kv["value"]) for kv in items or []}


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[Event]
    status_code: str | None
    status_message: str | None


def resource_attributes(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [attributes(rs["resource"].get("attributes")) for rs in document["traces"]["resourceSpans"]]


def spans(document: dict[str, Any]) -> list[Span]:
    out = []
    for resource_spans in document["traces"].get("resourceSpans", []):
        for scope_spans in resource_spans["scopeSpans"]:
            for raw in scope_spans["spans"]:
                status = raw.get("status", {})
                out.append(
                    Span(
                        name=raw["name"],
                        trace_id=b64_hex(raw["traceId"]),
                        span_id=b64_hex(raw["spanId"]),
                        parent_span_id=b64_hex(raw["parentSpanId"]) if raw.get("parentSpanId") else None,
                        start_ns=int(raw["startTimeUnixNano"]),
                        end_ns=int(raw["endTimeUnixNano"]),
                        attributes=attributes(raw.get("attributes")),
                        events=[
                            Event(e["name"], int(e["timeUnixNano"]), attributes(e.get("attributes")))
                            for e in raw.get("events", [])
                        ],
                        status_code=status.get("code"),
                        status_message=status.get("message"),
                    )
                )
    return out
