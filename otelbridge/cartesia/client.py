"""Async client for the Cartesia agents API: List Calls, Get Call, agents and metric results.

Every request carries ``Authorization: Bearer <key>``, ``Cartesia-Version`` and
``User-Agent: otelbridge/<version>``, and goes through one :class:`httpx.AsyncClient`
(connection reuse; connect/read/write/pool timeouts of ``timeout_s`` each).

**Why the version is pinned to 2026-03-01.** The call format depends on ``Cartesia-Version``.
2026-03-01 is the newest version known to us; it brings the fields the mapping uses
(``end_reason``, ``agent_name``, ``deployment_region``, ``metadata``, ``stt_ttfb`` …), the
``created|started|completed|failed`` status vocabulary, and JSON error bodies
``{error_code, title, message, request_id}`` (older versions may answer plain text). A pin
keeps the format from changing under a running bridge when Cartesia moves its default; it is
a setting, and the models accept the older shapes too.

**Retries.** 429, 408, any 5xx, timeouts and connection errors are retried with exponential
backoff and equal jitter (``initial_backoff_s * 2**n``, capped at ``max_backoff_s``; half of
it fixed, half random). A ``Retry-After`` (seconds or HTTP-date, capped at 300 s) replaces
the computed delay. After ``max_retries`` retries :class:`CartesiaUnavailable` names the last
problem. 401/403 raise :class:`CartesiaAuthError` at once, any other 4xx :class:`CartesiaError`
at once. All requests are GETs, so a retry is always safe.

**Answers.** A 2xx answer that is not the expected JSON shape raises :class:`CartesiaError`
with a precise one-line message (``GET /agents/calls: 'data' is not an array``); error bodies
are read whether JSON (``{error_code, title, message, request_id}``, ``{"error": …}``,
``{"message": …}``, ``{"detail": …}``) or text (one line, capped at 200 characters).

The API key never appears in a message, a repr or a log line: it lives only in the request
headers (which httpx masks in its reprs), and any text that came from the server is scrubbed
of it before it is used.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import quote

import anyio
import httpx
from pydantic_core import from_json

from otelbridge import __version__
from otelbridge.cartesia.errors import json_kind
from otelbridge.retry import backoff, parse_retry_after

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_VERSION",
    "CallsPage",
    "CartesiaAuthError",
    "CartesiaClient",
    "CartesiaError",
    "CartesiaUnavailable",
    "ClientStats",
    "parse_retry_after",
]

log = logging.getLogger("otelbridge.cartesia.client")

DEFAULT_BASE_URL: Final = "https://api.cartesia.ai"
DEFAULT_VERSION: Final = "2026-03-01"
USER_AGENT: Final = f"otelbridge/{__version__}"
#: The most a ``Retry-After`` can make the client wait before one retry.
RETRY_AFTER_MAX_S: Final = 300.0
#: Page size asked of the paged endpoints the client walks itself (the documented maximum).
PAGE_LIMIT: Final = 100
MESSAGE_TEXT_LIMIT: Final = 200
#: The largest answer body read; the rest is not downloaded (CartesiaError). Measured: the
#: sample List Calls pages (tests/support/samples) hold 6 calls in ~64 KB, the largest call
#: ~16 KB with 31 turns, so a page of 100 such calls is ~1.6 MB; 64 MiB leaves room for a page
#: of 100 calls averaging 650 KiB each (about 40 times the largest sample, hour-long calls)
#: while bounding what a broken or hostile server can make the process hold.
MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
_RETRY_STATUSES: Final = frozenset({408, 429})
_AUTH_STATUSES: Final = frozenset({401, 403})
_ERROR_TEXT_SCAN: Final = 64 * 1024  # of a text error body, only this much is looked at
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_TAG = re.compile(r"<[^>]*>")
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what a bearer token may hold
_REQUEST_ID_HEADERS: Final = ("x-request-id", "request-id", "cartesia-request-id")


# --- errors ---------------------------------------------------------------------------------
class CartesiaError(Exception):
    """A request to the Cartesia API failed.

    ``message`` is one line naming the request (``GET /agents/calls: HTTP 400 …``), never the
    API key; ``status`` the HTTP status (``None`` when no answer came); ``request_id`` the id
    the API gave the failed request, if any; ``path`` the request path (no query string);
    ``error_code`` the machine-readable code of a JSON error body, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        path: str = "",
        error_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.request_id = request_id
        self.path = path
        self.error_code = error_code

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r})"


class CartesiaAuthError(CartesiaError):
    """401 or 403: the key is missing, wrong, or not allowed this resource. Not retried."""


class CartesiaUnavailable(CartesiaError):
    """429, 5xx, timeouts or connection errors persisted through every retry."""


