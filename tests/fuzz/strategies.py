"""Hypothesis strategies of webhook requests for the fuzz tests: valid, near-valid and hostile.

Every strategy draws a :class:`Request`: the exact bytes put on the wire (raw text, not what
``json.dumps`` would make of a dict: duplicate keys, lone surrogate escapes, ``NaN`` literals,
``1e999999``, invalid UTF-8 and deep nesting only exist as text), the headers, and the statuses
docs/webhooks.md's table ("What a webhook gets back") allows for it.

The valid events are built from the call, turn and timestamp strategies of
tests/mapping/test_properties.py (model-valid by construction); the near-valid ones change one
field of a valid event, the fields being read from the models themselves (``model_fields`` of
:class:`WebhookEvent` and of every model or TypedDict its annotations hold), so that a field
added to a model is fuzzed without a change here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, get_args, get_origin

from hypothesis import strategies as st
from pydantic import BaseModel
from typing_extensions import get_type_hints, is_typeddict  # TextChunk is typing_extensions'

from otelbridge.cartesia.webhooks import (
    CALL_COMPLETED,
    CALL_EVENTS,
    CALL_FAILED,
    CALL_STARTED,
    CALL_TURN,
    KNOWN_EVENT_TYPES,
    WebhookEvent,
)
from tests.mapping.test_properties import (
    call_payloads,
    ids_text,
    json_values,
    rfc3339,
    spoken_turn,
    system_item,
    text,
    unknown_fields,
)
from tests.support.serve_process import sample_deliveries

#: OTELBRIDGE_MAX_BODY_BYTES of the fuzzed daemon: small, so that the 413 boundary is cheap to reach
MAX_BODY_BYTES: Final = 256 * 1024

Secret = Literal["right", "wrong", "missing"]
Answer = Literal["accepted", "ignored"]

OK: Final = frozenset({200})
BAD_REQUEST: Final = frozenset({400})
OK_OR_INVALID: Final = frozenset({200, 422})
ANY_REFUSAL: Final = frozenset({200, 400, 422})

#: what WebhookEvent's own validator says when a whole part is missing: the message of a 422
#: names that rule's field, which need not be the field a mutation touched (``type`` changed
#: to ``call_turn`` is reported as ``turn: required on call_turn events``)
ENVELOPE_RULES: Final = (
    "call_id: missing",
    "turn: required",
    "analysis: required",
    "agent_id: required",
    "timestamp: required",
)


@dataclass(frozen=True, slots=True)
class Request:
    """One POST to the webhook endpoint and what may come back.

    ``allowed``: the statuses README allows for this request; ``answer``: the 200 answer's
    ``status`` when it is known in advance; ``field``: the field (a path of keys and indices)
    a near-valid body got wrong, which a 422 must name."""

    kind: str
    body: bytes
    allowed: frozenset[int]
    answer: Answer | None = None
    field: tuple[str | int, ...] | None = None
    content_type: str | None = "application/json"
    secret: Secret = "right"
    chunked: bool = False

    def __repr__(self) -> str:  # what Hypothesis prints for a falsifying example
        shown = self.body if len(self.body) <= 2000 else self.body[:2000] + b"..."
        return (
            f"Request(kind={self.kind!r}, allowed={sorted(self.allowed)}, answer={self.answer!r}, "
            f"field={self.field!r}, content_type={self.content_type!r}, secret={self.secret!r}, "
            f"chunked={self.chunked!r}, {len(self.body)} bytes: {shown!r})"
        )


# --- the models' fields ------------------------------------------------------------------------
Path = tuple[str | int, ...]


def nested_models(annotation: Any) -> list[type]:
    """The pydantic models and TypedDicts an annotation holds (through unions, lists, Annotated)."""
    if get_origin(annotation) is Annotated:
        return nested_models(get_args(annotation)[0])
    if isinstance(annotation, type) and (issubclass(annotation, BaseModel) or is_typeddict(annotation)):
        return [annotation]
    return [model for arg in get_args(annotation) for model in nested_models(arg)]


def model_fields(model: type) -> dict[str, Any]:
    """A model's (or TypedDict's) fields as they appear in JSON (aliases: ``from``), with their
    annotations."""
    if is_typeddict(model):
        return dict(get_type_hints(model))
    assert issubclass(model, BaseModel)
    return {(info.alias or name): info.annotation for name, info in model.model_fields.items()}


def field_slots(
    event: Mapping[str, Any], model: type = WebhookEvent, path: Path = ()
) -> Iterator[tuple[Path, Any]]:
    """The path and annotation of every field of ``model`` in ``event``, present or not, and of
    the fields of every nested model present (``call.transcript[2].tool_calls[0].arguments``…)."""
    for name, annotation in model_fields(model).items():
        here = (*path, name)
        yield here, annotation
        child = event.get(name)
        for nested in nested_models(annotation):
            if isinstance(child, dict):
                yield from field_slots(child, nested, here)
            elif isinstance(child, list):
                for index, item in enumerate(child):
                    if isinstance(item, dict):
                        yield from field_slots(item, nested, (*here, index))


def field_paths(event: Mapping[str, Any]) -> list[Path]:
    return [path for path, _ in field_slots(event)]


def _takes_numbers(annotation: Any) -> bool:
    """Whether a field's annotation accepts a JSON number somewhere (int, float or Any)."""
    if annotation in (int, float, Any):
        return True
    return any(_takes_numbers(arg) for arg in get_args(annotation))


