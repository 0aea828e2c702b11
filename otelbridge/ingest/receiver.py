"""The ASGI app behind ``POST /webhooks/cartesia``: check, validate, store durably, answer.

The request path does only cheap work, cheapest first, and nothing that exports:

1. routing: 404 for other paths, 405 (``Allow: POST``) for other methods;
2. ``X-Webhook-Secret`` against every configured secret (401) — before the body is read;
3. ``Content-Type`` is JSON (415) and ``Content-Length`` is within the limit (413) — still
   without reading the body (a client sending ``Expect: 100-continue`` never uploads it);
4. the body, read as a stream and counted, reading stops at the limit (413);
5. UTF-8, JSON, an object (400); the webhook schema (422); an unknown type is acknowledged
   (200 ``ignored``) and not stored;
6. ``await inbox.append(raw_body, type, call_id)`` — 200 ``accepted`` only once the event is
   durably stored; 503 + ``Retry-After`` when the store is unavailable or too slow, so the
   platform retries.

Every answer is JSON: ``{"error": code, "message": one line}`` or ``{"status": ...}``. A
message names the problem, never a value from the body, and never the secret; an unexpected
exception is logged here with its traceback and answered with a fixed 500 message.
``on_outcome(type, outcome)`` is called exactly once per request (the self-metric
``otelbridge.webhooks{type,outcome}``); ``type`` is one of :data:`KNOWN_EVENT_TYPES` or
``"unknown"``, so that a client cannot grow the metric's cardinality.

The log does not count requests (the metric does): a refusal or other answer a client can
repeat at will (401, 400, 404, 405, 413, 415, 422, an ignored type, a 503) is logged at once
the first time, then as one counted line a minute per outcome naming the first client of the
minute (:class:`otelbridge.logs.CountedLog`), so 5,000 bad requests are not 5,000 lines. An
accepted webhook (DEBUG) and a 500 (with its traceback) are logged each time.

This is the hot path of ``otelbridge serve``, so the app is a plain ASGI callable (the ASGI
spec is the contract; uvicorn parses HTTP): headers come from ``scope["headers"]``, the body
from ``receive()``, the answer goes out as two ``send()`` messages, with the JSON of the
fixed answers encoded once. It runs on asyncio (uvicorn): past ``store_timeout`` the waiting
request task is cancelled as :func:`asyncio.timeout` would, by one timer shared by all
requests instead of a cancel scope (or timer) per request.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal, Protocol

from pydantic import ValidationError
from pydantic_core import from_json
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otelbridge.cartesia.errors import describe_validation_error, json_kind
from otelbridge.cartesia.webhooks import KNOWN_EVENT_TYPES, parse_webhook_event
from otelbridge.logs import LOG_EVERY, CountedLog

__all__ = [
    "DEFAULT_PATH",
    "RETRY_AFTER_S",
    "SECRET_HEADER",
    "UNKNOWN_TYPE",
    "Inbox",
    "OnOutcome",
    "Outcome",
    "StoreUnavailable",
    "build_webhook_app",
]

logger = logging.getLogger("otelbridge.receiver")

DEFAULT_PATH: Final = "/webhooks/cartesia"
SECRET_HEADER: Final = "X-Webhook-Secret"  # noqa: S105 - a header name, not a secret
#: seconds the platform is asked to wait before retrying after a 503
RETRY_AFTER_S: Final = 5
#: the ``type`` label when the request carried no known event type
UNKNOWN_TYPE: Final = "unknown"
DEFAULT_STORE_TIMEOUT_S: Final = 10.0
INTERNAL_ERROR_MESSAGE: Final = "internal error; see otelbridge's log"

_MAX_ECHO = 64  # longest client-supplied token (type, media type) repeated in a message
_MAX_MEDIA_TYPES = 64  # distinct Content-Type values whose verdict is remembered


class StoreUnavailable(Exception):
    """Raised by an :class:`Inbox` when the event cannot be stored durably (answered 503). The
    message goes to the log only; ``public``, when given, is a reason safe to tell the caller
    (it names the problem, never a path or a value), e.g. that the state volume is full."""

    def __init__(self, *args: object, public: str | None = None) -> None:
        super().__init__(*args)
        self.public = public


class Inbox(Protocol):
    async def append(self, body: bytes, event_type: str, call_id: str) -> None:
        """Return only once the event is durably stored; raise :class:`StoreUnavailable`."""
        ...


Outcome = Literal[
    "accepted",
    "ignored",
    "unauthorized",
    "bad_request",
    "unsupported_media_type",
    "too_large",
    "invalid",
    "unavailable",
    "method_not_allowed",
    "not_found",
    "error",
]
OnOutcome = Callable[[str, Outcome], None]

_STATUS: Final[Mapping[Outcome, int]] = {
    "accepted": 200,
    "ignored": 200,
    "unauthorized": 401,
    "bad_request": 400,
    "unsupported_media_type": 415,
    "too_large": 413,
    "invalid": 422,
    "unavailable": 503,
    "method_not_allowed": 405,
    "not_found": 404,
    "error": 500,
}
_LOG_LEVEL: Final[Mapping[Outcome, int]] = {
    "accepted": logging.DEBUG,
    "ignored": logging.INFO,
    "unauthorized": logging.WARNING,
    "bad_request": logging.INFO,
    "unsupported_media_type": logging.INFO,
    "too_large": logging.WARNING,
    "invalid": logging.WARNING,
    "unavailable": logging.WARNING,
    "method_not_allowed": logging.INFO,
    "not_found": logging.INFO,
    "error": logging.ERROR,
}

#: logged for every request, not counted: DEBUG (opt-in) and a bug's traceback
_LOGGED_EACH: Final = frozenset({"accepted", "error"})

# --- headers (ASGI: lower-case names, bytes) ---------------------------------------------
_SECRET: Final = SECRET_HEADER.lower().encode()
_CONTENT_TYPE: Final = b"content-type"
_CONTENT_LENGTH: Final = b"content-length"
_TRANSFER_ENCODING: Final = b"transfer-encoding"
_JSON_TYPE: Final = (_CONTENT_TYPE, b"application/json")
_CLOSE: Final = (b"connection", b"close")
_RETRY_AFTER: Final = (b"retry-after", str(RETRY_AFTER_S).encode())
_ALLOW_POST: Final = (b"allow", b"POST")


class _Answer:
    """What to answer: the outcome, its one-line message, extra response headers, and
    for the log only: ``detail`` (never sent to the caller) and the exception."""

    __slots__ = ("detail", "exc", "headers", "message", "outcome")

    def __init__(
        self,
        outcome: Outcome,
        message: str = "",
        *,
        detail: str = "",
        headers: tuple[tuple[bytes, bytes], ...] = (),
        exc: BaseException | None = None,
    ) -> None:
        self.outcome: Outcome = outcome
        self.message = message
        self.detail = detail
        self.headers = headers
        self.exc = exc


_ACCEPTED: Final = _Answer("accepted")
_ACCEPTED_BODY: Final = b'{"status":"accepted"}'
_ACCEPTED_HEADERS: Final = ((_CONTENT_LENGTH, str(len(_ACCEPTED_BODY)).encode()), _JSON_TYPE)
_NO_SECRET: Final = _Answer("unauthorized", f"missing {SECRET_HEADER} header")
_BAD_SECRET: Final = _Answer("unauthorized", f"{SECRET_HEADER} does not match any configured secret")


@functools.lru_cache(maxsize=256)
def _encode(outcome: Outcome, message: str) -> bytes:
    """The JSON body of an answer (as Starlette's JSONResponse renders it); the fixed
    answers are encoded once."""
    content: dict[str, str]
    if outcome == "accepted":
        return _ACCEPTED_BODY
    if outcome == "ignored":
        content = {"status": "ignored", "message": message}
    else:
        content = {"error": "internal" if outcome == "error" else outcome, "message": message}
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


class _ClientDisconnect(Exception):
    """The client went away before the whole body arrived."""


class _Wait:
    """One task waiting for the inbox: cancelled (``expired``) unless ``done`` by ``when``."""

    __slots__ = ("done", "expired", "task", "when")

    def __init__(self, task: asyncio.Task[Any], when: float) -> None:
        self.task = task
        self.when = when
        self.done = False
        self.expired = False


class _Deadlines:
    """Cancels each task still waiting ``timeout`` seconds after :meth:`start`, with one
    timer for all of them (a timer per request costs more than the rest of the wait).

    Every wait has the same timeout, so deadlines come in the order the waits started: a
    FIFO queue whose head expires next, one timer armed for the head. Finished waits are
    dropped from the head as new ones start, so the queue holds about what is in flight (a
    stuck head holds those behind it until it expires: at most ``timeout`` x the rate).
    Meant for one event loop at a time (a new loop starts afresh).
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._waits: deque[_Wait] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, task: asyncio.Task[Any]) -> _Wait:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or served by a new event loop
            self._loop, self._waits, self._timer = loop, deque(), None
        wait = _Wait(task, loop.time() + self._timeout)
        waits = self._waits
        while waits and waits[0].done:
            waits.popleft()
        waits.append(wait)
        if self._timer is None:
            self._timer = loop.call_at(wait.when, self._expire)
        return wait

    def _expire(self) -> None:
        assert self._loop is not None
        self._timer = None
        now = self._loop.time()
        waits = self._waits
        while waits:
            head = waits[0]
            if not head.done:
                if head.when > now:
                    self._timer = self._loop.call_at(head.when, self._expire)
                    return
                head.expired = True
                head.task.cancel()
            waits.popleft()


