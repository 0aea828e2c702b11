"""A stand-in for the Cartesia agents API on loopback, for tests and benchmarks::

    with CartesiaStandIn(api_key="sk_test_key_123") as api:
        api.add_calls(make_call("agent_1", i) for i in range(250))
        api.fail_next(1, status=429, retry_after=2)
        ...  # point a CartesiaClient at api.url

A Starlette app served by :class:`~tests.support.asgi_server.UvicornThread`. What it keeps
of the documented API (Cartesia-Version 2025-11-04 OpenAPI, the List Calls page, the field
notes), and the choices made where the documents are silent:

* **Auth** ``Authorization: Bearer <key>``; missing or wrong → 401. Calls of an agent in
  ``forbidden_agents`` → 403. Auth is checked before the version.
* **Version** ``Cartesia-Version`` is required (missing → 400) and must be a known value
  (:data:`KNOWN_VERSIONS`; else 400).
* **Errors** 2026-03-01 answers JSON ``{error_code, title, message, request_id}``; older
  versions answer ``text/plain`` (the message alone). A missing or unknown version gets JSON
  (the server cannot know what the client reads). ``plain_text_errors=True`` forces text.
* **GET /agents/calls** ``agent_id`` required (400); ``limit`` an integer 1..100 (400 else),
  **default 10** (the OpenAPI states that default for the sibling ``/agents/metrics``; List
  Calls states none); ``expand`` may only be ``transcript`` (400 else) and without it the
  ``transcript`` key is omitted. Newest first by ``start_time``, ties by id (descending);
  a call whose ``start_time`` is null (or unparsable) sorts as newest. ``starting_after=ID``
  → calls older than ID; ``ending_before=ID`` → the calls just newer than ID (still newest
  first); both at once → 400. ``next_page`` is the id of the page's last call when older calls remain (with
  ``ending_before``: the page's first call when newer calls remain, to pass back as
  ``ending_before``), else null. An agent with no calls gets an empty page.
* **Unknown cursor** (a ``starting_after``/``ending_before`` id that is not one of the agent's
  calls, e.g. a call removed while a client pages): the documents do not say. Cursor APIs of
  this style (Stripe's) answer 400 ``No such object``; an SQL keyset query would return
  nothing. ``unknown_cursor="error"`` (default) answers 400 ``invalid_request``,
  ``unknown_cursor="empty"`` an empty page with ``next_page`` null.
* **GET /agents/calls/{id}** the call with its transcript; 404 if unknown.
* **GET /agents** ``{"summaries": [AgentSummary…]}``, no paging; every agent that has a call
  is listed (plus those added with :meth:`CartesiaStandIn.add_agent`).
* **GET /agents/metrics/results** ``{data, has_more, next_page}`` of MetricResult objects
  (camelCase), newest ``createdAt`` first; filters ``agent_id``, ``call_id``, ``metric_id``,
  ``deployment_id``, ``start_date`` (``createdAt >=``), ``end_date`` (``createdAt <=``);
  paging ``limit`` (1..100, default 10), ``starting_after``, ``ending_before``.

Faults: :meth:`~CartesiaStandIn.fail_next` (429/5xx, optional ``Retry-After``),
:meth:`~CartesiaStandIn.hang_next` (answer late, for client timeouts),
:meth:`~CartesiaStandIn.answer_next` (any status and raw body, e.g. malformed JSON). They
apply in the order queued, before auth, to requests whose path matches (``path=None``: any).

Speed: each call is serialized once when added (with and without its transcript; orjson,
same bytes as json); a page is a bisect on the agent's sorted keys and a
``b",".join`` of ready bytes, so paging 10,000 calls of 20 turns (~113 MB of JSON) costs the
stand-in about 0.5 s in all; the client's ``json.loads`` is the real cost. Calls are kept only
as bytes, so :meth:`CartesiaStandIn.add_synthetic_calls` (``api.add_synthetic_calls("agent",
10_000)``, about 3 s) never holds 10,000 transcripts as Python objects.
"""

from __future__ import annotations

import bisect
import collections
import datetime as dt
import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, Self
from urllib.parse import unquote

