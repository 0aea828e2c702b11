"""Pydantic models of Cartesia's call data: AgentCall and its transcript.

The models follow the public OpenAPI (Cartesia-Version 2025-11-04) and the newer fields of
2026-03-01. They are lenient where Cartesia is known to vary and strict where the data would
be unusable:

* unknown fields are kept (``extra="allow"``), never an error;
* ``null`` lists and maps read as empty;
* a LogMetric value may be a number or a string (booleans read as ``"true"``/``"false"``);
* times are RFC 3339 with 0-9 fractional digits and become exact integer nanoseconds;
* both status vocabularies are accepted, and an unknown status is kept (and not final).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Final, NotRequired

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, with_config
from typing_extensions import TypedDict

from otelbridge.cartesia.timestamps import parse_rfc3339_ns

# --- status vocabularies ---------------------------------------------------------------
#: 2025 vocabulary: active|completed|failed|cancelled; 2026-03-01: created|started|completed|failed
RUNNING_STATUSES: Final = frozenset({"active", "created", "started"})
FINAL_STATUSES: Final = frozenset({"completed", "failed", "cancelled"})
KNOWN_STATUSES: Final = RUNNING_STATUSES | FINAL_STATUSES

SPOKEN_ROLES: Final = frozenset({"user", "assistant"})
SYSTEM_ROLE: Final = "system"


#: Span times travel as unsigned 64-bit Unix nanoseconds (OTLP fixed64) and most backends hold
#: them in a signed 64-bit integer: 1970-01-01T00:00:00Z .. 2262-04-11T23:47:16.854775807Z.
MAX_TIMESTAMP_NS: Final = 2**63 - 1


def _timestamp(value: object) -> object:
    if isinstance(value, str):
        ns = parse_rfc3339_ns(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        ns = value  # already nanoseconds (models built in code)
    else:
        raise ValueError("expected an RFC 3339 timestamp string")
    if not 0 <= ns <= MAX_TIMESTAMP_NS:
        raise ValueError("outside the times a trace can carry (1970-01-01 to 2262-04-11 UTC)")
    return ns


def timestamp_ns(value: object) -> int:
    """What a :data:`Timestamp` field makes of ``value`` (ValueError when it is not one)."""
    result = _timestamp(value)
    assert isinstance(result, int)
    return result


def _empty_if_none(value: object) -> object:
    return [] if value is None else value


def _empty_map_if_none(value: object) -> object:
    return {} if value is None else value


_FLOAT_MAX: Final = sys.float_info.max


def _check_float_range(value: object, what: str) -> None:
    # JSON allows any integer; a metric holds a 64-bit float (mapping would overflow)
    if isinstance(value, int) and not -_FLOAT_MAX <= value <= _FLOAT_MAX:
        raise ValueError(f"{what} must be a number a 64-bit float can hold (|value| <= 1.8e308)")


def _metric_value(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    _check_float_range(value, "a LogMetric value")
    if isinstance(value, int | float | str):
        return value
    raise ValueError("a LogMetric value must be a number or a string")


#: RFC 3339 text in, integer Unix nanoseconds out.
Timestamp = Annotated[int, BeforeValidator(_timestamp)]
_List = BeforeValidator(_empty_if_none)
_Map = BeforeValidator(_empty_map_if_none)


def _evaluation_value(value: object) -> object:
    """Numbers stay numbers, booleans become 1/0 (a pass/fail judge), anything else its JSON text."""
    if isinstance(value, bool):
        return int(value)
    _check_float_range(value, "an evaluation value")  # its score and metric are floats
    if value is None or isinstance(value, int | float | str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class CartesiaModel(BaseModel):
    """Base: keep unknown fields, reject NaN/Infinity, allow building by field name."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, allow_inf_nan=False)


@with_config(ConfigDict(allow_inf_nan=False))
class TextChunk(TypedDict):
    """One streamed piece of a turn's text. Validated like the models but kept a plain dict
    (unknown keys dropped): a turn carries one per word or two, and model instances made
    them most of the cost of validating a webhook on the request path."""

    text: NotRequired[str]
    start_timestamp: float


class ToolCall(CartesiaModel):
    id: str
    name: str
    arguments: Annotated[dict[str, Any], _Map] = Field(default_factory=dict)
    result: Any = None