# --- results --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CallsPage:
    """One page of ``GET /agents/calls``: the calls as raw objects (validate each with
    :func:`otelbridge.cartesia.models.parse_call`) and the cursor of the next (older) page,
    ``None`` on the last page."""

    calls: list[dict[str, Any]]
    next_page: str | None


@dataclass(slots=True)
class ClientStats:
    """``requests``: HTTP attempts made (retries included); ``retries``: of those, repeats;
    ``statuses``: answers by HTTP status (timeouts and connection errors have none)."""

    requests: int = 0
    retries: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)


# --- helpers --------------------------------------------------------------------------------
def _one_line(text: str, limit: int = MESSAGE_TEXT_LIMIT) -> str:
    """One line, control characters folded, at most ``limit`` characters."""
    line = " ".join(_CONTROL.sub(" ", text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _text(value: object) -> str | None:
    """A non-empty string field of an error body, or ``None``."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


@dataclass(frozen=True, slots=True)
class _ErrorBody:
    detail: str
    error_code: str | None = None
    request_id: str | None = None


def _parse_error_body(response: httpx.Response, content: bytes) -> _ErrorBody:
    """What an error answer says (``content``: its body), whether JSON or text. ``detail`` may
    be empty; nothing is scrubbed or shortened yet."""
    text = content[:_ERROR_TEXT_SCAN].decode("utf-8", errors="replace")
    data: object = None
    if text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(content)
        except (ValueError, RecursionError):
            data = None
    if isinstance(data, dict):
        error_code = _text(data.get("error_code")) or _text(data.get("code"))
        request_id = _text(data.get("request_id"))
        title = _text(data.get("title"))
        message = _text(data.get("message")) or _text(data.get("detail"))
        nested = data.get("error")
        if isinstance(nested, dict):
            message = message or _text(nested.get("message")) or _text(nested.get("detail"))
            error_code = error_code or _text(nested.get("code")) or _text(nested.get("type"))
            request_id = request_id or _text(nested.get("request_id"))
        elif message is None:
            message = _text(nested)
        if message is None and isinstance(data.get("detail"), list):
            message = json.dumps(data["detail"], ensure_ascii=False)
        detail = message or title or ""  # the title is generic ("Bad request") when there is a message
        if not detail and not error_code:
            detail = text  # a JSON object without anything we know: show it as text
        return _ErrorBody(detail, error_code, request_id)
    if "html" in response.headers.get("content-type", "").lower() or text.lstrip().startswith("<"):
        text = _TAG.sub(" ", text)
    return _ErrorBody(text)


def _describe_exception(exc: BaseException) -> str:
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


# --- the client -----------------------------------------------------------------------------
class CartesiaClient:
    """Async client of the Cartesia agents API; see the module docstring.

    Use as ``async with CartesiaClient(api_key=…) as client:`` or call :meth:`aclose`.
    ``transport`` replaces httpx's network transport (tests); ``sleep`` and ``rng`` are the
    seams of the backoff (tests record delays instead of sleeping).
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        version: str = DEFAULT_VERSION,
        timeout_s: float = 30.0,
        max_retries: int = 6,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        rng: random.Random | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        if not api_key or not api_key.strip():
            raise ValueError("the Cartesia API key is empty")
        if _HEADER_SAFE.fullmatch(api_key) is None:
            # never echo the key: say only what is wrong with it
            raise ValueError("the Cartesia API key holds whitespace or characters not allowed in a header")
        if not version.strip() or _HEADER_SAFE.fullmatch(version) is None:
            raise ValueError(f"invalid Cartesia-Version {version!r}")
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ValueError(f"timeout_s must be a positive number, got {timeout_s!r}")
        if max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be >= 1, got {max_response_bytes!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
        if not (0 <= initial_backoff_s <= max_backoff_s):
            raise ValueError("backoff must satisfy 0 <= initial_backoff_s <= max_backoff_s")
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.version = version
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_response_bytes = max_response_bytes
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not crypto
        self.stats = ClientStats()
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={
                "Authorization": f"Bearer {api_key}",
                "Cartesia-Version": version,
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"CartesiaClient(base_url={self.base_url!r}, version={self.version!r})"

    # --- lifecycle ------------------------------------------------------------------------
    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- endpoints ------------------------------------------------------------------------
    async def list_calls(
        self,
        agent_id: str,
        *,
        limit: int = PAGE_LIMIT,
        starting_after: str | None = None,
        expand_transcript: bool = True,
    ) -> CallsPage:
        """One page of ``GET /agents/calls``, newest first. Pass ``next_page`` back as
        ``starting_after`` for the next (older) page. ``limit`` is sent as given (the API
        accepts 1..100 and answers 400 otherwise)."""
        if not agent_id:
            raise ValueError("agent_id is empty")
        params: dict[str, str | int] = {"agent_id": agent_id, "limit": limit}
        if expand_transcript:
            params["expand"] = "transcript"
        if starting_after is not None:
            params["starting_after"] = starting_after
        path = "/agents/calls"
        body = await self._get_json(path, params)
        data, next_page = self._data_page(path, body)
        return CallsPage(calls=data, next_page=next_page)

    async def get_call(self, call_id: str) -> dict[str, Any]:
        """``GET /agents/calls/{id}``: one call, transcript included."""
        if not call_id:
            raise ValueError("call_id is empty")
        path = f"/agents/calls/{quote(call_id, safe='')}"
        body = await self._get_json(path, None)
        if not isinstance(body, dict):
            raise self._shape_error(path, f"the answer is {json_kind(body)}, not a call object")
        return body

    async def list_agents(self) -> list[dict[str, Any]]:
        """``GET /agents``: the agents' summaries. Accepts ``{"summaries": [...]}`` (the
        documented form), a plain list, or ``{"data": [...]}`` — and follows
        ``next_page``/``has_more`` if a version pages it."""
        path = "/agents"
        body = await self._get_json(path, None)
        if isinstance(body, list):
            return self._objects(path, body, "the answer")
        if isinstance(body, dict) and "summaries" in body:
            summaries = body["summaries"]
            if summaries is None:
                return []
            if not isinstance(summaries, list):
                raise self._shape_error(path, f"'summaries' is {json_kind(summaries)}, not an array")
            return self._objects(path, summaries, "summaries")
        if isinstance(body, dict) and "data" in body:
            return await self._walk(path, {}, body)
        if isinstance(body, dict):
            raise self._shape_error(path, "the answer has neither 'summaries' nor 'data'")
        raise self._shape_error(path, f"the answer is {json_kind(body)}, not an object or an array")

    async def metric_results(
        self,
        *,
        start_date: str | None = None,
        end_date: str | None = None,
        agent_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """``GET /agents/metrics/results``: LLM-judge results (camelCase keys ``callId``,
        ``metricName``, ``value``, ``result``, ``status``, ``createdAt`` …), every page.

        ``start_date``/``end_date`` are ISO 8601 date-times (inclusive bounds on the result's
        creation time). The endpoint pages like Stripe (``{data, has_more, next_page}``,
        ``starting_after`` = id of the last result); pages of 100 are walked to the end."""
        params: dict[str, str | int] = {"limit": PAGE_LIMIT}
        if agent_id is not None:
            params["agent_id"] = agent_id
        if start_date is not None:
            params["start_date"] = start_date
        if end_date is not None:
            params["end_date"] = end_date
        path = "/agents/metrics/results"
        first = await self._get_json(path, params)
        return await self._walk(path, params, first)

    # --- paging ---------------------------------------------------------------------------
    def _data_page(self, path: str, body: object) -> tuple[list[dict[str, Any]], str | None]:
        if not isinstance(body, dict):
            raise self._shape_error(path, f"the answer is {json_kind(body)}, not an object")
        if "data" not in body:
            raise self._shape_error(path, "the answer has no 'data'")
        data = body["data"]
        if not isinstance(data, list):
            raise self._shape_error(path, f"'data' is not an array (got {json_kind(data)})")
        next_page = body.get("next_page")
        if next_page is not None and not isinstance(next_page, str):
            raise self._shape_error(path, f"'next_page' is {json_kind(next_page)}, not a string or null")
        return self._objects(path, data, "data"), next_page or None

    async def _walk(self, path: str, params: Mapping[str, str | int], first: object) -> list[dict[str, Any]]:
        """Collect every page of a ``{data, has_more?, next_page}`` listing."""
        items: list[dict[str, Any]] = []
        seen: set[str] = set()
        body = first
        while True:
            data, next_page = self._data_page(path, body)
            items.extend(data)
            has_more = body.get("has_more") if isinstance(body, dict) else None
            more = has_more if isinstance(has_more, bool) else next_page is not None
            if not more or not data:
                return items
            cursor = next_page
            if cursor is None:  # has_more without a cursor: the last id is the cursor
                last_id = data[-1].get("id")
                if not isinstance(last_id, str) or not last_id:
                    raise self._shape_error(
                        path, "'has_more' is true but there is no 'next_page' or last 'id'"
                    )
                cursor = last_id
            if cursor in seen:
                raise self._shape_error(path, f"paging does not advance ('next_page' {cursor!r} came twice)")
            seen.add(cursor)
            body = await self._get_json(path, {**params, "starting_after": cursor})

    def _objects(self, path: str, items: list[Any], where: str) -> list[dict[str, Any]]:
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise self._shape_error(path, f"'{where}[{index}]' is {json_kind(item)}, not an object")
        return items

    def _shape_error(self, path: str, problem: str) -> CartesiaError:
        return CartesiaError(f"GET {path}: {self._scrub(problem)}", path=path)

    # --- one request, with retries --------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "[redacted]") if len(self._api_key) >= 6 else text

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        """Delay before retry number ``retry`` (0-based): the backoff, or the server's
        ``Retry-After`` where longer (a 0 is a floor, not a retry at once)."""
        delay = backoff(retry, self.initial_backoff_s, self.max_backoff_s, self._rng)
        return delay if retry_after is None else max(delay, min(retry_after, RETRY_AFTER_MAX_S))

    async def _get_json(self, path: str, params: Mapping[str, str | int] | None) -> Any:
        op = f"GET {path}"
        retry = 0
        while True:
            self.stats.requests += 1
            status: int | None = None
            request_id: str | None = None
            retry_after: float | None = None
            try:
                response, content = await self._get(path, params)
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                raise CartesiaError(f"{op}: {_one_line(self._scrub(str(exc)))}", path=path) from None
            except httpx.TimeoutException as exc:
                problem = f"timed out after {self.timeout_s:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                problem = f"connection error: {_one_line(self._scrub(_describe_exception(exc)))}"
            else:
                status = response.status_code
                self.stats.statuses[status] += 1
                if 200 <= status < 300:
                    return self._decode(path, response, content)
                error = self._http_error(path, response, content)
                if status in _AUTH_STATUSES:
                    raise CartesiaAuthError(
                        error.message,
                        status=status,
                        request_id=error.request_id,
                        path=path,
                        error_code=error.error_code,
                    )
                if status not in _RETRY_STATUSES and not 500 <= status < 600:
                    raise error
                problem = error.message.removeprefix(f"{op}: ")
                request_id = error.request_id
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            if retry >= self.max_retries:
                attempts = retry + 1
                raise CartesiaUnavailable(
                    f"{op}: gave up after {attempts} attempt{'s' if attempts != 1 else ''}: {problem}",
                    status=status,
                    request_id=request_id,
                    path=path,
                )
            delay = self._backoff(retry, retry_after)
            retry += 1
            self.stats.retries += 1
            log.info("%s: %s; retry %d/%d in %.1f s", op, problem, retry, self.max_retries, delay)
            await self._sleep(delay)

    async def _get(self, path: str, params: Mapping[str, str | int] | None) -> tuple[httpx.Response, bytes]:
        """The answer and its body, read as it streams in up to ``max_response_bytes``."""
        request = self._http.build_request("GET", path, params=dict(params) if params else None)
        response = await self._http.send(request, stream=True)
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_response_bytes:
                raise self._too_large(path, response)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise self._too_large(path, response)
                chunks.append(chunk)
            return response, b"".join(chunks)
        finally:
            await response.aclose()

    def _too_large(self, path: str, response: httpx.Response) -> CartesiaError:
        return CartesiaError(
            f"GET {path}: HTTP {response.status_code} answer larger than {self.max_response_bytes} bytes "
            "(the client's cap on a response body); not read",
            status=response.status_code,
            path=path,
        )

    def _http_error(self, path: str, response: httpx.Response, content: bytes) -> CartesiaError:
        body = _parse_error_body(response, content)
        status = response.status_code
        detail = _one_line(self._scrub(body.detail))
        code = _one_line(self._scrub(body.error_code), 60) if body.error_code else None
        request_id = body.request_id
        if request_id is None:
            request_id = next(
                (response.headers[h] for h in _REQUEST_ID_HEADERS if h in response.headers), None
            )
        if request_id is not None:
            request_id = _one_line(self._scrub(request_id), 100)
        message = f"GET {path}: HTTP {status}"
        if code:
            message += f" {code}"
        if detail:
            message += f": {detail}"
        elif response.reason_phrase:
            message += f" {response.reason_phrase}"
        if request_id:
            message += f" (request_id {request_id})"
        return CartesiaError(message, status=status, request_id=request_id, path=path, error_code=code)

    def _decode(self, path: str, response: httpx.Response, content: bytes) -> Any:
        if not content.strip():
            raise self._shape_error(path, f"HTTP {response.status_code} with an empty body, expected JSON")
        try:
            # pydantic-core's parser takes a third of the stdlib's time on a page of calls; the
            # stdlib's reading below answers what it refuses (with the precise reason)
            return from_json(content)
        except ValueError:
            pass
        try:
            return json.loads(content)
        except RecursionError:
            raise self._shape_error(path, "the answer is JSON nested too deeply") from None
        except UnicodeDecodeError:
            raise self._shape_error(path, "the answer is not UTF-8 text, expected JSON") from None
        except json.JSONDecodeError as exc:
            kind = response.headers.get("content-type", "no content type")
            raise self._shape_error(
                path, f"the answer is not valid JSON ({exc.msg} at byte {exc.pos}; {_one_line(kind, 60)})"
            ) from None
