"""Limits against abusive HTTP clients, as a thin layer over uvicorn's httptools protocol.

No maintained ASGI server answers its own refusals in our JSON shape or drains a body after an
early 413 (docs/notes/server-limits-research.md), so this subclass of uvicorn's ``HttpToolsProtocol``
(passed as ``uvicorn.Config(http=<class>)``) adds, while llhttp still does all the parsing:

- head bytes and header count (431), URL length (414);
- timeouts for the head, the body, and a connection that never sends a request (408 JSON
  where an answer is possible, else close); a client that stops reading its answers is cut
  off once they have waited body_timeout (writes paused, or a close waiting to send them);
- a connection cap (503 JSON, then close);
- for the admin port (``evict_idle``): past the cap, or past the per-client cap, the oldest idle
  connection (no request in the app) is closed to make room; with none idle, the connection is
  let into ``probe_reserve`` extra slots that answer only ``probe_paths`` (503 JSON for any
  other path); past those, 503 JSON. So idle sockets and slow /metrics clients never fail a
  liveness probe;
- after an answer that closes with the body unread (the receiver's early 413): read and
  discard the rest up to a bound, then close, so a client that writes first reads the 413;
- malformed HTTP (bad request line, duplicate Content-Length, CL+TE, a request target
  uvicorn cannot read) answered 400 JSON;
- the trailer fields of a chunked body: dropped (the app never sees them), and bounded as the
  head is (431 JSON; while draining after an answer, a close).

It overrides uvicorn 0.55 internals (pinned; tests/test_http_limits.py checks they exist):
``connection_made``, ``data_received``, ``on_message_begin``, ``on_headers_complete``,
``on_message_complete``, ``on_body``, ``connection_lost``, ``pause_writing``,
``resume_writing``, ``timeout_keep_alive_task``,
``timeout_keep_alive_handler``, ``_unset_keepalive_if_required``, ``cycle.response_started``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, cast

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from otelbridge.ingest.receiver import _encode
from otelbridge.logs import CountedLog

logger = logging.getLogger("otelbridge.http")

SWEEP_EVERY: Final = 0.25  # timeouts fire up to this late
#: refusals: the first of each outcome at once, then one counted line a minute (logs.CountedLog)
REFUSED: Final = "webhook listener refused or closed connections: %s"
REFUSED_SUMMARY: Final = REFUSED % "%s" + ", %d more in the last %g s, the first from %s"
FD_RESERVE: Final = 64  # fds kept for the process itself: sockets, SQLite files and -wal, logs, pipes

_REASON: Final = {
    400: b"Bad Request",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def _noop(outcome: str) -> None:
    pass


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_url_bytes: int = 8 * 1024
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 15.0
    max_connections: int = 1000
    drain_bytes: int = 32 * 1024 * 1024
    drain_timeout: float = 5.0
    # admin port: evict idle connections past the caps; past them with none idle, up to
    # probe_reserve connections more, for probe_paths only; max_per_client 0: no per-client cap
    evict_idle: bool = False
    probe_reserve: int = 0
    probe_paths: frozenset[bytes] = frozenset()
    max_per_client: int = 0
    listener: str = "webhook"  # named in the refusal log line
    # called once per refusal with its outcome (the daemon counts it in otelbridge.webhooks)
    on_refusal: Callable[[str], None] = field(default=_noop, compare=False)


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (no privilege needed); the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, want, exc)
    return soft


def connection_cap(setting: int, fd_soft_limit: int) -> int:
    """The cap kept below the fd limit, so accept() never fails silently with EMFILE."""
    return max(1, min(setting, fd_soft_limit - FD_RESERVE))


def error_response(status: int, code: str, message: str) -> bytes:
    body = _encode(code, message)  # type: ignore[arg-type,unused-ignore]  # the receiver's exact JSON
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    )
    return head % (status, _REASON[status], len(body)) + body


class _Reject(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Trailers(list[tuple[bytes, bytes]]):
    """Where uvicorn's on_header puts fields once the head is done, i.e. a chunked body's
    trailers: counted against max_headers, then dropped (uvicorn would add them to the app's
    scope headers, without bound)."""

    __slots__ = ("fields", "limit")

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.fields, self.limit = 0, limit

    def append(self, field: tuple[bytes, bytes]) -> None:
        self.fields += 1
        if self.fields > self.limit:
            raise _Reject(431, "header_too_large", f"more than {self.limit} trailer fields")


class _DrainingTransport:
    """What uvicorn's request cycle writes to: close() becomes 'drain, then close' while the
    request body is still coming."""

    def __init__(self, proto: LimitedHttpToolsProtocol, real: asyncio.Transport) -> None:
        self._proto, self._real = proto, real
        # bound once: no __getattr__ on the hot path
        self.write, self.writelines = real.write, real.writelines
        self.get_extra_info, self.pause_reading, self.resume_reading = (
            real.get_extra_info,
            real.pause_reading,
            real.resume_reading,
        )
        self.set_protocol, self.get_protocol = real.set_protocol, real.get_protocol
        self.is_reading, self.abort = real.is_reading, real.abort
        self.get_write_buffer_size = real.get_write_buffer_size

    def __getattr__(self, name: str) -> Any:  # anything else, off the hot path
        return getattr(self._real, name)

    def is_closing(self) -> bool:
        return self._proto._draining or self._real.is_closing()

    def discard_writes(self) -> None:
        self.write = self.writelines = _discard

    def close(self) -> None:
        p = self._proto
        if p._in_body and not p._draining and not self._real.is_closing():
            p._start_drain()
        elif not p._draining:
            self._real.close()


def _discard(*args: Any, **kwargs: Any) -> None:
    pass


_order = itertools.count()  # connection age, for "the oldest idle one"


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[HttpLimits]
    _log: ClassVar[CountedLog]
    _refused: ClassVar[str]
    _sweep: ClassVar[asyncio.TimerHandle | None]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._real = transport  # uvloop's transport is no asyncio.Transport subclass: no isinstance
        self._deadline = self._write_deadline = 0.0
        self._why = ""
        self._in_body = self._draining = self._in_head = False
        self._drained = self._head_raw = self._chunk = 0
        # where this read's parse has got to (a lower bound, from the parsed sizes) and where
        # the head or the trailer section began in it: so each counts its own bytes only, not
        # the earlier requests' a pipelined read also holds
        self._pos = self._head_base = self._trailer_base = self._trailer_raw = 0
        self._head_done = self._in_trailer = self._got_body = False
        self._trailers = _Trailers(self.limits.max_headers)
        self._probe_only = False
        super().connection_made(_DrainingTransport(self, transport))  # type: ignore[arg-type]
        if self.limits.evict_idle:
            if not self._admit():
                return
        elif len(self.connections) > self.limits.max_connections:
            self._refuse("unavailable", "too many connections; retry later")
            return
        # uvicorn arms its keep-alive timer only after a response: arm it from the start, so
        # a connection that never sends a request is closed too
        self.timeout_keep_alive_task = self.loop.call_later(
            self.limits.idle_timeout, self.timeout_keep_alive_handler
        )

    def data_received(self, data: bytes) -> None:
        if self._draining:
            self._drained += len(data)
            if self._drained > self.limits.drain_bytes:
                self._real.close()
                return
        self._chunk = n = len(data)
        self._pos, self._head_done = 0, False
        self._head_base, self._trailer_base = -self._head_raw, -self._trailer_raw
        try:
            self.parser.feed_data(data)
            if self._in_head:
                # httptools passes a header on only once it is complete, gluing its parts
                # meanwhile: bound an unfinished head by its raw bytes here
                self._head_raw = n - self._head_base
                if self._head_raw > self.limits.max_header_bytes:
                    limit = self.limits.max_header_bytes
                    raise _Reject(431, "header_too_large", f"request head exceeds {limit} bytes")
            else:
                self._head_raw = 0
            if self._in_trailer:  # the same for trailer fields (or a chunk's data yet to come)
                self._trailer_raw = n - self._trailer_base
                if self._trailer_raw > self.limits.max_header_bytes:
                    limit = self.limits.max_header_bytes
                    raise _Reject(431, "header_too_large", f"trailer fields exceed {limit} bytes")
            else:
                self._trailer_raw = 0
        except _Reject as exc:
            self._reject(exc)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__cause__ or exc.__context__
            if not isinstance(cause, _Reject):
                raise
            self._reject(cause)
        except httptools.HttpParserUpgrade:
            self._refuse("bad_request", "protocol upgrades are not supported", 400)
        except httptools.HttpParserError as exc:
            if self._draining:
                self._real.close()
            else:
                self._refuse("bad_request", f"malformed HTTP request: {exc}"[:200], 400)

    def on_message_begin(self) -> None:
        if self._head_done:  # the previous request's head, before uvicorn forgets it
            self._settle_head()
        super().on_message_begin()
        self._unset_keepalive_if_required()
        self._in_head = True
        self._head_base = self._pos
        self._arm(self.limits.head_timeout, "request head not received in time")

    def on_headers_complete(self) -> None:
        # uvicorn's on_url / on_header collected the head, bounded by the raw count in
        # data_received: the limits are checked once here, not per header (cheaper)
        lim = self.limits
        self._in_head = False
        self._deadline = 0.0
        self._pos, self._head_done = self._head_base, True  # its size is added when needed
        if len(self.url) > lim.max_url_bytes:
            raise _Reject(414, "uri_too_long", f"request target exceeds {lim.max_url_bytes} bytes")
        if self.url[:1] != b"/" and not _readable_target(self.url):  # origin-form always is
            raise _Reject(400, "bad_request", "invalid request target")  # never echoed: it may hold anything
        if len(self.headers) > lim.max_headers:
            raise _Reject(431, "header_too_large", f"more than {lim.max_headers} header fields")
        # one read may hold a whole head plus body: count the head itself only then
        if self._chunk - self._head_base > lim.max_header_bytes and (
            len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) > lim.max_header_bytes
        ):
            raise _Reject(431, "header_too_large", f"request head exceeds {lim.max_header_bytes} bytes")
        if self._probe_only and self.url.partition(b"?")[0] not in lim.probe_paths:
            paths = ", ".join(sorted(p.decode() for p in lim.probe_paths))
            raise _Reject(503, "unavailable", f"too many connections: only {paths} answered; retry later")
        super().on_headers_complete()
        self._trailers.fields = 0
        self.headers = self._trailers  # the request's own list stays in its scope
        self._in_body, self._got_body = True, False
        self._arm(lim.body_timeout, "request body not received in time")

    def on_body(self, body: bytes) -> None:
        self._pos += len(body)
        self._in_trailer = False  # a chunk's data: the zero-size last chunk has none
        self._got_body = True
        # uvicorn's on_body, inlined: one call less per chunk (tests check it is unchanged)
        cycle = self.cycle
        if cycle.response_complete or (self.parser.should_upgrade() and self._should_upgrade()):
            return
        cycle.body += body
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_chunk_header(self) -> None:
        # the chunk-size line is in: the chunk's data (on_body) or, after the last one, trailers
        if self._head_done:
            self._settle_head()
        # "0\r\n" at least, and the "\r\n" that ended the previous chunk's data (none before
        # the first chunk: 2 bytes too many once a body, no matter)
        self._pos += 5
        self._trailer_base = self._pos
        self._in_trailer = True

    def _settle_head(self) -> None:
        """Add the head that ended in this read to where the parse has got to: the fewest
        bytes it can have taken ("M U HTTP/1.1", "n:v" lines), so later sections never
        count less than their own bytes."""
        self._head_done = False
        scope = self.scope
        size = len(scope["method"]) + len(self.url) + 14
        size += sum(len(n) + len(v) + 3 for n, v in scope["headers"])
        self._pos = max(self._pos + size, 0)

    def on_message_complete(self) -> None:
        self._in_body = self._in_trailer = False
        self._head_raw = self._trailer_raw = 0
        self._deadline = 0.0
        if self._draining:  # the unwanted body is all read: a clean close now
            self._real.close()
            return
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = self._write_deadline = 0.0
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        # uvicorn's send then waits for the buffer to drain with no timer, and neither the
        # body deadline nor the keep-alive one is armed: a client that pipelines requests and
        # never reads the answers would hold the connection (and its slot) for ever
        self._write_deadline = self.loop.time() + self.limits.body_timeout
        self._start_sweep()
        super().pause_writing()

    def resume_writing(self) -> None:
        self._write_deadline = 0.0
        super().resume_writing()

    # --- admission with eviction (admin port) --------------------------------------------
    def _admit(self) -> bool:
        """Make room by closing the oldest idle connection (of this client, past the per-client
        cap; of anyone, past the cap); with none idle, admit into the probe reserve, or refuse."""
        lim = self.limits
        self._age = next(_order)
        self._host = self.client[0] if self.client else None
        every = cast("set[LimitedHttpToolsProtocol]", self.connections)  # this server's: all of this class
        live = [p for p in every if p is not self and not p._real.is_closing()]
        over = False
        if lim.max_per_client:
            mine = [p for p in live if p._host == self._host]
            if len(mine) >= lim.max_per_client:
                over = not _evict_oldest_idle(mine, live)
        if len(live) >= lim.max_connections:
            over = not _evict_oldest_idle(live, live) or over
        if over:
            if sum(p._probe_only for p in live) >= lim.probe_reserve:
                self._refuse("unavailable", "too many connections; retry later")
                return False
            self._probe_only = True
        return True

    def _idle(self) -> bool:
        # no request in the app (the head may be coming: a probe's arrives in one packet)
        return not (self._in_body or self._draining) and (self.cycle is None or self.cycle.response_complete)

    def _evict(self) -> None:
        self._deadline = 0.0
        self._note("evicted")
        self._real.close()

    # --- deadlines, refusals, drain -----------------------------------------------------
    def _arm(self, delay: float, why: str) -> None:
        # a float deadline checked by one sweep per server, not a TimerHandle per request
        self._deadline = self.loop.time() + delay
        self._why = why
        self._start_sweep()

    def _start_sweep(self) -> None:
        cls = type(self)
        if cls._sweep is None:
            cls._sweep = self.loop.call_later(SWEEP_EVERY, cls._run_sweep, self.loop, self.connections)

    @classmethod
    def _run_sweep(cls, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        now = loop.time()
        for p in list(connections):
            d = p._deadline
            if d and d <= now:
                p._expire()
            w = p._write_deadline
            if w:
                if w <= now:
                    p._stalled()
            elif p._real.is_closing():
                # closed with answers unsent, e.g. after a 408 to a client that reads nothing:
                # the close waits for them to be sent, as long as a paused write may
                p._write_deadline = now + p.limits.body_timeout
        # stops by itself once no connection is open (so nothing is left at shutdown)
        cls._sweep = loop.call_later(SWEEP_EVERY, cls._run_sweep, loop, connections) if connections else None

    def _expire(self) -> None:
        self._reject(_Reject(408, "timeout", self._why))

    def _stalled(self) -> None:
        self._write_deadline = 0.0
        # only the log line: the requests it sent have their outcomes (the app counted them)
        self._note("timeout")
        # the abort resumes writing before connection_lost runs: the waiting send (of whichever
        # pipelined request is in the app) would then write to a closed transport (uvloop raises)
        cast("_DrainingTransport", self.transport).discard_writes()
        self._real.abort()  # not close(): that would wait for the unread answers to be sent

    def _reject(self, exc: _Reject) -> None:
        self._deadline = 0.0
        if self._draining:
            self._real.close()  # the answer is out and the body unwanted: only closing is left
        elif self._in_body and self.cycle is not None:
            # the app has the request and counts it itself (http.disconnect: "bad_request"),
            # so only the log line counts it here: one outcome per request
            self._note(exc.code)
            if not self.cycle.response_started and not self._real.is_closing():
                self._real.write(error_response(exc.status, exc.code, exc.message))
            self._real.close()  # after an answer already started, only closing is left
        else:
            self._refuse(exc.code, exc.message, exc.status)

    def _count(self, outcome: str) -> None:
        self.limits.on_refusal(outcome)
        self._note(outcome)

    def _note(self, outcome: str) -> None:
        """Logged at once the first time, then counted a minute per outcome (a client repeats
        it at will); the client by address only."""
        peer = self._real.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self._log.add(outcome, client, logging.WARNING, "%s from %s", self._refused % outcome, client)

    def _refuse(self, code: str, message: str, status: int = 503) -> None:
        self._deadline = 0.0
        self._count(code)
        if not self._real.is_closing():
            self._real.write(error_response(status, code, message))
            self._real.close()

    def _start_drain(self) -> None:
        self._draining = True
        self._deadline = 0.0
        if self.expect_100_continue and not self._got_body:
            # an answer before any body byte: no 100 Continue went out (uvicorn sends it when
            # the app first reads; its waiting_for_100_continue is cleared by the answer, so
            # it cannot tell), and a client waiting for one sends nothing: close now
            self._real.close()
            return
        self._real.resume_reading()  # uvicorn pauses reading at its high-water mark
        self.loop.call_later(self.limits.drain_timeout, self._real.close)


def protocol_class(limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
    """A protocol class with ``limits`` bound, one per server (uvicorn instantiates it)."""
    refused = REFUSED.replace("webhook", limits.listener, 1)
    summary = REFUSED_SUMMARY.replace("webhook", limits.listener, 1)
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {"limits": limits, "_log": CountedLog(logger, summary), "_refused": refused, "_sweep": None},
    )


def _readable_target(url: bytes) -> bool:
    """Whether uvicorn's httptools.parse_url reads the target and finds a path: llhttp passes
    some it cannot ("http://[x", "http://h:65536/", "http://h"), and uvicorn then fails with
    a traceback (holding the target) and no answer."""
    try:
        return httptools.parse_url(url).path is not None
    except httptools.HttpParserInvalidURLError:
        return False


def _evict_oldest_idle(among: list[LimitedHttpToolsProtocol], live: list[LimitedHttpToolsProtocol]) -> bool:
    """Close the oldest idle connection of ``among`` (and drop it from ``live``); False when
    none of them is idle."""
    victim = _oldest_idle(among)
    if victim is None:
        return False
    victim._evict()
    live.remove(victim)
    return True


def _oldest_idle(connections: list[LimitedHttpToolsProtocol]) -> LimitedHttpToolsProtocol | None:
    """The connection to close for room: idle keep-alive ones first, then one whose head is
    still coming (slowloris), oldest first; None when every one has a request in the app."""
    idle = [p for p in connections if p._idle()]
    return min(idle, key=lambda p: (p._in_head, p._age)) if idle else None