def _echo(value: str) -> str:
    """A client-supplied token, shortened and quoted (``repr`` escapes control characters)."""
    if len(value) > _MAX_ECHO:
        value = value[:_MAX_ECHO] + "…"
    return repr(value)


def _content_type_problem(value: str | None) -> str | None:
    """Why ``value`` is not an acceptable JSON Content-Type, or None when it is."""
    if not value or not value.strip():
        return "missing Content-Type; expected application/json"
    media_type, _, params = value.partition(";")
    media_type = media_type.strip().lower()
    is_json = media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )
    if not is_json:
        return f"Content-Type {_echo(media_type)} is not JSON; expected application/json"
    for param in params.split(";"):
        name, _, charset = param.partition("=")
        if name.strip().lower() == "charset":
            charset = charset.strip().strip('"').lower()
            if charset not in ("utf-8", "utf8"):
                return f"charset {_echo(charset)} is not supported; a JSON body must be UTF-8"
    return None


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request headers by (lower-case) name; the first of repeated ones wins."""
    raw = scope["headers"]
    return dict(reversed(raw if isinstance(raw, list) else list(raw)))


def _may_have_unread_body(headers: Mapping[bytes, bytes]) -> bool:
    length = headers.get(_CONTENT_LENGTH, b"0").decode("latin-1")
    return _TRANSFER_ENCODING in headers or length.strip() != "0"


class _WebhookReceiver:
    """The ASGI app: one ``POST`` route; see the module docstring."""

    def __init__(
        self,
        *,
        inbox: Inbox,
        secrets: Sequence[bytes],
        max_body_bytes: int,
        on_outcome: OnOutcome,
        path: str,
        store_timeout: float,
        log_every: float = LOG_EVERY,
    ) -> None:
        self._inbox = inbox
        # Comparing SHA-256 digests makes every comparison the same length, so not even
        # the secrets' lengths leak through timing.
        self._secret_digests = tuple(hashlib.sha256(s).digest() for s in secrets)
        self._max_body_bytes = max_body_bytes
        self._on_outcome = on_outcome
        self._path = path
        self._store_timeout = store_timeout
        self._deadlines = _Deadlines(store_timeout)
        # Content-Type value -> why it is refused (None: accepted); a sender sends the same one
        self._media_types: dict[bytes | None, str | None] = {}
        self._not_found = _Answer("not_found", f"no such path; webhooks are received at POST {path}")
        self._too_large = _Answer("too_large", f"body exceeds the limit of {max_body_bytes} bytes")
        self._counted = CountedLog(
            logger, "webhook %s: %d more in the last %g s, the first from %s", every=log_every
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            await self._not_http(kind, receive, send)
            return
        headers = _headers(scope)
        state = _State()
        if scope["path"] != self._path and self._route_path(scope) != self._path:
            answer = self._not_found
        elif scope["method"] != "POST":
            answer = _Answer(
                "method_not_allowed",
                f"method {_echo(scope['method'])} not allowed; use POST",
                headers=(_ALLOW_POST,),
            )
        else:
            try:
                answer = await self._process(headers, receive, state)
            except Exception as exc:
                answer = _Answer("error", INTERNAL_ERROR_MESSAGE, detail="unexpected exception", exc=exc)
        await self._answer(scope, send, headers, answer, state)

    # --- the endpoint ----------------------------------------------------------------------
    async def _process(self, headers: dict[bytes, bytes], receive: Receive, state: _State) -> _Answer:
        if self._secret_digests:
            provided = headers.get(_SECRET)
            if not provided:
                return _NO_SECRET
            if not self._secret_matches(provided):
                return _BAD_SECRET

        content_type = headers.get(_CONTENT_TYPE)
        try:
            problem = self._media_types[content_type]
        except KeyError:
            problem = _content_type_problem(None if content_type is None else content_type.decode("latin-1"))
            if len(self._media_types) < _MAX_MEDIA_TYPES:
                self._media_types[content_type] = problem
        if problem is not None:
            return _Answer("unsupported_media_type", problem)

        declared = headers.get(_CONTENT_LENGTH)
        if declared is not None:
            try:
                length = int(declared.decode("latin-1"))
            except ValueError:
                return _Answer("bad_request", "invalid Content-Length header")
            if length > self._max_body_bytes:
                return _Answer(
                    "too_large",
                    f"body of {length} bytes exceeds the limit of {self._max_body_bytes} bytes",
                )

        try:
            body = await self._read_body(receive, state)
        except _ClientDisconnect:
            return _Answer("bad_request", "client disconnected before sending the whole body")
        if body is None:
            return self._too_large

        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _Answer("bad_request", f"body is not valid UTF-8 (invalid byte at offset {exc.start})")
        if not text.strip():
            return _Answer("bad_request", "body is empty; expected a JSON object")
        try:
            payload = from_json(text, allow_inf_nan=False)
        except ValueError as exc:  # jiter's messages name a position, never the input
            return _Answer("bad_request", f"body is not valid JSON: {exc}")
        if not isinstance(payload, dict):
            return _Answer("bad_request", f"body is {json_kind(payload)}; expected a JSON object")

        raw_type = payload.get("type")
        if isinstance(raw_type, str) and raw_type in KNOWN_EVENT_TYPES:
            state.event_type = raw_type
        try:
            event = parse_webhook_event(payload)
        except ValidationError as exc:
            return _Answer("invalid", describe_validation_error(exc))
        if not event.is_known:
            return _Answer("ignored", f"unknown event type {_echo(event.type)}")
        call_id = event.resolved_call_id
        if not call_id:  # pragma: no cover - the model validator requires one for known types
            return _Answer("invalid", "call_id: missing (no call_id, request_id or call.id)")
        state.call_id = call_id

        try:
            await self._append(body, event.type, call_id)
        except StoreUnavailable as exc:
            return self._unavailable(f"event store unavailable: {exc or type(exc).__name__}", exc.public)
        except TimeoutError:
            return self._unavailable(f"event store did not confirm within {self._store_timeout:g} s")
        return _ACCEPTED

    async def _append(self, body: bytes, event_type: str, call_id: str) -> None:
        """``inbox.append``, cancelled after ``store_timeout`` (then TimeoutError), with the
        semantics of :func:`asyncio.timeout`: one cancellation, and an outside cancellation
        of the task meanwhile stays a cancellation."""
        task = asyncio.current_task()
        assert task is not None  # an ASGI app runs in a task
        cancelling = task.cancelling()
        wait = self._deadlines.start(task)
        try:
            await self._inbox.append(body, event_type, call_id)
        except asyncio.CancelledError:
            # Ours only if no one else asked to cancel the task meanwhile.
            if wait.expired and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        else:
            if wait.expired:  # the append swallowed our cancellation and finished
                task.uncancel()
        finally:
            wait.done = True

    def _secret_matches(self, provided: bytes) -> bool:
        digest = hashlib.sha256(provided).digest()
        matched = False
        for expected in self._secret_digests:  # no early exit: every secret is compared
            matched |= hmac.compare_digest(digest, expected)
        return matched

    async def _read_body(self, receive: Receive, state: _State) -> bytes | None:
        """The whole body, or None as soon as it exceeds the limit (reading stops there)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "http.request":
                chunk = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if size > self._max_body_bytes:
                        return None
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            elif kind == "http.disconnect":
                raise _ClientDisconnect
        state.body_complete = True
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _unavailable(self, detail: str, reason: str | None = None) -> _Answer:
        return _Answer(
            "unavailable",
            f"the event store is unavailable ({reason}); retry later"
            if reason
            else "the event store is unavailable; retry later",
            detail=detail,
            headers=(_RETRY_AFTER,),
        )

    # --- routing -----------------------------------------------------------------------------
    @staticmethod
    def _route_path(scope: Scope) -> str:
        """The path without ``root_path`` (as Starlette routes; uvicorn's is usually empty)."""
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path) and path[len(root_path) : len(root_path) + 1] == "/":
            return path[len(root_path) :]
        return path

    @staticmethod
    async def _not_http(kind: str, receive: Receive, send: Send) -> None:
        """Lifespan: nothing to start or stop; websocket: closed."""
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1000, "reason": ""})

    # --- answering -------------------------------------------------------------------------
    async def _answer(
        self, scope: Scope, send: Send, headers: Mapping[bytes, bytes], answer: _Answer, state: _State
    ) -> None:
        outcome = answer.outcome
        status = _STATUS[outcome]
        if logger.isEnabledFor(_LOG_LEVEL[outcome]):
            self._log(scope, answer, state, status)
        try:
            self._on_outcome(state.event_type, outcome)
        except Exception:
            logger.exception("on_outcome callback failed for outcome %s", outcome)

        if answer is _ACCEPTED:
            body, response_headers = _ACCEPTED_BODY, [*_ACCEPTED_HEADERS]
        else:
            body = _encode(outcome, answer.message)
            response_headers = [(_CONTENT_LENGTH, str(len(body)).encode()), _JSON_TYPE, *answer.headers]
        if not state.body_complete and _may_have_unread_body(headers):
            # Do not make the server read (and discard) a body nobody wants: close instead.
            response_headers.append(_CLOSE)
        start: Message = {"type": "http.response.start", "status": status, "headers": response_headers}
        await send(start)
        await send({"type": "http.response.body", "body": body})

    def _log(self, scope: Scope, answer: _Answer, state: _State, status: int) -> None:
        client = scope.get("client")
        address = str(client[0]) if client else "unknown client"
        outcome = answer.outcome
        level = _LOG_LEVEL[outcome]
        reason = answer.detail or answer.message
        if outcome == "accepted":
            reason = f"call {state.call_id}"
        line = ("webhook %s (%d) type=%s from %s: %s", outcome, status, state.event_type, address, reason)
        if outcome in _LOGGED_EACH:
            logger.log(level, *line, exc_info=answer.exc)
        else:
            self._counted.add(f"{outcome} ({status})", address, level, *line, exc_info=answer.exc)