def numeric_paths(event: Mapping[str, Any]) -> list[Path]:
    """The paths of the fields that take a number (``start_timestamp``, ``vad_buffer_ms``,
    ``log_metric.value``, ``tool_calls[0].result``, ``metadata``…)."""
    return [path for path, annotation in field_slots(event) if _takes_numbers(annotation)]


def _parent(event: dict[str, Any], path: Path) -> Any:
    node: Any = event
    for part in path[:-1]:
        node = node[part]
    return node


def _with(event: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    """A deep copy of ``event`` with ``value`` at ``path`` (added if the field was absent)."""
    copy: dict[str, Any] = json.loads(json.dumps(event))
    _parent(copy, path)[path[-1]] = value
    return copy


def _without(event: dict[str, Any], path: Path) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(event))
    del _parent(copy, path)[path[-1]]
    return copy


def _at(event: Mapping[str, Any], path: Path) -> Any:
    node: Any = event
    for part in path:
        node = node[part]
    return node


def _present(event: Mapping[str, Any], path: Path) -> bool:
    node: Any = event
    for part in path:
        in_object = isinstance(part, str) and isinstance(node, dict) and part in node
        in_array = isinstance(part, int) and isinstance(node, list) and part < len(node)
        if not (in_object or in_array):
            return False
        node = node[part]
    return True


# --- valid events ------------------------------------------------------------------------------
#: a few call ids reused across events, so that one call gets a start, turns, an end, a late
#: turn, a second end… (the processor's per-call state); the rest are arbitrary text
CALL_POOL: Final = tuple(f"ac_fuzz_{i}" for i in range(8))
call_ids = st.sampled_from(CALL_POOL) | ids_text
agent_ids = st.sampled_from(["agent_fuzz_a", "agent_fuzz_b"]) | ids_text
transcript_items = spoken_turn() | system_item()