import anyio
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from otelbridge.cartesia.timestamps import format_rfc3339_ns, parse_rfc3339_ns
from tests.support.asgi_server import UvicornThread

__all__ = [
    "DEFAULT_API_KEY",
    "JSON_ERROR_VERSION",
    "KNOWN_VERSIONS",
    "CartesiaStandIn",
    "PageServed",
    "RecordedRequest",
    "make_call",
    "make_metric_result",
]

DEFAULT_API_KEY: Final = "sk_car_standin_0123456789abcdef"
JSON_ERROR_VERSION: Final = "2026-03-01"
KNOWN_VERSIONS: Final = frozenset(
    {"2024-06-10", "2024-11-13", "2025-04-16", "2025-11-04", JSON_ERROR_VERSION}
)
MAX_LIMIT: Final = 100
DEFAULT_LIMIT: Final = 10
#: Sort key of a call without a start time: newer than any real one.
_NO_START: Final = 2**63
_NS: Final = 1_000_000_000
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_BASE_START_NS: Final = parse_rfc3339_ns("2026-03-02T09:00:00Z")
_ERROR_TITLES: Final[Mapping[int, tuple[str, str]]] = {
    400: ("invalid_request", "Invalid request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    408: ("request_timeout", "Request timeout"),
    429: ("rate_limited", "Too many requests"),
    500: ("internal_error", "Internal server error"),
    502: ("bad_gateway", "Bad gateway"),
    503: ("service_unavailable", "Service unavailable"),
    504: ("gateway_timeout", "Gateway timeout"),
}
_JSON: Final = "application/json"
_TEXT: Final = "text/plain; charset=utf-8"

UnknownCursor = Literal["empty", "error"]


def _dumps(value: object) -> bytes:
    """Compact UTF-8 JSON. orjson makes the same bytes as the standard library five times
    faster (it matters when 10,000 calls are added); json takes what orjson refuses."""
    try:
        encoded: bytes = orjson.dumps(value)
    except TypeError:  # e.g. non-string keys or huge integers: let json decide
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    return encoded


# --- synthetic data -------------------------------------------------------------------------
_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_USER_LINES: Final = (
    "Hi, I'm calling about my order.",
    "It's order number four five one two.",
    "Can you move the delivery to Thursday?",
    "Yes, that works for me.",
    "What's the weather like there tomorrow?",
    "No, that's all, thanks!",
    "Sorry, could you repeat that?",
    "-",
)
_ASSISTANT_LINES: Final = (
    "Hi there! I'm Savannah. Who do I have the pleasure of speaking with today?",
    "Let me look that up for you.",
    "Your order shipped yesterday and should arrive on Thursday.",
    "I've moved the delivery to Thursday afternoon.",
    "Is there anything else I can help you with?",
    "Thanks for calling, goodbye!",
)
_TOOLS: Final = ("lookup_order", "reschedule_delivery", "get_weather", "transfer_call")
_END_REASONS: Final = ("agent_hangup", "client_hangup", "agent_hangup", "inactivity")
_REGIONS: Final = ("US", "EU", "APAC")


def _token(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(_ALPHABET, k=length))


def _seconds(value: float) -> float:
    """Float noise as Cartesia's turn times carry it (``10.387875000000001``)."""
    return value + 1e-15 * value


def _chunks(text: str, start: float, step: float) -> list[dict[str, Any]]:
    words = text.split()
    return [{"text": w + " ", "start_timestamp": round(start + i * step, 6)} for i, w in enumerate(words)]


def make_call(
    agent_id: str,
    index: int,
    *,
    turns: int = 20,
    start: dt.datetime | None = None,
    status: str = "completed",
    agent_name: str | None = None,
    tool_every: int = 7,
    **fields: Any,
) -> dict[str, Any]:
    """A synthetic call in the 2026-03-01 shape, the same for the same ``(agent_id, index)``.

    ``start`` defaults to 2026-03-02T09:00Z + ``index`` minutes (+ a nanosecond fraction),
    so a higher index is a newer call. ``turns`` spoken turns alternate assistant/user (the
    agent greets first), with text, ``text_chunks``, ``tts_ttfb``/``stt_ttfb``,
    ``vad_buffer_ms``; every ``tool_every``-th assistant turn calls a tool (0: never); a
    ``system`` item with a ``log_metric`` follows the first assistant turn and one with a
    ``log_event`` the second. A running status (``created``, ``started``, ``active``) has no
    end time, end reason or summary; ``failed`` gets ``end_reason="error"`` and an
    ``error_message``. ``fields`` override or add top-level fields last.
    """
    rng = random.Random(f"{agent_id}\x00{index}")  # deterministic test data
    call_id = "ac_sid_" + _token(rng, 22)
    if start is None:
        start_ns = _BASE_START_NS + index * 60 * _NS + rng.randrange(_NS)
    else:
        if start.tzinfo is None:
            start = start.replace(tzinfo=dt.UTC)
        start_ns = (start - _EPOCH) // dt.timedelta(microseconds=1) * 1000
    transcript: list[dict[str, Any]] = []
    t = round(0.2 + rng.random() * 0.3, 6)
    assistant_turns = 0
    for n in range(turns):
        role = "assistant" if n % 2 == 0 else "user"
        lines = _ASSISTANT_LINES if role == "assistant" else _USER_LINES
        text = lines[rng.randrange(len(lines))]
        words = max(1, len(text.split()))
        step = 0.12 + rng.random() * 0.1
        duration = words * step + 0.3
        turn: dict[str, Any] = {
            "role": role,
            "text": text,
            "start_timestamp": _seconds(t),
            "end_timestamp": _seconds(t + duration),
            "text_chunks": _chunks(text if text != "-" else "¿Hablas español?", t, step),
        }
        if role == "assistant":
            turn["tts_ttfb"] = round(0.15 + rng.random() * 0.25, 6)
            interrupted = rng.random() < 0.15
            turn["end_reason"] = "interrupted" if interrupted else "tts_completed"
            if interrupted:
                turn["was_interrupted"] = True
            if tool_every and assistant_turns % tool_every == tool_every - 1:
                turn["tool_calls"] = [
                    {
                        "id": "call_" + _token(rng, 12),
                        "name": _TOOLS[assistant_turns // tool_every % len(_TOOLS)],
                        "arguments": {"order_id": str(40000 + rng.randrange(10000))},
                        "result": "ok",
                    }
                ]
            assistant_turns += 1
        else:
            turn["stt_ttfb"] = round(0.05 + rng.random() * 0.15, 6)
            turn["vad_buffer_ms"] = 200
        transcript.append(turn)
        t += duration + 0.2 + rng.random() * 0.6
        if n == 0:
            at = _seconds(t - 0.1)
            metric = {
                "name": "llm_first_chunk_ms",
                "value": round(300 + rng.random() * 600, 3),
                "timestamp": at,
            }
            transcript.append(
                {"role": "system", "start_timestamp": at, "end_timestamp": at, "log_metric": metric}
            )
        elif n == 2:
            at = _seconds(t - 0.1)
            event = {"event": "order_lookup", "metadata": {"source": "crm", "hit": "true"}, "timestamp": at}
            transcript.append(
                {"role": "system", "start_timestamp": at, "end_timestamp": at, "log_event": event}
            )
    if turns and status == "completed" and transcript[-1]["role"] == "assistant":
        transcript[-1]["end_reason"] = "call_ended"

    running = status in ("created", "started", "active")
    call: dict[str, Any] = {
        "id": call_id,
        "agent_id": agent_id,
        "agent_name": agent_name if agent_name is not None else f"{agent_id}-name",
        "status": status,
        "start_time": format_rfc3339_ns(start_ns),
        "end_time": None if running else format_rfc3339_ns(start_ns + round((t + 0.5) * _NS)),
        "end_reason": None if running else ("error" if status == "failed" else _END_REASONS[index % 4]),
        "transcript": transcript,
        "telephony_params": {
            "to": f"+1415555{rng.randrange(10000):04d}",
            "from": f"+1628555{rng.randrange(10000):04d}",
            "call_sid": "CA" + _token(rng, 32),
            "direction": "inbound",
            "connection_type": "pstn",
        },
        "telephony_account_type": "cartesia",
        "summary": None if running else "The caller asked about an order; the agent answered.",
        "error_message": "LLM provider returned 500" if status == "failed" else None,
        "deployment_id": f"dep_{agent_id[-6:]}",
        "deployment_version_id": f"depver_{agent_id[-4:]}1",
        "deployment_region": _REGIONS[index % 3],
        "metadata": {"customer_tier": ("free", "pro")[index % 2]},
        "zdr_enabled": False,
        "redacted_at": None,
    }
    call.update(fields)
    return call


def make_metric_result(
    call: Mapping[str, Any],
    metric_name: str = "customer_satisfied",
    *,
    index: int = 0,
    created_at: str | None = None,
    value: Any = None,
    status: str = "completed",
    **fields: Any,
) -> dict[str, Any]:
    """A MetricResult (camelCase, as the OpenAPI has it) for ``call``, deterministic per
    (call id, metric name, index). ``created_at`` defaults to one minute after the call ends."""
    rng = random.Random(f"{call['id']}\x00{metric_name}\x00{index}")
    if created_at is None:
        ends = call.get("end_time") or call.get("start_time")
        base = parse_rfc3339_ns(ends) if isinstance(ends, str) else _BASE_START_NS
        created_at = format_rfc3339_ns(base + 60 * _NS + index * _NS)
    if value is None:
        value = rng.random() < 0.8
    result: dict[str, Any] = {
        "id": "mr_" + _token(rng, 20),
        "metricId": "metric_" + _token(random.Random(metric_name), 12),
        "metricName": metric_name,
        "summary": call.get("summary") or "",
        "transcript": None,
        "agentId": call["agent_id"],
        "callId": call["id"],
        "deploymentId": call.get("deployment_id") or "",
        "result": json.dumps(value),
        "jsonResult": {"value": value},
        "value": value,
        "status": status,
        "runId": None,
        "createdAt": created_at,
    }
    result.update(fields)
    return result


# --- records --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the stand-in saw it (header names lower-case; last value of a repeated
    query parameter)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class PageServed:
    """Passed to :meth:`CartesiaStandIn.on_page` callbacks after each List Calls page."""

    number: int  # 1 for the first list page served since start/reset
    agent_id: str
    ids: list[str]
    next_page: str | None
    query: dict[str, str]


@dataclass(slots=True)
class _Fault:
    kind: Literal["fail", "hang", "answer"]
    remaining: int
    path: str | None
    status: int = 503
    retry_after: str | None = None
    seconds: float = 0.0
    body: bytes = b""
    content_type: str = _JSON


@dataclass(slots=True)
class _Stored:
    id: str
    agent_id: str
    key: tuple[int, str]
    full: bytes  # with transcript
    bare: bytes  # without the transcript key


class _Reject(Exception):
    """An error answer, raised inside the app and turned into the version's error format."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def _call_key(call: Mapping[str, Any]) -> tuple[int, str]:
    """Sort key: (start time in ns, id). A null or unparsable start time (a test may serve
    bad data on purpose) sorts as newest."""
    start = call.get("start_time")
    try:
        start_ns = parse_rfc3339_ns(start) if isinstance(start, str) else _NO_START
    except ValueError:
        start_ns = _NO_START
    return (start_ns, str(call["id"]))


def _parse_date(name: str, value: str) -> int:
    """An ISO 8601 date/time query parameter to Unix ns (RFC 3339 exactly, to the ns; other
    ISO forms, e.g. a date or a naive time taken as UTC, through ``fromisoformat``)."""
    try:
        return parse_rfc3339_ns(value)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise _Reject(400, f"{name}: invalid ISO 8601 date/time {value!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return (when - _EPOCH) // dt.timedelta(microseconds=1) * 1000


# --- the stand-in ---------------------------------------------------------------------------
class CartesiaStandIn:
    """The stand-in API; see the module docstring. Thread-safe: the server thread and the
    test thread share state under one lock. Use as a context manager (or ``start``/``stop``);
    :meth:`reset` clears calls, faults and records between tests sharing one server."""

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        unknown_cursor: UnknownCursor = "error",
        forbidden_agents: Iterable[str] = (),
        plain_text_errors: bool = False,
        default_limit: int = DEFAULT_LIMIT,
    ) -> None:
        self._defaults = (
            api_key,
            unknown_cursor,
            frozenset(forbidden_agents),
            plain_text_errors,
            default_limit,
        )
        self._lock = threading.RLock()
        self._server: UvicornThread | None = None
        self._closing = False
        self._generation = 0
        self.app = Starlette(
            routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])]
        )
        self._init_state()

    def _init_state(self) -> None:
        (self.api_key, self.unknown_cursor, forbidden, self.plain_text_errors, self.default_limit) = (
            self._defaults
        )
        self.forbidden_agents: set[str] = set(forbidden)
        self._calls: dict[str, _Stored] = {}
        self._by_agent: dict[str, list[tuple[int, str]]] = {}
        self._agents: dict[str, dict[str, Any]] = {}
        self._results: list[dict[str, Any]] = []
        self._faults: list[_Fault] = []
        self._page_callbacks: list[Callable[[PageServed], None]] = []
        self._pages_served = 0
        self._request_serial = 0
        self.requests: list[RecordedRequest] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.callback_errors: list[BaseException] = []

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> Self:
        self._closing = False
        self._server = UvicornThread(self.app).start()
        return self

    def stop(self) -> None:
        self._closing = True  # releases handlers hanging in hang_next
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc is None and self.callback_errors:
            raise RuntimeError("an on_page callback failed") from self.callback_errors[0]

    def reset(self) -> None:
        """Back to the state after construction (the server keeps running)."""
        with self._lock:
            self._generation += 1
            self._init_state()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("CartesiaStandIn not started")
        return self._server.url

    # --- data -----------------------------------------------------------------------------
    def _store(self, call: Mapping[str, Any]) -> _Stored:
        if not isinstance(call.get("id"), str) or not isinstance(call.get("agent_id"), str):
            raise ValueError("a call needs string 'id' and 'agent_id'")
        bare = {k: v for k, v in call.items() if k != "transcript"}
        return _Stored(call["id"], call["agent_id"], _call_key(call), _dumps(call), _dumps(bare))

    def _register_agent(self, agent_id: str, name: object) -> None:
        if agent_id not in self._agents:
            self.add_agent(agent_id, name if isinstance(name, str) else agent_id)

    def add_call(self, call: Mapping[str, Any]) -> str:
        """Add one call (serialized now: later changes to ``call`` are not seen). Returns its id."""
        stored = self._store(call)
        with self._lock:
            if stored.id in self._calls:
                raise ValueError(f"call {stored.id!r} already exists (use update_call)")
            self._calls[stored.id] = stored
            bisect.insort(self._by_agent.setdefault(stored.agent_id, []), stored.key)
            self._register_agent(stored.agent_id, call.get("agent_name"))
        return stored.id

    def add_calls(self, calls: Iterable[Mapping[str, Any]]) -> list[str]:
        """Add many calls at once (one sort per agent). Returns their ids."""
        batch = [(self._store(c), c.get("agent_name")) for c in calls]
        with self._lock:
            touched: set[str] = set()
            for stored, name in batch:
                if stored.id in self._calls:
                    raise ValueError(f"call {stored.id!r} already exists (use update_call)")
                self._calls[stored.id] = stored
                self._by_agent.setdefault(stored.agent_id, []).append(stored.key)
                self._register_agent(stored.agent_id, name)
                touched.add(stored.agent_id)
            for agent_id in touched:
                self._by_agent[agent_id].sort()
        return [stored.id for stored, _ in batch]

    def add_synthetic_calls(
        self, agent_id: str, count: int, *, first_index: int = 0, **kwargs: Any
    ) -> list[str]:
        """Add ``make_call(agent_id, i, **kwargs)`` for ``count`` indexes from ``first_index``."""
        return self.add_calls(
            make_call(agent_id, i, **kwargs) for i in range(first_index, first_index + count)
        )

    def get(self, call_id: str) -> dict[str, Any]:
        """The stored call (a fresh copy)."""
        with self._lock:
            full = self._calls[call_id].full
        result: dict[str, Any] = json.loads(full)
        return result

    def update_call(self, call_id: str, **fields: Any) -> dict[str, Any]:
        """Change fields of a stored call (e.g. ``status="completed", end_time=…``); a changed
        ``start_time`` moves it in the order. Returns the new call. KeyError if unknown."""
        with self._lock:
            old = self._calls[call_id]
            call = json.loads(old.full)
            call.update(fields)
            call["id"] = call_id
            new = self._store(call)
            self._unindex(old)
            self._calls[call_id] = new
            bisect.insort(self._by_agent.setdefault(new.agent_id, []), new.key)
            self._register_agent(new.agent_id, call.get("agent_name"))
        result: dict[str, Any] = call
        return result

    def remove_call(self, call_id: str) -> None:
        """Delete a call (KeyError if unknown): later cursors naming it are unknown cursors."""
        with self._lock:
            self._unindex(self._calls.pop(call_id))

    def _unindex(self, stored: _Stored) -> None:
        keys = self._by_agent[stored.agent_id]
        del keys[bisect.bisect_left(keys, stored.key)]

    def call_ids(self, agent_id: str) -> list[str]:
        """The agent's call ids, newest first (the List Calls order)."""
        with self._lock:
            return [key[1] for key in reversed(self._by_agent.get(agent_id, []))]

    def add_agent(self, agent_id: str, name: str | None = None, **fields: Any) -> dict[str, Any]:
        """Register an AgentSummary for ``GET /agents`` (calls register their agent too)."""
        summary: dict[str, Any] = {
            "id": agent_id,
            "name": name or agent_id,
            "description": None,
            "created_at": "2026-01-05T10:00:00Z",
            "updated_at": "2026-02-01T10:00:00Z",
            "tts_voice": "a0e99841-438c-4a64-b679-ae501e7d6091",
            "tts_language": "en",
            "webhook_id": None,
            "deleted_at": None,
            "git_repository": None,
            "git_deploy_branch": None,
            "phone_numbers": [],
            "has_text_to_agent_run": False,
            "deployment_count": 1,
        }
        summary.update(fields)
        with self._lock:
            self._agents[agent_id] = summary
        return summary

    def add_metric_results(self, results: Iterable[Mapping[str, Any]]) -> None:
        """Add MetricResult objects (see :func:`make_metric_result`)."""
        with self._lock:
            for result in results:
                self._results.append(dict(result))
            self._results.sort(key=lambda r: (parse_rfc3339_ns(r["createdAt"]), r["id"]), reverse=True)

    def on_page(self, callback: Callable[[PageServed], None]) -> None:
        """Call ``callback`` (in the server thread) after each List Calls page is built, before
        it is sent. It may add, update or remove calls. Its exceptions are kept in
        ``callback_errors`` and raised from ``__exit__``."""
        with self._lock:
            self._page_callbacks.append(callback)

    # --- faults ---------------------------------------------------------------------------
    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 503,
        retry_after: float | str | None = None,
        path: str | None = None,
    ) -> None:
        """The next ``n`` requests (to ``path``, if given) answer ``status`` (an error body in the
        version's format) and ``Retry-After: retry_after`` if given."""
        header = (
            None
            if retry_after is None
            else retry_after
            if isinstance(retry_after, str)
            else f"{retry_after:g}"
        )
        with self._lock:
            self._faults.append(_Fault("fail", n, path, status=status, retry_after=header))

    def hang_next(self, n: int = 1, seconds: float = 1.0, *, path: str | None = None) -> None:
        """The next ``n`` requests wait ``seconds`` before being answered normally (the wait
        ends early on ``stop``/``reset``)."""
        with self._lock:
            self._faults.append(_Fault("hang", n, path, seconds=seconds))

    def answer_next(
        self,
        n: int = 1,
        *,
        body: bytes | str,
        status: int = 200,
        content_type: str = _JSON,
        path: str | None = None,
    ) -> None:
        """The next ``n`` requests get exactly this answer (malformed JSON, wrong shapes …)."""
        raw = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._faults.append(_Fault("answer", n, path, status=status, body=raw, content_type=content_type))

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and (fault.path is None or fault.path == path):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def count(self, path: str) -> int:
        """Requests seen for ``path`` (exact, e.g. ``/agents/calls``)."""
        with self._lock:
            return self.counts[path]

    # --- the app --------------------------------------------------------------------------
    async def _handle(self, request: Request) -> Response:
        path = request.url.path
        query = dict(request.query_params)
        version = request.headers.get("cartesia-version")
        with self._lock:
            self._request_serial += 1
            request_id = f"req_{self._request_serial:08d}"
            generation = self._generation
            self.requests.append(
                RecordedRequest(
                    request.method, path, query, {k.lower(): v for k, v in request.headers.items()}
                )
            )
            self.counts[path] += 1
        try:
            fault = self._take_fault(path)
            if fault is not None and fault.kind == "hang":  # one fault per request: then answer normally
                await self._hang(fault.seconds, generation)
            elif fault is not None and fault.kind == "answer":
                return Response(fault.body, status_code=fault.status, media_type=fault.content_type)
            elif fault is not None:
                headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
                raise _Reject(fault.status, f"injected failure ({fault.status})", headers)
            self._check_auth(request)
            if not version:
                raise _Reject(400, "the Cartesia-Version header is required")
            if version not in KNOWN_VERSIONS:
                raise _Reject(400, f"unsupported Cartesia-Version {version!r}")
            if request.method != "GET":
                raise _Reject(405, f"{request.method} is not supported here")
            raw_path = request.scope.get("raw_path") or path.encode()
            return self._route(path, raw_path.decode("latin-1"), query)
        except _Reject as reject:
            return self._error(reject, version, request_id)

    async def _hang(self, seconds: float, generation: int) -> None:
        deadline = time.monotonic() + seconds
        while not self._closing and generation == self._generation:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await anyio.sleep(min(left, 0.02))

    def _check_auth(self, request: Request) -> None:
        header = request.headers.get("authorization")
        if header is None:
            raise _Reject(401, "missing Authorization header (expected 'Bearer <api key>')")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Reject(401, "malformed Authorization header (expected 'Bearer <api key>')")
        if token.strip() != self.api_key:
            raise _Reject(401, "invalid API key")

    def _error(self, reject: _Reject, version: str | None, request_id: str) -> Response:
        plain = self.plain_text_errors or (version in KNOWN_VERSIONS and version != JSON_ERROR_VERSION)
        if plain:
            return Response(
                reject.message, status_code=reject.status, media_type=_TEXT, headers=reject.headers
            )
        code, title = _ERROR_TITLES.get(reject.status, ("error", "Error"))
        body = {"error_code": code, "title": title, "message": reject.message, "request_id": request_id}
        return Response(_dumps(body), status_code=reject.status, media_type=_JSON, headers=reject.headers)

    def _route(self, path: str, raw_path: str, query: dict[str, str]) -> Response:
        if path == "/agents/calls":
            return self._list_calls(query)
        call_id = raw_path.removeprefix("/agents/calls/")
        if call_id != raw_path and call_id and "/" not in call_id:  # one segment; %2F belongs to the id
            return self._get_call(unquote(call_id))
        if path == "/agents":
            with self._lock:
                summaries = list(self._agents.values())
            return Response(_dumps({"summaries": summaries}), media_type=_JSON)
        if path == "/agents/metrics/results":
            return self._metric_results(query)
        raise _Reject(404, f"no route for GET {path}")

    def _limit(self, query: Mapping[str, str]) -> int:
        raw = query.get("limit")
        if raw is None or raw == "":
            return self.default_limit
        try:
            limit = int(raw)
        except ValueError:
            raise _Reject(400, f"limit must be an integer between 1 and {MAX_LIMIT}, got {raw!r}") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise _Reject(400, f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        return limit

    def _list_calls(self, query: dict[str, str]) -> Response:
        agent_id = query.get("agent_id")
        if not agent_id:
            raise _Reject(400, "agent_id is required")
        limit = self._limit(query)
        expand = query.get("expand")
        if expand not in (None, "", "transcript"):
            raise _Reject(400, f"unsupported expand {expand!r} (only 'transcript')")
        with_transcript = expand == "transcript"
        after, before = query.get("starting_after") or None, query.get("ending_before") or None
        if after and before:
            raise _Reject(400, "starting_after and ending_before cannot be used together")
        if agent_id in self.forbidden_agents:
            raise _Reject(403, "this API key may not read the calls of this agent")
        with self._lock:
            keys = self._by_agent.get(agent_id, [])
            cursor = after or before
            page_keys: list[tuple[int, str]] = []
            next_page: str | None = None
            stored = self._calls.get(cursor) if cursor else None
            if cursor and (stored is None or stored.agent_id != agent_id):
                if self.unknown_cursor == "error":
                    which = "starting_after" if after else "ending_before"
                    raise _Reject(400, f"{which}: no call {cursor!r} for this agent")
            elif before and stored is not None:
                p = bisect.bisect_left(keys, stored.key)
                page_keys = keys[p + 1 : p + 1 + limit][::-1]
                if p + 1 + limit < len(keys):
                    next_page = page_keys[0][1]
            else:
                p = bisect.bisect_left(keys, stored.key) if stored is not None else len(keys)
                page_keys = keys[max(0, p - limit) : p][::-1]
                if p - limit > 0:
                    next_page = page_keys[-1][1]
            calls = self._calls
            parts = [calls[key[1]].full if with_transcript else calls[key[1]].bare for key in page_keys]
            self._pages_served += 1
            served = PageServed(self._pages_served, agent_id, [k[1] for k in page_keys], next_page, query)
            callbacks = list(self._page_callbacks)
        body = b'{"data":[' + b",".join(parts) + b'],"next_page":' + _dumps(next_page) + b"}"
        for callback in callbacks:
            try:
                callback(served)
            except Exception as exc:  # kept for the test to see; the page is still served
                self.callback_errors.append(exc)
        return Response(body, media_type=_JSON)

    def _get_call(self, call_id: str) -> Response:
        with self._lock:
            stored = self._calls.get(call_id)
        if stored is None:
            raise _Reject(404, f"call {call_id!r} not found")
        if stored.agent_id in self.forbidden_agents:
            raise _Reject(403, "this API key may not read this call")
        return Response(stored.full, media_type=_JSON)

    def _metric_results(self, query: dict[str, str]) -> Response:
        limit = self._limit(query)
        start = _parse_date("start_date", query["start_date"]) if query.get("start_date") else None
        end = _parse_date("end_date", query["end_date"]) if query.get("end_date") else None
        after, before = query.get("starting_after") or None, query.get("ending_before") or None
        if after and before:
            raise _Reject(400, "starting_after and ending_before cannot be used together")
        agent_id = query.get("agent_id")
        if agent_id and agent_id in self.forbidden_agents:
            raise _Reject(403, "this API key may not read the results of this agent")
        filters = {"agentId": agent_id, "callId": query.get("call_id"), "metricId": query.get("metric_id")}
        filters["deploymentId"] = query.get("deployment_id")
        with self._lock:
            results = [
                r
                for r in self._results
                if all(not want or r.get(k) == want for k, want in filters.items())
                and (start is None or parse_rfc3339_ns(r["createdAt"]) >= start)
                and (end is None or parse_rfc3339_ns(r["createdAt"]) <= end)
            ]
        ids = [r["id"] for r in results]
        cursor = after or before
        if cursor is not None and cursor not in ids:
            if self.unknown_cursor == "error":
                raise _Reject(
                    400, f"{'starting_after' if after else 'ending_before'}: no metric result {cursor!r}"
                )
            page: list[dict[str, Any]] = []
            has_more = False
        elif before is not None:
            p = ids.index(before)
            page, has_more = results[max(0, p - limit) : p], p - limit > 0
        else:
            p = ids.index(after) + 1 if after is not None else 0
            page, has_more = results[p : p + limit], p + limit < len(results)
        next_page = (page[0]["id"] if before else page[-1]["id"]) if has_more and page else None
        return Response(
            _dumps({"data": page, "has_more": has_more, "next_page": next_page}), media_type=_JSON
        )