class LogEvent(CartesiaModel):
    """A ``log_event`` (also how the Line SDK's LogMessage travels: metadata nests
    ``level``, ``message`` and ``metadata``)."""

    event: str
    metadata: Annotated[dict[str, Any], _Map] = Field(default_factory=dict)
    timestamp: float | None = None


class LogMetric(CartesiaModel):
    name: str
    value: Annotated[int | float | str, BeforeValidator(_metric_value)]
    timestamp: float | None = None


class TranscriptItem(CartesiaModel):
    """One transcript entry: a spoken turn (``user``/``assistant``) or a ``system`` item
    carrying a ``log_event`` or a ``log_metric``. Times are float seconds from call start."""

    role: str
    text: str | None = None
    text_chunks: Annotated[list[TextChunk], _List] = Field(default_factory=list)
    start_timestamp: float
    end_timestamp: float | None = None
    end_reason: str | None = None
    was_interrupted: bool | None = None
    tool_calls: Annotated[list[ToolCall], _List] = Field(default_factory=list)
    vad_buffer_ms: int | None = None
    tts_ttfb: float | None = None
    stt_ttfb: float | None = None
    log_event: LogEvent | None = None
    log_metric: LogMetric | None = None

    @property
    def is_system(self) -> bool:
        return self.role == SYSTEM_ROLE


class TelephonyParams(CartesiaModel):
    to: str | None = None
    from_: str | None = Field(default=None, alias="from")
    call_sid: str | None = None
    direction: str | None = None
    connection_type: str | None = None


class AgentCall(CartesiaModel):
    """A call as returned by ``GET /agents/calls/{id}`` (and inside webhook ``call``)."""

    id: str = Field(min_length=1)
    agent_id: str = Field(min_length=1)
    agent_name: str | None = None
    status: str
    start_time: Timestamp | None = None
    end_time: Timestamp | None = None
    end_reason: str | None = None
    transcript: Annotated[list[TranscriptItem], _List] = Field(default_factory=list)
    telephony_params: TelephonyParams | None = None
    telephony_account_type: str | None = None
    summary: str | None = None
    error_message: str | None = None
    deployment_id: str | None = None
    deployment_version_id: str | None = None
    deployment_region: str | None = None
    metadata: Annotated[dict[str, Any], _Map] = Field(default_factory=dict)
    zdr_enabled: bool | None = None
    redacted_at: str | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def merged_with(self, other: AgentCall) -> AgentCall:
        """This copy, field by field, with what only ``other`` has: a field unset here (None,
        or an empty transcript or metadata) takes ``other``'s value. A List Calls copy carries
        no ``agent_name`` and, without ``expand=transcript``, no transcript; the webhook copy
        of the same call does."""
        update: dict[str, Any] = {}
        for name in type(self).model_fields:
            mine = getattr(self, name)
            if mine is None or (not mine and isinstance(mine, list | dict)):
                theirs = getattr(other, name)
                if theirs is not None and theirs != mine:
                    update[name] = theirs
        return self.model_copy(update=update) if update else self


class ListCallsResponse(CartesiaModel):
    """``GET /agents/calls`` page. Calls are kept raw here so that one bad call does not
    sink the page: validate each with :func:`parse_call`."""

    data: list[dict[str, Any]]
    next_page: str | None = None


def parse_call(payload: object) -> AgentCall:
    """Validate one call; raises :class:`pydantic.ValidationError`."""
    return AgentCall.model_validate(payload)


__all__ = [
    "FINAL_STATUSES",
    "KNOWN_STATUSES",
    "RUNNING_STATUSES",
    "AgentCall",
    "ListCallsResponse",
    "LogEvent",
    "LogMetric",
    "TelephonyParams",
    "TextChunk",
    "Timestamp",
    "ToolCall",
    "TranscriptItem",
    "ValidationError",
    "parse_call",
]


class EvaluationResult(CartesiaModel):
    """One LLM-judge result of ``GET /agents/metrics/results`` (camelCase, as the API sends it)."""

    id: str
    metric_id: str | None = Field(default=None, alias="metricId")
    metric_name: str = Field(alias="metricName")
    agent_id: str = Field(alias="agentId")
    call_id: str = Field(alias="callId")
    result: str | None = None
    value: Annotated[int | float | str | None, BeforeValidator(_evaluation_value)] = None
    status: str | None = None
    created_at: Timestamp = Field(alias="createdAt")


def parse_evaluation(payload: object) -> EvaluationResult:
    return EvaluationResult.model_validate(payload)