@st.composite
def current_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event of a known type in the current shape (``call`` / ``turn`` / ``analysis``)."""
    event_type = draw(st.sampled_from(sorted(KNOWN_EVENT_TYPES)))
    call_id, agent_id = draw(call_ids), draw(agent_ids)
    event: dict[str, Any] = {"type": event_type, "call_id": call_id, "agent_id": agent_id}
    if draw(st.booleans()):
        event["webhook_id"] = draw(st.sampled_from(["agent_webhook_fuzz"]) | text)
    if draw(st.booleans()):
        event["timestamp"] = draw(rfc3339())
    if event_type in CALL_EVENTS:
        call = draw(call_payloads())
        if draw(st.integers(0, 9)):  # mostly the same call; sometimes an id of its own
            call["id"], call["agent_id"] = call_id, agent_id
        if event_type == CALL_STARTED and draw(st.booleans()):
            call["status"] = "started"
        event["call"] = call
        if event_type in (CALL_COMPLETED, CALL_FAILED) and draw(st.booleans()):  # deprecated copies
            event["end_reason"] = draw(st.sampled_from(["agent_hangup", "inactivity"]) | text)
            event["body"] = call.get("transcript") or []
    elif event_type == CALL_TURN:
        event["turn"] = draw(transcript_items)
    else:
        event["analysis"] = draw(
            st.fixed_dictionaries({}, optional={"summary": st.none() | text, "x_score": json_values})
        )
    event.update(draw(unknown_fields))
    return event


@st.composite
def legacy_events(draw: st.DrawFn) -> dict[str, Any]:
    """The 2025 shape: ``request_id`` is the call id, ``body`` the transcript (the raw turn on
    ``call_turn``), no ``call`` object."""
    event_type = draw(st.sampled_from([CALL_STARTED, CALL_TURN, CALL_COMPLETED, CALL_FAILED]))
    event: dict[str, Any] = {
        "type": event_type,
        "request_id": draw(call_ids),
        "agent_id": draw(agent_ids),
        "webhook_id": "agent_webhook_fuzz",
        "timestamp": draw(rfc3339()),
    }
    if event_type == CALL_TURN:
        event["body"] = draw(transcript_items)
    elif event_type == CALL_STARTED:
        event["body"] = draw(st.sampled_from([[], None]))
    else:
        event["body"] = draw(st.lists(transcript_items, max_size=6))
        if draw(st.booleans()):
            event["end_reason"] = draw(st.sampled_from(["agent_hangup", "error"]) | text)
    return event


@st.composite
def unknown_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid envelope of a type otelbridge does not know (answered 200 ``ignored``)."""
    unknown = st.sampled_from(["Call_Started", "call_started ", "call.turn", "agent_updated", ""]) | text
    event: dict[str, Any] = {"type": draw(unknown.filter(lambda t: t not in KNOWN_EVENT_TYPES))}
    if draw(st.booleans()):
        event["call_id"] = draw(call_ids)
    event.update(draw(unknown_fields))
    return event


#: the sample deliveries of examples/webhooks.jsonl (current and legacy shapes, every type)
SAMPLES: Final = tuple(d.event for d in sample_deliveries())
samples = st.sampled_from(SAMPLES)
#: the events the near-valid and hostile bodies start from: half of them samples, which are
#: cheap to draw (a random call costs Hypothesis ~20-40 ms) and hold every type and shape
known_events = st.one_of(samples, samples, current_events(), legacy_events())
#: hostile bodies hardly depend on the event they spoil: mostly samples
hostile_bases = st.one_of(samples, samples, samples, current_events() | legacy_events())


def encode(event: Any, draw: st.DrawFn) -> bytes:
    """JSON text as a client may write it: ASCII-escaped or raw UTF-8, compact or spaced."""
    ensure_ascii = draw(st.booleans())
    separators = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    return json.dumps(event, ensure_ascii=ensure_ascii, separators=separators).encode()


VALID_KINDS: Final = ("current", "legacy", "sample", "unknown")


@st.composite
def valid_requests(draw: st.DrawFn, choice: str | None = None) -> Request:
    """Valid deliveries: accepted (known types, current or legacy shape) or ignored (unknown);
    ``choice``: one of :data:`VALID_KINDS` (drawn when None)."""
    choice = choice or draw(st.sampled_from(VALID_KINDS))
    if choice == "unknown":
        return Request("valid:unknown", encode(draw(unknown_events()), draw), OK, "ignored")
    events = {"current": current_events(), "legacy": legacy_events(), "sample": samples}
    event = draw(events[choice])
    return Request(f"valid:{choice}:{event['type']}", encode(event, draw), OK, "accepted")


# --- near-valid: one field wrong ---------------------------------------------------------------
#: a value of every JSON kind (whichever the field expects, most of these are the wrong kind)
wrong_values = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, -1, 1, 2**63, -(2**63) - 1, 2**64]),
    st.integers(),
    st.sampled_from([0.5, -0.0, 1e308, -1e-308, 5e-324]),
    st.sampled_from(["", "x", "1.5", "true", "null", "2026-11-20T09:01:23Z", "1e999999", "NaN"]),
    text,
    st.sampled_from([[], [None], [1, "a"], [{}], [[]]]),
    st.sampled_from([{}, {"a": 1}, {"role": "user"}, {"id": "x", "name": "y"}]),
    json_values,
)

#: raw JSON text put where a field's value goes: each is JSON that the json module cannot write
RAW_HUGE: Final = ("1e999999", "-1e999999", "1E400", "1e-999999", "-0", "0e0", "123456789e-999999")