class _State:
    """What the request revealed so far (for the outcome label, the log and the answer)."""

    __slots__ = ("body_complete", "call_id", "event_type")

    def __init__(self) -> None:
        self.event_type: str = UNKNOWN_TYPE
        self.call_id: str | None = None
        self.body_complete = False


def build_webhook_app(
    *,
    inbox: Inbox,
    secrets: Sequence[bytes],
    max_body_bytes: int,
    on_outcome: OnOutcome = lambda t, o: None,
    path: str = DEFAULT_PATH,
    store_timeout: float = DEFAULT_STORE_TIMEOUT_S,
    log_every: float = LOG_EVERY,
) -> ASGIApp:
    """The webhook receiver as an ASGI app (serve it with uvicorn, ``lifespan="off"`` is fine).

    ``secrets`` empty means unauthenticated mode (the daemon allows it only with
    ``--allow-unauthenticated``); with several, any one matches (rotation).
    ``store_timeout`` bounds the wait for ``inbox.append``; past it the append is cancelled
    and the caller gets a 503 (the platform retries; delivery is at-least-once anyway).
    ``log_every``: seconds between the counted log lines of a repeated refusal (0: a line
    for each, as tests want).
    """
    if any(not s for s in secrets):
        raise ValueError("webhook secrets must not be empty")
    if max_body_bytes <= 0:
        raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
    if not math.isfinite(log_every) or log_every < 0:
        raise ValueError(f"log_every must be a number of seconds >= 0, got {log_every}")
    if not math.isfinite(store_timeout) or store_timeout <= 0:
        raise ValueError(f"store_timeout must be a positive number of seconds, got {store_timeout}")
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")

    return _WebhookReceiver(
        inbox=inbox,
        secrets=list(secrets),
        max_body_bytes=max_body_bytes,
        on_outcome=on_outcome,
        path=path,
        store_timeout=store_timeout,
        log_every=log_every,
    )
