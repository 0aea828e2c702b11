"""The Starlette app behind ``POST /webhooks/cartesia``: check, validate, store durably, answer.

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
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

import anyio
from pydantic import ValidationError
from pydantic_core import from_json
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from otelbridge.cartesia.errors import describe_validation_error
from otelbridge.cartesia.webhooks import KNOWN_EVENT_TYPES, parse_webhook_event

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


class StoreUnavailable(Exception):
    """Raised by an :class:`Inbox` when the event cannot be stored durably (answered 503)."""


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


@dataclass(slots=True)
class _Answer:
    outcome: Outcome
    message: str = ""
    #: extra detail for the log line only (never sent to the caller)
    detail: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    exc: BaseException | None = None


@dataclass(slots=True)
class _RequestState:
    event_type: str = UNKNOWN_TYPE
    call_id: str | None = None
    body_complete: bool = False


def _echo(value: str) -> str:
    """A client-supplied token, shortened and quoted (``repr`` escapes control characters)."""
    if len(value) > _MAX_ECHO:
        value = value[:_MAX_ECHO] + "…"
    return repr(value)


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"  # pragma: no cover - JSON has no other kinds


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


def _may_have_unread_body(request: Request) -> bool:
    headers = request.headers
    return "transfer-encoding" in headers or headers.get("content-length", "0").strip() != "0"


class _WebhookReceiver:
    def __init__(
        self,
        *,
        inbox: Inbox,
        secrets: Sequence[bytes],
        max_body_bytes: int,
        on_outcome: OnOutcome,
        path: str,
        store_timeout: float,
    ) -> None:
        self._inbox = inbox
        # Comparing SHA-256 digests makes every comparison the same length, so not even
        # the secrets' lengths leak through timing.
        self._secret_digests = [hashlib.sha256(s).digest() for s in secrets]
        self._max_body_bytes = max_body_bytes
        self._on_outcome = on_outcome
        self._path = path
        self._store_timeout = store_timeout

    # --- the endpoint ----------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        state = _RequestState()
        try:
            answer = await self._process(request, state)
        except Exception as exc:
            answer = _Answer("error", INTERNAL_ERROR_MESSAGE, detail="unexpected exception", exc=exc)
        return self._finish(request, answer, state)

    async def _process(self, request: Request, state: _RequestState) -> _Answer:
        if self._secret_digests:
            provided = request.headers.get(SECRET_HEADER)
            if not provided:
                return _Answer("unauthorized", f"missing {SECRET_HEADER} header")
            if not self._secret_matches(provided):
                return _Answer("unauthorized", f"{SECRET_HEADER} does not match any configured secret")

        problem = _content_type_problem(request.headers.get("content-type"))
        if problem is not None:
            return _Answer("unsupported_media_type", problem)

        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                return _Answer("bad_request", "invalid Content-Length header")
            if length > self._max_body_bytes:
                return _Answer(
                    "too_large",
                    f"body of {length} bytes exceeds the limit of {self._max_body_bytes} bytes",
                )

        try:
            body = await self._read_body(request, state)
        except ClientDisconnect:
            return _Answer("bad_request", "client disconnected before sending the whole body")
        if body is None:
            return _Answer("too_large", f"body exceeds the limit of {self._max_body_bytes} bytes")

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
            return _Answer("bad_request", f"body is {_json_kind(payload)}; expected a JSON object")

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
            with anyio.fail_after(self._store_timeout):
                await self._inbox.append(body, event.type, call_id)
        except StoreUnavailable as exc:
            return self._unavailable(f"event store unavailable: {exc or type(exc).__name__}")
        except TimeoutError:
            return self._unavailable(f"event store did not confirm within {self._store_timeout:g} s")
        return _Answer("accepted")

    def _secret_matches(self, provided: str) -> bool:
        # ASGI header values are bytes; Starlette decoded them as latin-1, which round-trips.
        digest = hashlib.sha256(provided.encode("latin-1")).digest()
        matched = False
        for expected in self._secret_digests:  # no early exit: every secret is compared
            matched |= hmac.compare_digest(digest, expected)
        return matched

    async def _read_body(self, request: Request, state: _RequestState) -> bytes | None:
        """The whole body, or None as soon as it exceeds the limit (reading stops there)."""
        body = bytearray()
        async with aclosing(request.stream()) as chunks:
            async for chunk in chunks:
                body += chunk
                if len(body) > self._max_body_bytes:
                    return None
        state.body_complete = True
        return bytes(body)

    def _unavailable(self, detail: str) -> _Answer:
        return _Answer(
            "unavailable",
            "the event store is unavailable; retry later",
            detail=detail,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    # --- routing errors and the last-resort handler ----------------------------------------
    async def http_exception(self, request: Request, exc: Exception) -> Response:
        """404 and 405 from Starlette's router, as JSON."""
        state = _RequestState()
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 404:
            answer = _Answer("not_found", f"no such path; webhooks are received at POST {self._path}")
        elif status == 405:
            answer = _Answer(
                "method_not_allowed",
                f"method {_echo(request.method)} not allowed; use POST",
                headers={"Allow": "POST"},
            )
        else:  # pragma: no cover - the router raises nothing else
            detail = exc.detail if isinstance(exc, HTTPException) else ""
            answer = _Answer("error" if status >= 500 else "bad_request", str(detail))
        return self._finish(request, answer, state, status=status)

    async def internal_error(self, request: Request, exc: Exception) -> Response:
        """Backstop for Starlette's ServerErrorMiddleware: a JSON 500, never a traceback.

        :meth:`handle` catches everything itself; this runs only if something outside it
        fails. (ServerErrorMiddleware re-raises afterwards, so uvicorn logs it too.)
        """
        answer = _Answer("error", INTERNAL_ERROR_MESSAGE, detail="unexpected exception", exc=exc)
        return self._finish(request, answer, _RequestState())

    # --- answering -------------------------------------------------------------------------
    def _finish(
        self, request: Request, answer: _Answer, state: _RequestState, status: int | None = None
    ) -> Response:
        outcome = answer.outcome
        status = status or _STATUS[outcome]
        self._log(request, answer, state, status)
        try:
            self._on_outcome(state.event_type, outcome)
        except Exception:
            logger.exception("on_outcome callback failed for outcome %s", outcome)

        content: dict[str, str]
        if outcome == "accepted":
            content = {"status": "accepted"}
        elif outcome == "ignored":
            content = {"status": "ignored", "message": answer.message}
        else:
            code = "internal" if outcome == "error" else outcome
            content = {"error": code, "message": answer.message}
        headers = dict(answer.headers)
        if not state.body_complete and _may_have_unread_body(request):
            # Do not make the server read (and discard) a body nobody wants: close instead.
            headers["Connection"] = "close"
        return JSONResponse(content, status_code=status, headers=headers)

    def _log(self, request: Request, answer: _Answer, state: _RequestState, status: int) -> None:
        level = _LOG_LEVEL[answer.outcome]
        if not logger.isEnabledFor(level):
            return
        client = request.client.host if request.client else "unknown client"
        reason = answer.detail or answer.message
        if answer.outcome == "accepted":
            reason = f"call {state.call_id}"
        logger.log(
            level,
            "webhook %s (%d) type=%s from %s: %s",
            answer.outcome,
            status,
            state.event_type,
            client,
            reason,
            exc_info=answer.exc,
        )