#: the longest integer literal otelbridge's JSON parser reads (Python's int_max_str_digits)
MAX_INTEGER_DIGITS: Final = 4300


@st.composite
def huge_integer(draw: st.DrawFn) -> str:
    """An integer literal of 19 to 10,000 digits: past int64, past what a float can hold (309
    digits), up to the parser's limit and past it."""
    digits = draw(st.sampled_from([19, 20, 39, 309, 310, 1000, 4300, 4301, 10_000]) | st.integers(19, 4300))
    lead = draw(st.sampled_from("123456789"))
    return draw(st.sampled_from(["", "-"])) + lead + draw(st.sampled_from("0789")) * (digits - 1)


@st.composite
def deep_nesting(draw: st.DrawFn) -> str:
    """Arrays or objects nested ``depth`` deep, closed or not."""
    depth = draw(st.sampled_from([1, 50, 190, 199, 200, 201, 1000, 5000]) | st.integers(1, 6000))
    kind = draw(st.sampled_from(["array", "object", "mixed"]))
    if kind == "array":
        opened, closed = "[" * depth, "]" * depth
    elif kind == "object":
        opened, closed = '{"a":' * depth + "0", "}" * depth
    else:
        opened, closed = '[{"a":' * depth + "0", "}]" * depth
    return opened + (closed if draw(st.integers(0, 4)) else "")


@st.composite
def long_string(draw: st.DrawFn, max_bytes: int = MAX_BODY_BYTES // 2) -> str:
    """A JSON string literal of 10 KB up to ``max_bytes``, a short piece repeated (multi-byte
    characters, escapes and astral characters included)."""
    piece = draw(
        st.sampled_from(["a", "é", "👋", "\\n", '\\"', "\\u00e9", "\\ud83d\\udc4b", "ab c"])
        | st.text(st.characters(codec="utf-8", exclude_characters='"\\', min_codepoint=0x20), min_size=1)
    )
    size = draw(st.integers(10_000, max_bytes))
    repeat = max(1, size // max(1, len(piece.encode())))
    return '"' + piece * repeat + '"'


RAW_SURROGATES: Final = (
    '"\\ud800"',
    '"\\udfff"',
    '"a\\udc00b"',
    '"\\ud83d"',
    '"\\ude00\\ud83d"',
    '"\\uDBFF x"',
)
RAW_NAN: Final = ("NaN", "-NaN", "Infinity", "-Infinity", "+Infinity", "nan", "inf", "-inf", "+1")

#: the marker a value is replaced with before its raw text goes in its place
_SLOT: Final = "@@otelbridge-fuzz-slot@@"
_SLOT_JSON: Final = json.dumps(_SLOT)


def raw_at(event: dict[str, Any], path: Path, raw: str) -> bytes:
    """``event`` as JSON text with the raw JSON text ``raw`` as the value at ``path``."""
    marked = json.dumps(_with(event, path, _SLOT), ensure_ascii=False)
    assert marked.count(_SLOT_JSON) == 1
    return marked.replace(_SLOT_JSON, raw).encode("utf-8", errors="surrogatepass")


#: the free-text fields where a long string is still valid
TEXT_FIELDS: Final = frozenset({"agent_name", "text", "summary", "error_message", "x_long", "event"})


NEAR_VALID_KINDS: Final = (
    "wrong_type",
    "null",
    "missing",
    "huge",
    "nan",
    "surrogate",
    "deep",
    "long",
    "long_text",
)


@st.composite
def near_valid_requests(draw: st.DrawFn, how: str | None = None) -> Request:
    """A valid event with one field changed: a value of another kind, null, removed, or raw
    text the json module cannot write (huge numbers, NaN, lone surrogates, deep nesting, very
    long strings); ``how``: one of :data:`NEAR_VALID_KINDS` (drawn when None)."""
    event = draw(known_events)
    paths = list(field_paths(event))
    present = [p for p in paths if _present(event, p)]
    how = how or draw(st.sampled_from(NEAR_VALID_KINDS))
    if how == "missing":
        path = draw(st.sampled_from(present))
        return Request(
            f"near:missing:{_name(path)}", encode(_without(event, path), draw), OK_OR_INVALID, None, path
        )
    if how == "long_text":  # a very long free text: valid, below the body limit
        candidates = [p for p in paths if isinstance(p[-1], str) and p[-1] in TEXT_FIELDS]
        path = draw(st.sampled_from(candidates)) if candidates else ("x_long",)
        if not candidates:
            event = {**event, "x_long": ""}
        long_text = draw(long_string())
        return Request(f"near:long_text:{_name(path)}", raw_at(event, path, long_text), OK, "accepted", path)
    path = draw(st.sampled_from(paths))
    if how in ("wrong_type", "null"):
        value = None if how == "null" else draw(wrong_values)
        body = encode(_with(event, path, value), draw)
        return Request(f"near:{how}:{_name(path)}", body, OK_OR_INVALID, None, path)
    if how == "huge":  # mostly where a number is expected, or where anything goes (metadata…)
        numeric = numeric_paths(event)
        elsewhere = draw(st.integers(0, 4)) == 0
        if numeric and not elsewhere:
            path = draw(st.sampled_from(numeric))
        raw = draw(st.sampled_from(RAW_HUGE) | huge_integer())
        allowed = BAD_REQUEST if len(raw.lstrip("-")) > MAX_INTEGER_DIGITS else ANY_REFUSAL
        return Request(f"near:huge:{_name(path)}", raw_at(event, path, raw), allowed, None, path)
    if how == "nan":
        raw = draw(st.sampled_from(RAW_NAN))
        return Request(f"near:nan:{_name(path)}", raw_at(event, path, raw), BAD_REQUEST)
    if how == "surrogate":
        raw = draw(st.sampled_from(RAW_SURROGATES))
        return Request(f"near:surrogate:{_name(path)}", raw_at(event, path, raw), BAD_REQUEST)
    if how == "deep":
        raw = draw(deep_nesting())
        return Request(f"near:deep:{_name(path)}", raw_at(event, path, raw), ANY_REFUSAL, None, path)
    raw = draw(long_string())  # "long": anywhere, so possibly the wrong type
    return Request(f"near:long:{_name(path)}", raw_at(event, path, raw), OK_OR_INVALID, None, path)


def _name(path: Path) -> str:
    return ".".join(str(p) for p in path)


# --- hostile bytes -----------------------------------------------------------------------------
INVALID_UTF8: Final = (
    b"\xff",
    b"\xfe\xff",
    b"\xc3\x28",  # a lead byte without its continuation
    b"\x80",  # a lone continuation byte
    b"\xc0\xaf",  # overlong "/"
    b"\xed\xa0\x80",  # a surrogate (U+D800) encoded as UTF-8
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xe2\x82",  # truncated
)


def _split_points(body: bytes) -> st.SearchStrategy[int]:
    return st.integers(0, len(body))


HOSTILE_KINDS: Final = (
    "invalid_utf8",
    "duplicate_keys",
    "truncated",
    "not_object",
    "deep",
    "garbage",
    "empty",
    "bom",
    "trailing",
    "over_limit",
    "at_limit",
)


@st.composite
def hostile_requests(draw: st.DrawFn, how: str | None = None) -> Request:
    """Whole bodies no client should send: not UTF-8, not JSON, not an object, duplicate keys,
    a byte-order mark, truncated, nested thousands deep, over the size limit or exactly at it;
    ``how``: one of :data:`HOSTILE_KINDS` (drawn when None)."""
    how = how or draw(st.sampled_from(HOSTILE_KINDS))
    event: dict[str, Any] = {} if how in ("deep", "garbage", "empty") else draw(hostile_bases)
    body = json.dumps(event, ensure_ascii=draw(st.booleans())).encode()
    if how == "invalid_utf8":
        at = draw(_split_points(body))
        bad = draw(st.sampled_from(INVALID_UTF8))
        return Request("hostile:invalid_utf8", body[:at] + bad + body[at:], BAD_REQUEST)
    if how == "duplicate_keys":
        # a key repeated in the top-level object or in a nested one (``call``, ``turn``, a
        # transcript item…), before or after the first: the parser keeps the last
        objects = [p for p in field_paths(event) if _present(event, p) and isinstance(_at(event, p), dict)]
        path = draw(st.sampled_from([(), *objects]))
        target: dict[str, Any] = _at(event, path)
        key = draw(
            st.sampled_from(sorted(target) or ["type"]) | st.sampled_from(["type", "call_id", "role", "id"])
        )
        repeats = draw(
            st.lists(wrong_values | st.sampled_from(sorted(KNOWN_EVENT_TYPES)), min_size=1, max_size=3)
        )
        members = [f"{json.dumps(key)}:{json.dumps(v)}" for v in repeats]
        first = [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in target.items()]
        ordered = [*first, *members] if draw(st.booleans()) else [*members, *first]
        spliced = "{" + ",".join(ordered) + "}"
        raw = spliced.encode() if not path else raw_at(event, path, spliced)
        return Request("hostile:duplicate_keys", raw, OK_OR_INVALID)
    if how == "truncated":
        at = draw(st.integers(0, len(body) - 1))
        return Request("hostile:truncated", body[:at], BAD_REQUEST)
    if how == "not_object":
        value = draw(
            st.lists(st.just(event), max_size=2)
            | json_values.filter(lambda v: not isinstance(v, dict))
            | st.sampled_from([[], [None], "call_started", 0, None, True])
        )
        return Request("hostile:not_object", json.dumps(value).encode(), BAD_REQUEST)
    if how == "deep":
        nested = draw(deep_nesting())
        # an object is an object however deep (422: no type) unless the parser gives up (400)
        allowed = frozenset({400, 422}) if nested.startswith("{") else BAD_REQUEST
        return Request("hostile:deep", nested.encode(), allowed)
    if how == "garbage":
        raw = draw(st.binary(max_size=64) | st.sampled_from([b"{", b"}", b"{}", b'{"type"}', b"\x00", b"[}"]))
        return Request("hostile:garbage", raw, ANY_REFUSAL)  # random bytes may spell an object
    if how == "empty":
        return Request("hostile:empty", draw(st.sampled_from([b"", b" ", b"\r\n", b"\t \n"])), BAD_REQUEST)
    if how == "bom":
        return Request("hostile:bom", b"\xef\xbb\xbf" + body, BAD_REQUEST)
    if how == "trailing":
        tail = draw(st.sampled_from([b"x", b"{}", b",", b"\x00", b" {", b"]"]))
        return Request("hostile:trailing", body + tail, BAD_REQUEST)
    # padded with JSON whitespace to exactly the limit (accepted) or past it (413)
    pad = MAX_BODY_BYTES - len(body)
    if how == "at_limit":
        return Request("hostile:at_limit", body + b" " * pad, OK, "accepted")
    over = draw(st.sampled_from([1, 2, 4096]))
    return Request("hostile:over_limit", body + b" " * (pad + over), frozenset({413}))


# --- headers -----------------------------------------------------------------------------------
JSON_CONTENT_TYPES: Final = (
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON",
    'application/json ; Charset="UTF-8"',
    "application/cloudevents+json",
    "application/json; charset=utf8; x=y",
)
OTHER_CONTENT_TYPES: Final = (
    "text/plain",
    "application/x-www-form-urlencoded",
    "",
    "application/jsonx",
    "application/json; charset=latin-1",
    "multipart/form-data; boundary=x",
    "json",
)


@st.composite
def header_requests(draw: st.DrawFn) -> Request:
    """Any of the bodies above, with or without the right secret, with a JSON Content-Type or
    another (or none), in one piece or chunked (no Content-Length)."""
    base = draw(valid_requests() | near_valid_requests() | hostile_requests())
    secret: Secret = draw(st.sampled_from(["right", "right", "wrong", "missing"]))
    content_type = draw(st.sampled_from(JSON_CONTENT_TYPES) | st.sampled_from([*OTHER_CONTENT_TYPES, None]))
    chunked = draw(st.booleans())
    return Request(
        f"headers:{secret}:{content_type}:{'chunked' if chunked else 'length'}:{base.kind}",
        base.body,
        base.allowed,
        base.answer,
        base.field,
        content_type,
        secret,
        chunked,
    )


def expected_statuses(request: Request) -> tuple[frozenset[int], Answer | None]:
    """The statuses (and the 200 answer) README allows for ``request``, in the order the
    receiver checks: the secret (401), the Content-Type (415), the size (413), then the body."""
    if request.secret != "right":
        return frozenset({401}), None
    if request.content_type not in JSON_CONTENT_TYPES:
        return frozenset({415}), None
    if len(request.body) > MAX_BODY_BYTES:
        return frozenset({413}), None
    return request.allowed, request.answer