def build_webhook_app(
    *,
    inbox: Inbox,
    secrets: Sequence[bytes],
    max_body_bytes: int,
    on_outcome: OnOutcome = lambda t, o: None,
    path: str = DEFAULT_PATH,
    store_timeout: float = DEFAULT_STORE_TIMEOUT_S,
) -> Starlette:
    """The webhook receiver as an ASGI app (serve it with uvicorn, ``lifespan="off"`` is fine).

    ``secrets`` empty means unauthenticated mode (the daemon allows it only with
    ``--allow-unauthenticated``); with several, any one matches (rotation).
    ``store_timeout`` bounds the wait for ``inbox.append``; past it the append is cancelled
    and the caller gets a 503 (the platform retries; delivery is at-least-once anyway).
    """
    if any(not s for s in secrets):
        raise ValueError("webhook secrets must not be empty")
    if max_body_bytes <= 0:
        raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
    if not math.isfinite(store_timeout) or store_timeout <= 0:
        raise ValueError(f"store_timeout must be a positive number of seconds, got {store_timeout}")
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")

    receiver = _WebhookReceiver(
        inbox=inbox,
        secrets=list(secrets),
        max_body_bytes=max_body_bytes,
        on_outcome=on_outcome,
        path=path,
        store_timeout=store_timeout,
    )
    app = Starlette(
        debug=False,
        routes=[Route(path, receiver.handle, methods=["POST"])],
        exception_handlers={HTTPException: receiver.http_exception, Exception: receiver.internal_error},
    )
    # Starlette would answer "/webhooks/cartesia/" with a 307 redirect (no JSON, no outcome).
    app.router.redirect_slashes = False
    return app
